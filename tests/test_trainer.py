"""The pretraining engine: per-domain losses, schedule, resume, NaN handling, DDP, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from acodm.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from acodm.config import ConfigError, TrainConfig, debug_cpu
from acodm.data.sampler import DomainSampler
from acodm.errors import AcodmError
from acodm.metrics import read_metrics
from acodm.pretrain import pretrain
from acodm.trainer import Trainer, TrainingDiverged, lr_at
from tests.fixtures import (
    comparable_metrics,
    ddp_environment,
    free_port,
    interrupted_then_resumed,
    make_text_store,
)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("trainer") / "store"
    make_text_store(path)
    return str(path)


def cfg(store: str, **kw) -> TrainConfig:
    return debug_cpu(store).replace(**kw)


def test_per_domain_losses_equal_separately_computed_losses(store_path):
    tr = Trainer(cfg(store_path, micro_batch_size=6))
    twin = DomainSampler(tr.store, seq_len=tr.config.seq_len, batch_size=6, seed=tr.config.seed)
    weights = np.array([0.5, 0.25, 0.25])
    twin.set_weights(weights)
    batch = twin.next_batch()
    tokens = torch.from_numpy(batch.tokens)
    expected = {}
    with torch.no_grad():
        for i in np.unique(batch.domains):
            rows = tokens[torch.from_numpy(batch.domains == i)]
            expected[int(i)] = tr.model(input_ids=rows, labels=rows).loss.item()  # HF's own loss
    report = tr.train_interval(weights, steps=1)
    for i, want in expected.items():
        assert report.feedback.loss[i] == pytest.approx(want, rel=1e-5)
    for i in set(range(3)) - set(expected):
        assert math.isnan(report.feedback.loss[i])
    np.testing.assert_array_equal(report.feedback.counts, np.bincount(batch.domains, minlength=3))


def test_interval_dynamics_shapes_and_values(store_path):
    tr = Trainer(cfg(store_path, steps=10, interval=2, monitored_layers=3))
    first = tr.train_interval(np.ones(3) / 3)
    second = tr.train_interval(np.array([0.0, 0.0, 1.0]))
    d = second.dynamics
    assert d.step == 4 and d.progress == pytest.approx(0.4)
    assert d.loss.shape == d.share.shape == d.alignment.shape == (3,)
    assert d.gram.shape == (3, 3) and np.allclose(d.gram, d.gram.T)
    assert d.share.tolist() == [0.0, 0.0, 1.0]
    assert d.weight_norm.shape == d.weight_distance.shape == (3,)
    assert np.all(d.weight_distance > 0)  # the weights moved away from their initialisation
    assert np.all(second.dynamics.epochs >= first.dynamics.epochs)
    assert d.epochs[2] > first.dynamics.epochs[2]
    # domains without samples keep their last loss, with zero change
    np.testing.assert_allclose(d.loss[:2], first.dynamics.loss[:2])
    np.testing.assert_array_equal(d.loss_change[:2], [0.0, 0.0])


def test_lr_schedule_warmup_then_cosine():
    c = TrainConfig(store="s", lr=1.0, min_lr_ratio=0.1, warmup_steps=4, steps=14)
    assert [lr_at(s, c, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, c, 14) == pytest.approx(1.0)
    assert lr_at(9, c, 14) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_at(14, c, 14) == pytest.approx(0.1)


def test_resume_reproduces_the_uninterrupted_run_exactly(store_path, tmp_path, monkeypatch):
    config = cfg(store_path, steps=10, checkpoint_every=4, eval_every=5, mixer="odm:warmup=0.2")
    start = interrupted_then_resumed(config, tmp_path / "full", tmp_path / "cut", 6, monkeypatch)
    assert start.name == "step-00000004"
    assert comparable_metrics(tmp_path / "cut") == comparable_metrics(tmp_path / "full")
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut"))
    assert a.step == b.step == 10
    for name, t in a.model.items():
        assert torch.equal(t, b.model[name]), name
    assert a.state["sampler"] == b.state["sampler"]
    assert a.state["mixer"] == b.state["mixer"]


def test_nan_steps_are_skipped_then_the_run_stops_with_a_clear_error(
    store_path, tmp_path, monkeypatch
):
    real = Trainer._forward_losses
    bad_steps = {3, 4}

    def sometimes_nan(self, model, tokens):
        out = real(self, model, tokens)
        return out * float("nan") if model.training and self.step in bad_steps else out

    monkeypatch.setattr(Trainer, "_forward_losses", sometimes_nan)
    summary = pretrain(cfg(store_path, steps=8, max_bad_steps=3), tmp_path / "ok", progress=False)
    assert summary["bad_steps"] == 2 and summary["steps"] == 8
    assert math.isfinite(summary["eval/loss_mean"])

    bad_steps.update(range(5, 100))
    with pytest.raises(TrainingDiverged, match="NaN/inf for 3 steps in a row"):
        pretrain(
            cfg(store_path, steps=20, checkpoint_every=2, max_bad_steps=3),
            tmp_path / "diverged",
            progress=False,
        )
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "diverged"))  # last good one intact
    assert ckpt.step == 4
    assert all(torch.isfinite(t).all() for t in ckpt.model.values())


def test_corrupt_checkpoints_give_clear_errors(store_path, tmp_path):
    pretrain(cfg(store_path, steps=2), tmp_path / "run", progress=False)
    path = latest_checkpoint(tmp_path / "run")
    load_checkpoint(path)  # intact

    model = path / "model.safetensors"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt safetensors"):
        load_checkpoint(path)
    model.write_bytes(data)

    (path / "optimizer.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match=r"optimizer\.pt is corrupt"):
        load_checkpoint(path)

    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"state\.json is missing"):
        load_checkpoint(path)


def test_resume_rules(store_path, tmp_path):
    config = cfg(store_path, steps=2)
    with pytest.raises(AcodmError, match=r"no config\.json"):
        pretrain(config, tmp_path / "none", resume=True, progress=False)
    pretrain(config, tmp_path / "run", progress=False)
    with pytest.raises(AcodmError, match="already holds a run"):
        pretrain(config, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="lr"):
        pretrain(config.replace(lr=1e-2), tmp_path / "run", resume=True, progress=False)
    # resuming a finished run re-evaluates and changes nothing else
    summary = pretrain(config, tmp_path / "run", resume=True, progress=False)
    assert summary["steps"] == 2 and "eval/ppl_mean" in summary


def test_run_directory_contents(store_path, tmp_path):
    pretrain(cfg(store_path, steps=3, mixer="unimax:2"), tmp_path / "run", progress=False)
    conf = json.loads((tmp_path / "run" / "config.json").read_text())
    assert conf["mixer"] == "unimax:2" and conf["train"]["steps"] == 3
    assert conf["model"]["layers"] == 4 and conf["total_steps"] == 3
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs if "eval/ppl_mean" in r] == [0, 3]
    assert {f"mix/weight/{d}" for d in ("code", "prose", "numbers")} <= set(recs[1])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["tokens"] == 3 * 64 * 4


def test_bad_configuration_errors(store_path):
    with pytest.raises(ConfigError, match="exactly one of steps and tokens"):
        TrainConfig(store=store_path, steps=None, tokens=None)
    with pytest.raises(ConfigError, match="interval"):
        TrainConfig(store=store_path, interval=0)
    with pytest.raises(AcodmError, match="neither a preset"):
        Trainer(cfg(store_path, model="nonexistent-model"))
    with pytest.raises(AcodmError, match=r"unknown mixer|known"):
        pretrain(cfg(store_path, mixer="bogus"), Path("/nonexistent/run"), progress=False)


# -- data parallel: 2 gloo processes against one process ----------------------------------


def _ddp_worker(rank: int, world: int, port: int, store: str, out: str) -> None:
    ddp_environment(rank, world, port)
    tr = Trainer(cfg(store, micro_batch_size=3))
    report = tr.train_interval(np.array([0.2, 0.3, 0.5]), steps=1)
    if rank == 0:
        torch.save(
            {
                "loss": torch.tensor(report.feedback.loss),
                "counts": torch.tensor(report.feedback.counts),
                "gram": torch.tensor(report.dynamics.gram),
                "alignment": torch.tensor(report.dynamics.alignment),
                "model": tr.model.state_dict(),
            },
            out,
        )
    torch.distributed.destroy_process_group()


def test_ddp_on_two_gloo_processes_matches_one_process(store_path, tmp_path):
    out = tmp_path / "ddp.pt"
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, free_port(), store_path, str(out)), nprocs=2, join=True
    )
    got = torch.load(out, weights_only=True)

    # One process, one optimizer step over both ranks' micro-batches (grad_accum = 2).
    single = Trainer(cfg(store_path, micro_batch_size=3, grad_accum=2))
    batches = []
    for rank in range(2):
        s = DomainSampler(
            single.store,
            seq_len=64,
            batch_size=3,
            seed=0,
            rank=rank,
            world_size=2,
            weights=[0.2, 0.3, 0.5],
        )
        batches.append(s.next_batch())
    feed = iter(batches)
    single.sampler.next_batch = lambda: next(feed)  # type: ignore[method-assign]
    report = single.train_interval(np.array([0.2, 0.3, 0.5]), steps=1)

    np.testing.assert_allclose(got["loss"].numpy(), report.feedback.loss, rtol=1e-5)
    np.testing.assert_array_equal(got["counts"].numpy(), report.feedback.counts)
    # The Gram is defined up to a common factor: one process scales its loss by 1/grad_accum.
    np.testing.assert_allclose(got["gram"].numpy(), 4 * report.dynamics.gram, rtol=1e-4)
    np.testing.assert_allclose(got["alignment"].numpy(), report.dynamics.alignment, atol=1e-6)
    for name, t in single.model.state_dict().items():
        torch.testing.assert_close(got["model"][name], t, rtol=1e-5, atol=1e-6)


def test_checkpoint_files_are_safetensors(store_path, tmp_path):
    pretrain(cfg(store_path, steps=2), tmp_path / "run", progress=False)
    path = latest_checkpoint(tmp_path / "run")
    weights = load_file(str(path / "model.safetensors"))
    assert any(k.endswith("mlp.dense_4h_to_h.weight") for k in weights)
