"""Proxy-mode training (acodm.policies.train): run folder, export, determinism, resume, errors.

Tiny on purpose (2 shared CPU cores): the ``tiny`` LM, 8 optimizer steps with K = 2 (three env
steps per episode), a 16-unit agent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acodm.errors import AcodmError
from acodm.metrics import read_metrics
from acodm.policies import train as train_mod
from acodm.policies.agent import AgentConfig, small
from acodm.policies.export import ACTOR_FILE, SPEC_FILE, MixingPolicy
from acodm.policies.train import TrainPolicyError, export_from_checkpoint, train_policy
from tests.fixtures import make_text_store

OVERRIDES = {"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0}
STEPS_PER_EPISODE = 3  # ceil(8 / 2) intervals, the first one run by reset


def _agent(**kw: Any) -> AgentConfig:
    return small(net_arch=(16,), batch_size=4, **kw)


def _train(store: Path, out: Path, **kw: Any) -> Path:
    args: dict[str, Any] = {
        "overrides": OVERRIDES,
        "interval": 2,
        "agent": _agent(),
        "progress": False,
    }
    args.update(kw)
    return train_policy(store, out, **args)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("train") / "store"
    make_text_store(path)
    return path


@pytest.fixture(scope="module")
def run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the per-test one-thread fixture
    out = tmp_path_factory.mktemp("train") / "run"
    _train(store, out)
    torch.set_num_threads(old)
    yield out


def _rewards(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "rl/reward" in r]


def test_train_policy_writes_run_folder_and_loadable_policy(run: Path, store: Path) -> None:
    from acodm.data.store import TokenStore

    policy = MixingPolicy.load(run / "policy")
    assert policy.domains == tuple(TokenStore(store).domains)
    assert policy.interval == 2
    spec = json.loads((run / "policy" / SPEC_FILE).read_text())
    assert spec["extra"]["episodes"] == 1 and spec["extra"]["proxy_model"] == "tiny"
    assert spec["extra"]["reward"]["steps"] == STEPS_PER_EPISODE
    config = json.loads((run / "config.json").read_text())
    # the proxy's compute, for a study's "proxy compute in target runs": 1 episode x 8 steps
    compute = spec["extra"]["compute"]
    proxy = config["proxy"]
    assert compute["tokens"] == 8 * proxy["seq_len"] * proxy["micro_batch_size"]
    assert (
        compute["params"] > 0
        and compute["flops_6nd"] == 6.0 * compute["params"] * (compute["tokens"])
    )
    assert config["proxy"]["steps"] == 8 and config["agent"]["net_arch"] == [16]
    assert config["schedule"]["warmup_steps"] == 1  # 2% of 3 steps, at least one
    ckpt = json.loads((run / "agent" / "checkpoint.json").read_text())
    assert ckpt["num_timesteps"] == STEPS_PER_EPISODE
    assert (run / "agent" / "replay_buffer.pkl").exists()


def test_metrics_have_one_line_per_env_step(run: Path) -> None:
    lines = _rewards(run)
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert [r["rl/warmup"] for r in lines] == [1, 0, 0]
    for r in lines:
        assert "train/loss" in r and "rl/reward/probe" in r  # v1's reward
        assert any(k.startswith("mix/weight/") for k in r)
    assert any("rl/warmup_bc_loss" in r for r in read_metrics(run / "metrics.jsonl"))


def test_same_seed_gives_identical_actor(run: Path, store: Path, tmp_path: Path) -> None:
    again = _train(store, tmp_path / "again")
    assert (again / ACTOR_FILE).read_bytes() == (run / "policy" / ACTOR_FILE).read_bytes()


def test_export_from_checkpoint_reproduces_actor(run: Path, tmp_path: Path) -> None:
    out = export_from_checkpoint(run / "agent", tmp_path / "exported")
    assert (out / ACTOR_FILE).read_bytes() == (run / "policy" / ACTOR_FILE).read_bytes()
    assert MixingPolicy.load(out).domains == MixingPolicy.load(run / "policy").domains
    again = export_from_checkpoint(run, tmp_path / "from-run-dir")  # the run folder works too
    assert (again / ACTOR_FILE).read_bytes() == (out / ACTOR_FILE).read_bytes()
    compute = MixingPolicy.load(run / "policy").spec["extra"]["compute"]
    assert MixingPolicy.load(out).spec["extra"]["compute"] == compute  # recorded again
    # a run whose store is gone: exported, with a warning and no compute (not a wrong one)
    config = json.loads((run / "config.json").read_text())
    config["proxy"]["store"] = str(tmp_path / "gone")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="no proxy compute"):
        moved = export_from_checkpoint(
            run / "agent", tmp_path / "moved", run_config=tmp_path / "config.json"
        )
    assert "compute" not in MixingPolicy.load(moved).spec["extra"]


def test_resume_after_interruption_reaches_the_same_total(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = train_mod.continue_learning

    def interrupted(agent: Any, total: int, callback: Any = None, **kw: Any) -> Any:
        real(agent, total - 1, callback=callback)  # learn, checkpoint at the end, then "crash"
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "continue_learning", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(store, tmp_path / "run", episodes=2)
    assert not (tmp_path / "run" / "policy").exists()
    monkeypatch.setattr(train_mod, "continue_learning", real)
    with pytest.raises(TrainPolicyError, match="resume"):
        _train(store, tmp_path / "run", episodes=2)  # an existing run needs resume=True
    out = _train(store, tmp_path / "run", episodes=2, resume=True)
    ckpt = json.loads((tmp_path / "run" / "agent" / "checkpoint.json").read_text())
    assert ckpt["num_timesteps"] == 2 * STEPS_PER_EPISODE
    steps = [r["step"] for r in _rewards(tmp_path / "run")]
    assert steps == list(range(1, 2 * STEPS_PER_EPISODE + 1))
    assert MixingPolicy.load(out).spec["extra"]["num_timesteps"] == 2 * STEPS_PER_EPISODE
    # A finished run resumes to a plain re-export.
    _train(store, tmp_path / "run", episodes=2, resume=True)


def test_resume_refuses_changed_settings(run: Path, store: Path) -> None:
    with pytest.raises(TrainPolicyError, match="agent"):
        _train(store, run, agent=_agent(learning_rate=1e-2), resume=True)


def test_frozen_actor_passes_through(store: Path, tmp_path: Path) -> None:
    out = _train(store, tmp_path / "frozen", agent=_agent(frozen_actor=True))
    assert MixingPolicy.load(out).spec["extra"]["frozen_actor"] is True
    assert json.loads((tmp_path / "frozen" / "config.json").read_text())["agent"]["frozen_actor"]


def test_bad_inputs_give_clear_errors(store: Path, tmp_path: Path) -> None:
    with pytest.raises(AcodmError, match="unknown run preset"):
        _train(store, tmp_path / "a", proxy="no_such_preset")
    with pytest.raises(AcodmError, match="does not exist"):
        _train(tmp_path / "missing-store", tmp_path / "b")
    with pytest.raises(AcodmError, match="bad proxy override"):
        _train(store, tmp_path / "c", overrides={"no_such_field": 1})
    with pytest.raises(AcodmError, match="episodes"):
        _train(store, tmp_path / "d", episodes=0)
    with pytest.raises(AcodmError, match="not an agent checkpoint"):
        export_from_checkpoint(tmp_path, tmp_path / "e")


def test_online_ddpg_mixer_learns_on_the_run_itself(store: Path) -> None:
    import numpy as np

    from acodm.config import debug_cpu
    from acodm.mixers import MixerError, make_mixer
    from acodm.trainer import Trainer

    cfg = debug_cpu(str(store)).replace(steps=10, interval=2, device="cpu", eval_every=0)
    trainer = Trainer(cfg)
    mixer = make_mixer("ddpg:warmup=0.25,seed=1")
    mixer.setup(trainer.mixer_context())
    seen = []
    while not trainer.done:
        report = trainer.train_interval(mixer.weights())
        mixer.update(report.feedback)
        seen.append(mixer.weights())
    trainer.close()
    assert all(np.isclose(w.sum(), 1.0) and (w > 0).all() for w in seen)
    assert mixer.model is not None and mixer.model.num_timesteps == 4  # 5 intervals
    assert not np.allclose(seen[-1], seen[0])  # the actor moved off the ODM/uniform start
    with pytest.raises(MixerError):
        make_mixer("ddpg:nope=1")


def test_silent_interval_chance_is_exact() -> None:
    """P(fewer than 3 of k domains in n uniform draws), against a Monte-Carlo estimate."""
    from acodm.policies.train import silent_interval_chance

    rng = np.random.default_rng(0)
    for k, n in ((3, 4), (3, 12), (10, 4), (5, 6)):
        draws = rng.integers(0, k, size=(20_000, n))
        distinct = np.array([len(set(row)) for row in draws])
        assert silent_interval_chance(k, n) == pytest.approx(np.mean(distinct < 3), abs=0.01)
    assert silent_interval_chance(3, 4) == pytest.approx(1 / 27 + 3 * 14 / 81)
    assert silent_interval_chance(2, 100) == 1.0


def test_the_default_proxy_gives_the_agent_a_signal(store: Path, tmp_path: Path, capsys) -> None:
    """debug_cpu draws 4 sequences a step: at K = 1 over 3 domains more than half the
    rewards were exactly 0 (two domains score alike). The preset's K is raised; a K the
    user chose is kept, with a warning."""
    out = train_policy(
        store, tmp_path / "run", agent=_agent(), progress=False, overrides={"device": "cpu"}
    )
    assert "interval K raised from 1 to 3" in capsys.readouterr().err
    assert MixingPolicy.load(out).interval == 3
    rewards = [r["rl/reward"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
               if "rl/reward" in r]  # fmt: skip
    assert len(rewards) >= 5 and sum(r == 0.0 for r in rewards) <= 1
    with pytest.warns(UserWarning, match=r"about 56% of the rewards will be exactly 0"):
        train_policy(
            store,
            tmp_path / "explicit",
            agent=_agent(),
            progress=False,
            interval=1,
            overrides={"device": "cpu", "steps": 3},
        )


# ----------------------------------------------------------------------------- learning curve


def test_learning_curve_is_in_the_metrics(run: Path) -> None:
    """One update line per SB3 train() call, one episode line at the episode's end whose
    return is the sum of that episode's rewards."""
    records = read_metrics(run / "metrics.jsonl")
    rewards = _rewards(run)
    ends = [r for r in records if "rl/episode/return" in r]
    assert [r["step"] for r in ends] == [STEPS_PER_EPISODE]
    assert ends[0]["rl/episode/length"] == STEPS_PER_EPISODE
    assert ends[0]["rl/episode/return"] == pytest.approx(
        sum(r["rl/reward"] for r in rewards), abs=1e-5
    )
    updates = [r for r in records if "rl/update/critic_loss" in r]
    # warm-up step 1 (learning_starts = 1), then a train() call after each of steps 2 and 3
    assert [r["step"] for r in updates] == [2, 3]
    assert [r["rl/update/n_updates"] for r in updates] == [1, 2]
    for r in updates:
        assert r["rl/update/critic_loss"] >= 0.0 and np.isfinite(r["rl/update/actor_loss"])
    # the per-step line after an update reads the same SB3 values
    by_step = {r["step"]: r for r in rewards}
    assert by_step[3]["rl/critic_loss"] == pytest.approx(updates[0]["rl/update/critic_loss"])


def test_update_logger_reports_each_train_call() -> None:
    from acodm.policies.agent import UpdateLogger

    seen: list[dict[str, float]] = []
    logger = UpdateLogger(seen.append)
    logger.record("train/n_updates", 4)
    logger.record("train/actor_loss", np.float64(-0.5))
    logger.record("train/critic_loss", np.float64(0.25))
    logger.record("train/n_updates", 5)  # a TD3 call without an actor update
    logger.record("train/critic_loss", 0.125)
    logger.record("time/episodes", 1)  # other keys pass through untouched
    assert seen == [
        {"n_updates": 4, "actor_loss": -0.5, "critic_loss": 0.25},
        {"n_updates": 5, "critic_loss": 0.125},
    ]
    assert logger.name_to_value["train/critic_loss"] == 0.125


def test_learning_curve_plot(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from acodm.errors import AcodmError
    from acodm.plots import plot_learning_curve

    out = plot_learning_curve(run, tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "rl/reward": 0.1}\n')
    with pytest.raises(AcodmError, match="no rl/episode/return"):
        plot_learning_curve(tmp_path / "empty", tmp_path / "x.png")


def test_more_gradient_steps_per_env_step(run: Path, store: Path, tmp_path: Path) -> None:
    """gradient_steps=3: three minibatch updates after each env step (SB3 DDPG), so the
    update counter moves by 3 per train() call and the actor ends elsewhere."""
    out = _train(store, tmp_path / "g3", agent=_agent(gradient_steps=3))
    updates = [
        r for r in read_metrics(tmp_path / "g3" / "metrics.jsonl") if "rl/update/n_updates" in r
    ]
    assert [r["rl/update/n_updates"] for r in updates] == [3, 6]
    assert (out / ACTOR_FILE).read_bytes() != (run / "policy" / ACTOR_FILE).read_bytes()
    config = json.loads((tmp_path / "g3" / "config.json").read_text())
    assert config["agent"]["gradient_steps"] == 3 and config["agent"]["train_freq"] == 1


def test_many_short_episodes(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """episode_steps=6 at K = 2: every episode is a whole proxy run of 6 steps (2 env steps
    after the reset's interval), with its own run seed and the LR warm-up scaled."""
    from acodm.envs import data_mixing
    from acodm.trainer import Trainer

    seeds: list[int] = []

    class Recording(Trainer):
        def __init__(self, config: Any, **kw: Any) -> None:
            seeds.append(config.seed)
            super().__init__(config, **kw)

    monkeypatch.setattr(data_mixing, "Trainer", Recording)
    overrides = {**OVERRIDES, "steps": 40, "warmup_steps": 10}
    _train(store, tmp_path / "short", overrides=overrides, episodes=3, episode_steps=6)
    config = json.loads((tmp_path / "short" / "config.json").read_text())
    assert config["proxy"]["steps"] == 6 and config["proxy"]["warmup_steps"] == 2  # 10 * 6/40
    assert config["schedule"]["steps_per_episode"] == 2
    assert config["schedule"]["total_steps"] == 6 and config["schedule"]["episode_steps"] == 6
    ends = [
        r for r in read_metrics(tmp_path / "short" / "metrics.jsonl") if "rl/episode/length" in r
    ]
    assert [(r["step"], r["rl/episode/length"]) for r in ends] == [(2, 2), (4, 2), (6, 2)]
    # a fresh run with its own seed per episode (the 4th: SB3's auto-reset after the last)
    assert len(seeds) == 4 and len(set(seeds)) == 4
    with pytest.raises(TrainPolicyError, match="episode_steps"):
        _train(store, tmp_path / "too-short", episode_steps=2)
    assert not (tmp_path / "too-short").exists()
