"""Branching (acodm.policies.branching): extra actions from a saved proxy state, the state
restored exactly; and ``train_policy(branches=B)`` adding them to the replay buffer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from acodm.config import debug_cpu
from acodm.envs import DataMixingEnv
from acodm.policies.agent import small
from acodm.policies.branching import branch_actions, branch_transitions
from acodm.policies.train import TrainPolicyError, train_policy
from tests.fixtures import make_text_store

OVERRIDES = {"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("branching") / "store"
    make_text_store(path)
    return path


def _env(store: Path) -> DataMixingEnv:
    cfg = debug_cpu(str(store)).replace(steps=8, interval=2, device="cpu", eval_every=0)
    return DataMixingEnv(str(store), cfg, action="residual")


def test_branches_leave_the_run_exactly_as_it_was(store: Path, tmp_path: Path) -> None:
    a1 = np.array([0.3, -0.2, 0.1], np.float32)
    a2 = np.array([-0.5, 0.4, 0.0], np.float32)
    plain, branched, direct = _env(store), _env(store), _env(store)
    for env in (plain, branched, direct):
        env.reset(seed=7)
        env.step(a1)
    start = direct.trainer.step  # type: ignore[union-attr]
    actions = branch_actions(3, 3, seed=0, step=start)
    ts = branch_transitions(branched, np.zeros(1), actions, workdir=tmp_path)
    assert not list(tmp_path.iterdir())  # the saved state is cleaned up
    # each branch is the transition that action really gives from this state
    ref = direct.step(actions[1])
    assert ts[1].reward == ref[1] and np.array_equal(ts[1].next_obs, ref[0])
    assert len({t.reward for t in ts}) == 3  # different actions, different outcomes
    # the run goes on bit for bit as without branching
    p, b = plain.step(a2), branched.step(a2)
    assert np.array_equal(p[0], b[0]) and p[1] == b[1] and p[4]["step"] == b[4]["step"]
    assert branched.trainer.step == plain.trainer.step  # type: ignore[union-attr]
    for env in (plain, branched, direct):
        env.close()


def test_branch_actions_are_seeded_and_bounded() -> None:
    a = branch_actions(4, 5, seed=1, step=10)
    assert a.shape == (4, 5) and a.dtype == np.float32 and np.abs(a).max() <= 1.0
    assert np.array_equal(a, branch_actions(4, 5, seed=1, step=10))
    assert not np.array_equal(a, branch_actions(4, 5, seed=1, step=11))


def test_train_policy_adds_the_branches_to_the_replay_buffer(store: Path, tmp_path: Path) -> None:
    train_policy(
        store,
        tmp_path / "run",
        overrides=OVERRIDES,
        interval=2,
        agent=small(net_arch=(16,), batch_size=4),
        progress=False,
        branches=2,
        action="residual",
    )
    ckpt = json.loads((tmp_path / "run" / "agent" / "checkpoint.json").read_text())
    # 3 env steps (1 warm-up) + 2 branches at each of the 2 learning steps
    assert ckpt["num_timesteps"] == 3 and ckpt["buffer_size"] == 3 + 2 * 2
    from acodm.metrics import read_metrics

    lines = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rl/branch/count" in r]
    assert [r["step"] for r in lines] == [2, 3] and all(r["rl/branch/count"] == 2 for r in lines)
    # the branches count as proxy compute: 1 episode of 8 steps + 4 branches of K = 2 steps
    spec = json.loads((tmp_path / "run" / "policy" / "policy.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    compute, proxy = spec["extra"]["compute"], config["proxy"]
    assert compute["branch_intervals"] == 4
    assert (
        compute["tokens"] == (proxy["steps"] + 4 * 2) * proxy["seq_len"] * proxy["micro_batch_size"]
    )
    with pytest.raises(TrainPolicyError, match="branches"):
        train_policy(store, tmp_path / "vec", overrides=OVERRIDES, interval=2, branches=1,
                     num_envs=2, episodes=2, progress=False)  # fmt: skip


def test_a_branching_run_resumes_exactly(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted mid-run (right after a checkpoint) and resumed, a run with branches equals
    the uninterrupted one: the branches are redone from the same state with the same actions."""
    from acodm.metrics import read_metrics
    from acodm.policies import agent as agent_mod
    from acodm.policies.export import ACTOR_FILE

    def run(out: Path, **kw: object) -> Path:
        return train_policy(
            store,
            out,
            overrides=OVERRIDES,
            interval=2,
            agent=small(net_arch=(16,), batch_size=2),
            episodes=2,
            checkpoint_every=1,
            seed=3,
            progress=False,
            branches=2,
            **kw,  # type: ignore[arg-type]
        )

    full = run(tmp_path / "full")
    real, calls = agent_mod.save_checkpoint, {"n": 0}

    def crash_after_third(*args: object, **kw: object) -> Path:
        out = real(*args, **kw)  # type: ignore[arg-type]
        calls["n"] += 1
        if calls["n"] == 3:  # mid second episode
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(agent_mod, "save_checkpoint", crash_after_third)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    monkeypatch.undo()
    resumed = run(tmp_path / "cut", resume=True)
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(
        tmp_path / "full" / "metrics.jsonl"
    )
    assert (resumed / ACTOR_FILE).read_bytes() == (full / ACTOR_FILE).read_bytes()


def test_the_progress_line_shows_env_steps_not_the_branches_lines(tmp_path, capsys):
    from acodm.metrics import MetricsLogger
    from acodm.policies.train import _StepLog

    with MetricsLogger(tmp_path / "metrics.jsonl") as logger:
        log = _StepLog(logger, total=40, progress=True)  # a line every 40 // 20 = 2 steps
        log({"rl/branch/count": 2, "rl/branch/reward_mean": -1.0}, 2)  # no reward: no line
        log({"rl/reward": -0.25}, 2)
        log({"rl/reward": 0.5}, 3)  # not due
        log({"rl/reward": 0.5}, 40)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "[train-policy] step 2/40 reward -0.2500",
        "[train-policy] step 40/40 reward +0.5000",
    ]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
