"""Exact resume of proxy-mode training: an interrupted and resumed ``train_policy`` run equals
the uninterrupted one on CPU (metrics line by line, exported actor byte by byte).

Same tiny setup as ``test_train.py``: the ``tiny`` LM, 8 optimizer steps with K = 2 (three
env steps per episode), two episodes, a 16-unit agent, a checkpoint after every env step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from acodm.metrics import read_metrics
from acodm.policies import agent as agent_mod
from acodm.policies import train as train_mod
from acodm.policies.agent import AgentConfig, small
from acodm.policies.export import ACTOR_FILE
from acodm.policies.train import TrainPolicyError, train_policy
from tests.fixtures import comparable_metrics, interrupted_then_resumed, make_text_store

OVERRIDES = {"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0}
EPISODES, STEPS_PER_EPISODE = 2, 3


def _agent(**kw: Any) -> AgentConfig:
    return small(net_arch=(16,), batch_size=2, **kw)


def _train(store: Path, out: Path, **kw: Any) -> Path:
    args: dict[str, Any] = {
        "overrides": OVERRIDES,
        "interval": 2,
        "agent": _agent(),
        "episodes": EPISODES,
        "checkpoint_every": 1,
        "seed": 3,
        "progress": False,
    }
    args.update(kw)
    return train_policy(store, out, **args)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resume-exact") / "store"
    make_text_store(path)
    return path


@pytest.fixture(scope="module")
def full(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the per-test one-thread fixture
    out = tmp_path_factory.mktemp("resume-exact") / "full"
    _train(store, out)
    torch.set_num_threads(old)
    return out


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every metrics line, without wall-time fields (none are logged today)."""
    return [
        {k: v for k, v in r.items() if not k.startswith(("perf/", "time"))}
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


class _Interrupt(KeyboardInterrupt):
    pass


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, module: Any, n: int) -> None:
    """Make ``module.save_checkpoint`` raise right after its ``n``-th checkpoint is complete."""
    real = module.save_checkpoint
    calls = {"n": 0}

    def saving_then_crashing(*args: Any, **kw: Any) -> Path:
        out = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] == n:
            raise _Interrupt
        return out

    monkeypatch.setattr(module, "save_checkpoint", saving_then_crashing)


@pytest.mark.parametrize(
    ("module", "n", "step"),
    [
        (train_mod, 1, 1),  # right after the warm-up's checkpoint
        (agent_mod, 2, 3),  # the first episode just ended: the env already reset to a new run
        (agent_mod, 3, 4),  # in the middle of the second episode
    ],
    ids=["after-warmup", "episode-boundary", "mid-episode"],
)
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(
    full: Path,
    store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    n: int,
    step: int,
) -> None:
    run = tmp_path / "run"
    _interrupt_after(monkeypatch, module, n)
    with pytest.raises(_Interrupt):
        _train(store, run)
    monkeypatch.undo()
    ckpt = json.loads((run / "agent" / "checkpoint.json").read_text())
    assert ckpt["num_timesteps"] == step and ckpt["env_state"] is True
    assert not (run / "policy").exists()

    out = _train(store, run, resume=True)

    assert _metrics(run) == _metrics(full)
    assert (out / ACTOR_FILE).read_bytes() == (full / "policy" / ACTOR_FILE).read_bytes()
    steps = [r["step"] for r in _metrics(run) if "rl/reward" in r]
    assert steps == list(range(1, EPISODES * STEPS_PER_EPISODE + 1))


def test_resume_with_changed_settings_still_errors(full: Path, store: Path) -> None:
    with pytest.raises(TrainPolicyError, match="agent"):
        _train(store, full, agent=_agent(learning_rate=1e-2), resume=True)
    with pytest.raises(TrainPolicyError, match="proxy"):
        _train(store, full, overrides={**OVERRIDES, "lr": 1e-2}, resume=True)


# ----------------------------------------------------------------------------- non-proxy mode


@pytest.mark.parametrize("crash_step", [6, 10], ids=["during-warmup", "while-learning"])
def test_pretrain_with_the_ddpg_mixer_resumes_exactly(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_step: int
) -> None:
    """``acodm pretrain --mixer ddpg`` interrupted and resumed equals the uninterrupted run:
    the agent (networks, optimizers, replay buffer, RNGs) is part of the run checkpoint."""
    import torch

    from acodm.checkpoint import latest_checkpoint, load_checkpoint
    from acodm.config import debug_cpu

    # 8 intervals, 7 transitions, 2 of them warm-up; checkpoints at steps 4, 8, 12, 16.
    config = debug_cpu(str(store)).replace(
        steps=16,
        interval=2,
        checkpoint_every=4,
        eval_every=0,
        device="cpu",
        mixer="ddpg:warmup=0.25,seed=1",
    )
    interrupted_then_resumed(config, tmp_path / "full", tmp_path / "cut", crash_step, monkeypatch)
    assert comparable_metrics(tmp_path / "cut") == comparable_metrics(tmp_path / "full")
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))  # type: ignore[arg-type]
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut"))  # type: ignore[arg-type]
    assert a.state["mixer"] == b.state["mixer"]
    assert a.extra.keys() == b.extra.keys()
    assert any(k.startswith("mixer/policy/") for k in a.extra)
    for name, t in a.extra.items():
        assert torch.equal(t, b.extra[name]), name
