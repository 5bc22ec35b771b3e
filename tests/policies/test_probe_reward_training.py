"""The probe reward in both learning paths: proxy training (``train_policy(reward="probe")``,
``acodm train-policy --reward probe``) and the online ``ddpg:reward=probe`` mixer through
``acodm pretrain``, exact resume included; the exported policy records its reward."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from acodm.cli import main
from acodm.metrics import read_metrics
from acodm.mixers import MixerError, make_mixer
from acodm.policies.agent import AgentConfig, small
from acodm.policies.export import SPEC_FILE, load_policy
from acodm.policies.train import export_from_checkpoint, train_policy
from tests.fixtures import comparable_metrics, interrupted_then_resumed, make_text_store

OVERRIDES = {"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _agent(**kw: Any) -> AgentConfig:
    return small(net_arch=(16,), batch_size=2, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe-train") / "store"
    make_text_store(path)
    return path


def test_train_policy_with_the_probe_reward_records_it(store: Path, tmp_path: Path) -> None:
    out = train_policy(
        store,
        tmp_path / "run",
        overrides=OVERRIDES,
        interval=2,
        agent=_agent(),
        progress=False,
        reward="probe",
    )
    spec = json.loads((out / SPEC_FILE).read_text())
    signal = spec["extra"]["reward_signal"]
    assert signal["kind"] == "probe" and signal["windows_per_domain"] == 4
    assert signal["baseline_rate"] == 0.3
    load_policy(out)  # spec_sha256 still matches (extra is not hashed)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["env"]["reward"]["kind"] == "probe"
    lines = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rl/reward" in r]
    assert lines and all("rl/reward/probe" in r and "rl/probe/loss" in r for r in lines)
    assert all(r["rl/reward"] == pytest.approx(r["rl/reward/probe"], rel=1e-6) for r in lines)
    again = export_from_checkpoint(tmp_path / "run", tmp_path / "again")
    assert json.loads((again / SPEC_FILE).read_text())["extra"]["reward_signal"] == signal


def test_the_alignment_reward_is_recorded_too(store: Path, tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "train-policy", "--store", str(store), "--out", str(tmp_path / "run"), "--proxy", "debug_cpu",
            "--steps", "8", "--interval", "2", "--reward", "alignment", "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    spec = json.loads((tmp_path / "run" / "policy" / SPEC_FILE).read_text())
    assert spec["extra"]["reward_signal"]["kind"] == "alignment"
    assert "reward" not in json.loads((tmp_path / "run" / "config.json").read_text())["env"]


def test_ddpg_mixer_reward_option() -> None:
    m = make_mixer("ddpg:seed=1,reward=probe,probe_windows=2")
    assert m.probe_windows == 2 and "reward=probe,probe_windows=2" in m.describe()
    assert make_mixer(m.describe()).describe() == m.describe()
    assert make_mixer("ddpg:seed=1").probe_windows == 0  # alignment: no probe measured
    with pytest.raises(MixerError, match="reward must be one of"):
        make_mixer("ddpg:reward=loss")


def test_ddpg_probe_reward_needs_the_probe(store: Path) -> None:
    from acodm.config import debug_cpu
    from acodm.trainer import Trainer

    trainer = Trainer(debug_cpu(str(store)).replace(steps=6, interval=2, device="cpu"))
    mixer = make_mixer("ddpg:warmup=0.25,seed=1,reward=probe")
    mixer.setup(trainer.mixer_context())
    report = trainer.train_interval(mixer.weights())
    with pytest.raises(MixerError, match="acodm pretrain"):
        mixer.update(report.feedback)  # measured by pretrain, not by a bare trainer
    trainer.close()


@pytest.mark.parametrize("crash_step", [10])
def test_pretrain_with_the_probe_ddpg_mixer_resumes_exactly(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_step: int
) -> None:
    import torch

    from acodm.checkpoint import latest_checkpoint, load_checkpoint
    from acodm.config import debug_cpu

    config = debug_cpu(str(store)).replace(
        steps=16,
        interval=2,
        checkpoint_every=4,
        eval_every=0,
        device="cpu",
        mixer="ddpg:warmup=0.25,seed=1,reward=probe",
    )
    interrupted_then_resumed(config, tmp_path / "full", tmp_path / "cut", crash_step, monkeypatch)
    assert comparable_metrics(tmp_path / "cut") == comparable_metrics(tmp_path / "full")
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))  # type: ignore[arg-type]
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut"))  # type: ignore[arg-type]
    assert a.state["mixer"] == b.state["mixer"]
    assert a.state["mixer"]["state"]["probe"]["baseline"] is not None  # kept in the run
    for name, t in a.extra.items():
        assert torch.equal(t, b.extra[name]), name
