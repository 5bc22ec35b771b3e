"""Several proxies at once (``train_policy(num_envs=2)``: SB3 SubprocVecEnv, one process per
proxy): deterministic, one metrics line per transition, resumed exactly.

Same tiny setup as ``test_train.py``: the ``tiny`` LM, 8 optimizer steps with K = 2 (three
env steps per episode), a 16-unit agent; two proxies, one episode each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from acodm.metrics import read_metrics
from acodm.policies.agent import small
from acodm.policies.export import ACTOR_FILE
from acodm.policies.train import TrainPolicyError, train_policy
from tests.fixtures import make_text_store

OVERRIDES = {"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0}
STEPS_PER_EPISODE = 3


def _train(store: Path, out: Path, **kw: Any) -> Path:
    args: dict[str, Any] = {
        "overrides": OVERRIDES,
        "interval": 2,
        "agent": small(net_arch=(16,), batch_size=4),
        "episodes": 2,
        "num_envs": 2,
        "seed": 5,
        "progress": False,
    }
    args.update(kw)
    return train_policy(store, out, **args)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vector") / "store"
    make_text_store(path)
    return path


@pytest.fixture(scope="module")
def first(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vector") / "first"
    _train(store, out)
    return out


def test_two_proxies_with_the_same_seed_give_identical_runs(
    first: Path, store: Path, tmp_path: Path
) -> None:
    again = _train(store, tmp_path / "again")
    assert (again / ACTOR_FILE).read_bytes() == (first / "policy" / ACTOR_FILE).read_bytes()
    assert read_metrics(tmp_path / "again" / "metrics.jsonl") == read_metrics(
        first / "metrics.jsonl"
    )


def test_one_line_per_transition_and_both_proxies_learn(first: Path) -> None:
    records = read_metrics(first / "metrics.jsonl")
    steps = [r for r in records if "rl/reward" in r]
    total = 2 * STEPS_PER_EPISODE
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    assert [r["rl/warmup"] for r in steps] == [1, 1, 0, 0, 0, 0]  # 1 step, rounded up to 2
    # each proxy ran its own LM run (own seed: env i is seeded seed + i): they differ
    assert steps[0]["train/loss"] != steps[1]["train/loss"]
    ends = [r for r in records if "rl/episode/length" in r]
    assert [(r["step"], r["rl/episode/length"]) for r in ends] == [(5, 3), (6, 3)]
    updates = [r for r in records if "rl/update/n_updates" in r]
    assert [r["step"] for r in updates] == [4, 6]  # one train() call per vector step
    config = json.loads((first / "config.json").read_text())
    assert config["schedule"]["num_envs"] == 2 and config["schedule"]["warmup_steps"] == 2
    ckpt = json.loads((first / "agent" / "checkpoint.json").read_text())
    assert ckpt["num_timesteps"] == total and ckpt["env_state"] is True
    assert sorted(p.name for p in (first / "agent" / "env").iterdir()) == ["0", "1"]
    assert ckpt["buffer_size"] == total  # transitions of both proxies


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(
    first: Path, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted right after the checkpoint at transition 4 (both proxies mid-episode: each
    proxy's LM run and Monitor episode are saved by its own process), then resumed."""
    from acodm.policies import agent as agent_mod

    real = agent_mod.save_checkpoint

    def save_then_crash(*args: Any, **kw: Any) -> Path:
        real(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(agent_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _train(store, tmp_path / "cut")
    monkeypatch.undo()
    ckpt = json.loads((tmp_path / "cut" / "agent" / "checkpoint.json").read_text())
    assert ckpt["num_timesteps"] == 4
    out = _train(store, tmp_path / "cut", resume=True)
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(first / "metrics.jsonl")
    assert (out / ACTOR_FILE).read_bytes() == (first / "policy" / ACTOR_FILE).read_bytes()
    with pytest.raises(TrainPolicyError, match="num_envs"):
        _train(store, tmp_path / "cut", resume=True, num_envs=1)


def test_bad_counts_are_refused(store: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainPolicyError, match="divide episodes"):
        _train(store, tmp_path / "odd", episodes=3)
    assert not (tmp_path / "odd").exists()
