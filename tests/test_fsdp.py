"""FSDP2 in acodm's loop on 2 gloo CPU processes: the same step as DDP, sharded checkpoints,
exact resume, and resume on another number of processes (DDP and FSDP)."""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from acodm.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from acodm.config import debug_cpu
from acodm.pretrain import pretrain
from acodm.trainer import Trainer
from tests.fixtures import (
    SimulatedCrash,
    comparable_metrics,
    ddp_environment,
    free_port,
    make_text_store,
)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("fsdp") / "store"
    make_text_store(path)
    return str(path)


def _full_state(tr: Trainer) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True)
    return {k: v.detach().clone() for k, v in get_model_state_dict(tr.model, options=opts).items()}


def _step_worker(rank: int, world: int, port: int, store: str, out: str, parallel: str) -> None:
    ddp_environment(rank, world, port)
    tr = Trainer(debug_cpu(store).replace(micro_batch_size=3, grad_accum=2, parallel=parallel))
    assert tr.sharded == (parallel == "fsdp")
    report = tr.train_interval(np.array([0.2, 0.3, 0.5]), steps=2)
    ev = tr.evaluate()  # ranks hold different numbers of windows: padded forwards under FSDP
    full = _full_state(tr)
    if rank == 0:
        torch.save(
            {
                "loss": torch.tensor(report.feedback.loss),
                "counts": torch.tensor(report.feedback.counts),
                "gram": torch.tensor(report.dynamics.gram),
                "norm": torch.tensor(report.dynamics.weight_norm),
                "eval": torch.tensor(ev["eval/loss_mean"]),
                "model": full,
            },
            out,
        )
    torch.distributed.destroy_process_group()


def _spawn(fn, *args) -> None:
    torch.multiprocessing.spawn(fn, args=(2, free_port(), *args), nprocs=2, join=True)


def test_fsdp_step_matches_ddp_on_two_gloo_processes(store_path, tmp_path):
    got = {}
    for parallel in ("ddp", "fsdp"):
        out = tmp_path / f"{parallel}.pt"
        _spawn(_step_worker, store_path, str(out), parallel)
        got[parallel] = torch.load(out, weights_only=True)
    ddp, fsdp = got["ddp"], got["fsdp"]
    np.testing.assert_array_equal(fsdp["counts"].numpy(), ddp["counts"].numpy())
    np.testing.assert_allclose(fsdp["loss"].numpy(), ddp["loss"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(fsdp["gram"].numpy(), ddp["gram"].numpy(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(fsdp["norm"].numpy(), ddp["norm"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(fsdp["eval"].item(), ddp["eval"].item(), rtol=1e-5)
    assert fsdp["model"].keys() == ddp["model"].keys()
    for name, t in ddp["model"].items():
        # atol: Adam divides by sqrt(v), so a near-zero gradient rounded differently moves its
        # weight by up to ~1e-6; one step of lr is ~1e-3
        torch.testing.assert_close(fsdp["model"][name], t, rtol=1e-4, atol=1e-5)


def _run_worker(
    rank: int, world: int, port: int, store: str, run: str, crash: int, parallel: str
) -> None:
    """pretrain into ``run``; with ``crash`` > 0, stop when about to train from that step
    (after saving the full weights there), else resume the run to its end."""
    ddp_environment(rank, world, port)
    config = _config(store, parallel)
    if crash:
        real = Trainer.train_interval

        def stop(self: Trainer, weights, steps=None):
            if self.step == crash:
                full = _full_state(self)
                if rank == 0:
                    torch.save(full, Path(run).parent / f"{Path(run).name}-at-{crash}.pt")
                raise SimulatedCrash(f"simulated crash at step {crash}")
            return real(self, weights, steps)

        Trainer.train_interval = stop  # type: ignore[method-assign]  # this worker only
        with contextlib.suppress(SimulatedCrash):
            pretrain(config, run, progress=False)
    else:
        pretrain(config, run, resume=Path(run, "config.json").is_file(), progress=False)
    torch.distributed.destroy_process_group()


def _config(store: str, parallel: str, **kw):
    return debug_cpu(store).replace(
        steps=8, checkpoint_every=2, eval_every=4, micro_batch_size=2, parallel=parallel, **kw
    )


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_resume_exactly_and_on_another_number_of_processes(store_path, tmp_path, parallel):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _spawn(_run_worker, store_path, str(full), 0, parallel)
    _spawn(_run_worker, store_path, str(cut), 4, parallel)
    ckpt = load_checkpoint(latest_checkpoint(cut))
    assert ckpt.step == 4 and (ckpt.shards is not None) == (parallel == "fsdp")
    if parallel == "fsdp":  # one safetensors file per rank, nothing pickled
        assert sorted(p.name for p in ckpt.shards.iterdir()) == [
            "shard-00001-model-00001-of-00001.safetensors",
            "shard-00002-model-00001-of-00001.safetensors",
        ]
    one = tmp_path / "one"
    shutil.copytree(cut, one)

    # 2 processes -> 2 processes: the uninterrupted run, bit for bit
    _spawn(_run_worker, store_path, str(cut), 0, parallel)
    assert comparable_metrics(cut) == comparable_metrics(full)

    # 2 processes -> 1: the same global batch needs grad_accum 2; anything else is refused
    with pytest.raises(CheckpointError, match="sequences per optimizer step"):
        pretrain(_config(store_path, parallel), one, resume=True, progress=False)
    config = _config(store_path, parallel, grad_accum=2)
    tr = Trainer(config)
    with pytest.warns(UserWarning, match="deals the rest"):
        tr.load_checkpoint(load_checkpoint(latest_checkpoint(one)))
    saved = torch.load(tmp_path / "cut-at-4.pt", weights_only=True)
    for name, t in tr.model.state_dict().items():
        assert torch.equal(t, saved[name]), name
    assert tr.step == 4
    tr.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        summary = pretrain(config, one, resume=True, progress=False)
    assert summary["steps"] == 8 and np.isfinite(summary["eval/loss_mean"])
    after = [r for r in comparable_metrics(one) if r["step"] > 4 and "train/loss" in r]
    assert len(after) == 4
    # the epochs carry on from the 2-process run's (its mean over ranks at step 4)
    at4 = next(r for r in comparable_metrics(full) if r["step"] == 4 and "train/loss" in r)
    at5 = after[0]
    for d in ("a", "b", "c"):
        key = f"train/epochs/{d}"
        if key in at4:
            assert at4[key] <= at5[key] <= at4[key] + 0.5


def test_activation_checkpointing_leaves_the_step_and_its_statistics_unchanged(store_path):
    out = []
    for ac in (False, True):
        tr = Trainer(debug_cpu(store_path).replace(activation_checkpointing=ac, grad_accum=2))
        report = tr.train_interval(np.array([0.2, 0.3, 0.5]), steps=2)
        out.append((report, {k: v.clone() for k, v in tr.model.state_dict().items()}))
        tr.close()
    (plain, w_plain), (ckpt, w_ckpt) = out
    np.testing.assert_array_equal(ckpt.feedback.counts, plain.feedback.counts)
    np.testing.assert_allclose(ckpt.feedback.loss, plain.feedback.loss, rtol=1e-6)
    np.testing.assert_allclose(ckpt.dynamics.gram, plain.dynamics.gram, rtol=1e-5, atol=1e-12)
    for name, t in w_plain.items():
        torch.testing.assert_close(w_ckpt[name], t, rtol=1e-5, atol=1e-6)


def test_parallel_settings_are_checked(store_path):
    from acodm.config import ConfigError

    with pytest.raises(ConfigError, match="parallel must be ddp or fsdp"):
        debug_cpu(store_path).replace(parallel="zero3")
    with pytest.raises(ConfigError, match="param_dtype=bf16 needs parallel=fsdp"):
        debug_cpu(store_path).replace(param_dtype="bf16")
    # one process: nothing to shard, but the checkpoints keep the sharded layout
    tr = Trainer(debug_cpu(store_path).replace(parallel="fsdp"))
    assert not tr.sharded and "sharded" in tr.checkpoint_payload()
    tr.close()


def test_a_ddp_checkpoint_does_not_resume_as_fsdp(store_path, tmp_path):
    config = debug_cpu(store_path).replace(steps=2)
    pretrain(config, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="resume it with --parallel ddp"):
        pretrain(config.replace(parallel="fsdp"), tmp_path / "run", resume=True, progress=False)
