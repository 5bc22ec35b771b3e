"""The one meter: acodm's trainer and a hand-written torch loop with the same DynamicsProbe
measure the same Dynamics for the same batches, and the comparison catches a feature that
one path computes differently."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import torch

from acodm.config import TrainConfig, debug_cpu
from acodm.data.sampler import DomainSampler
from acodm.dynamics.features import Dynamics
from acodm.dynamics.probe import DynamicsProbe, sequence_losses, window_losses
from acodm.errors import AcodmError
from acodm.models import build_model
from acodm.trainer import Trainer, lr_at
from tests.fixtures import make_text_store

WEIGHTS = ([0.2, 0.3, 0.5], [0.6, 0.2, 0.2])  # one per interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dynamics_difference(a: Dynamics, b: Dynamics, rtol: float = 1e-12) -> str | None:
    """The first field of :class:`Dynamics` in which ``a`` and ``b`` differ, or None.

    Every field is compared (a new field is compared without touching this function):
    arrays and numbers to ``rtol`` (NaN equals NaN), mappings key by key.
    """
    for f in dataclasses.fields(Dynamics):
        x, y = getattr(a, f.name), getattr(b, f.name)
        pairs = [(f.name, x, y)]
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            if sorted(x) != sorted(y):
                return f"{f.name}: keys {sorted(x)} != {sorted(y)}"
            pairs = [(f"{f.name}[{key}]", x[key], y[key]) for key in sorted(x)]
        for name, u, v in pairs:
            u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
            if u.shape != v.shape or not np.allclose(u, v, rtol=rtol, atol=1e-12, equal_nan=True):
                return f"{name}: {u.tolist()} != {v.tolist()}"
    return None


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    store = make_text_store(tmp_path_factory.mktemp("probe") / "store")
    return debug_cpu(str(store.path)).replace(
        steps=4, interval=2, micro_batch_size=4, warmup_steps=1, device="cpu"
    )


def trainer_dynamics(cfg: TrainConfig, patch: Callable[[Trainer], None] | None = None) -> list:
    tr = Trainer(cfg)
    if patch is not None:
        patch(tr)
    try:
        return [tr.train_interval(np.array(w)).dynamics for w in WEIGHTS]
    finally:
        tr.close()


def loop_dynamics(cfg: TrainConfig, *, end_step: bool) -> list:
    """A plain torch loop (the transfer docstring's) with acodm's optimizer settings."""
    tr = Trainer(cfg)  # only for its store
    store = tr.store
    tr.close()
    model = build_model(cfg.model, store.vocab_size, max_seq_len=cfg.seq_len, seed=cfg.seed)
    probe = DynamicsProbe(
        model, store.domains, count=cfg.monitored_layers, rank=cfg.alignment_rank, seed=cfg.seed
    )
    sampler = DomainSampler(
        store, seq_len=cfg.seq_len, batch_size=cfg.micro_batch_size, seed=cfg.seed
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
        fused=True,
    )
    out, step = [], 0
    for w in WEIGHTS:
        sampler.set_weights(w)
        for _ in range(cfg.interval):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg, cfg.total_steps())
            opt.zero_grad(set_to_none=True)
            batch = sampler.next_batch()
            probe.set_domains(batch.domains)
            seq_loss = window_losses(model, torch.from_numpy(batch.tokens))
            seq_loss.mean().backward()
            probe.record(seq_loss, batch.domains)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if end_step:
                probe.end_step(grad_norm)
            opt.step()
            step += 1
        out.append(probe.interval_end(step, cfg.total_steps(), epochs=sampler.epochs()))
    probe.close()
    return out


@pytest.fixture(scope="module")
def loop(config: TrainConfig) -> list:
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the tests' thread count: one reduction order for both paths
    try:
        return loop_dynamics(config, end_step=False)
    finally:
        torch.set_num_threads(old)


def test_the_trainer_and_a_torch_loop_with_the_probe_measure_the_same_dynamics(config, loop):
    trained = trainer_dynamics(config)
    assert len(trained) == len(loop) == 2
    for got, want in zip(trained, loop, strict=True):
        assert dynamics_difference(got, want) is None
        assert np.any(got.alignment != 0) and np.all(got.weight_distance > 0)  # real values
    assert np.any(trained[1].loss_change != 0)
    exact = loop_dynamics(config, end_step=True)  # the trainer's per-step rule: bit for bit
    for got, want in zip(trained, exact, strict=True):
        assert dynamics_difference(got, want, rtol=0.0) is None


def _scale_recorded_losses(tr: Trainer) -> None:
    """The trainer's path records its losses 1% too high (the backward is untouched)."""
    real = tr.probe.record
    tr.probe.record = lambda loss, ids: real(loss * 1.01, ids)  # type: ignore[method-assign]


def _double_epochs(tr: Trainer) -> None:
    real = tr._epochs
    tr._epochs = lambda: real() * 2  # type: ignore[method-assign]


def _layer_norm_of_another_layer(tr: Trainer) -> None:
    """A layer feature read from the wrong layer on the trainer's path only."""
    stats = tr.probe.layer_stats
    real = stats.__call__

    class Swapped:
        names = stats.names

        def __call__(self) -> tuple[np.ndarray, np.ndarray]:
            norm, distance = real()
            return norm[::-1].copy(), distance

    tr.probe.layer_stats = Swapped()  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (_scale_recorded_losses, "loss"),
        (_double_epochs, "epochs"),
        (_layer_norm_of_another_layer, "weight_norm"),
    ],
)
def test_a_feature_computed_wrongly_on_one_path_is_caught(config, loop, patch, field):
    trained = trainer_dynamics(config, patch)
    found = dynamics_difference(trained[-1], loop[-1])
    assert found is not None and found.startswith(field), found


def test_sequence_losses_mean_over_targets_or_over_the_unignored_ones():
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    targets = torch.randint(0, 7, (2, 5))
    full = sequence_losses(logits, targets)
    by_hand = torch.nn.functional.cross_entropy(logits[1], targets[1])
    assert full.dtype == torch.float32 and math.isclose(
        float(full[1]), float(by_hand), rel_tol=1e-6
    )
    targets[1, 3:] = -100
    part = sequence_losses(logits, targets, ignore_index=-100)
    assert float(part[0]) == pytest.approx(float(full[0]))
    want = torch.nn.functional.cross_entropy(logits[1, :3], targets[1, :3])
    assert float(part[1]) == pytest.approx(float(want), rel=1e-6)


def test_record_checks_shapes_and_host_ids(config):
    model: Any = build_model("tiny", 64, max_seq_len=16, seed=0)
    probe = DynamicsProbe(model, ["a", "b", "c"], alignment=False)
    with pytest.raises(AcodmError, match="must match"):
        probe.record(torch.ones(3), np.array([0, 1]))
    with pytest.raises(AcodmError, match=r"in \[0, 3\)"):
        probe.record(torch.ones(2), np.array([0, 3]))
    probe.record(torch.tensor([1.0, float("nan"), 3.0]), np.array([0, 0, 2]))
    fb = probe.interval_feedback(1, 4)
    np.testing.assert_array_equal(fb.counts, [1, 0, 1])  # the NaN sequence is dropped alone
    assert fb.loss[0] == 1.0 and math.isnan(fb.loss[1]) and fb.loss[2] == 3.0
    probe.record(torch.tensor([1.0, float("nan")]), np.array([0, 1]))
    assert bool(probe.end_step())  # acodm's rule: the whole step is dropped
    np.testing.assert_array_equal(probe.interval_feedback(2, 4).counts, [0, 0, 0])
