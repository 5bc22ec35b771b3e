"""Shared helpers of the mixer tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acodm.mixers import IntervalFeedback, MixerContext
from acodm.mixers import spec as spec_module
from acodm.mixers.doremi import REFERENCE_FORMAT


def make_ctx(
    tokens: Sequence[float] = (100, 300, 600),
    domains: Sequence[str] | None = None,
    total_steps: int = 100,
    tokens_per_step: int = 10,
    interval: int = 1,
) -> MixerContext:
    names = tuple(domains) if domains is not None else tuple(f"d{i}" for i in range(len(tokens)))
    return MixerContext(
        domains=names,
        domain_tokens=np.asarray(tokens, dtype=np.float64),
        total_steps=total_steps,
        tokens_per_step=tokens_per_step,
        interval=interval,
    )


def feedback(
    step: int, loss: Sequence[float], counts: Sequence[float] | None = None
) -> IntervalFeedback:
    """Feedback with the given losses; every domain sampled unless ``counts`` says otherwise."""
    loss_a = np.asarray(loss, dtype=np.float64)
    counts_a = np.ones_like(loss_a) if counts is None else np.asarray(counts, dtype=np.float64)
    return IntervalFeedback(step=step, loss=loss_a, counts=counts_a, epochs=np.zeros_like(loss_a))


def write_ref(path: Path, losses: dict[str, float], **overrides: Any) -> str:
    """A DoReMi reference-loss file for ``losses`` (``overrides`` replace its fields)."""
    obj = {"format": REFERENCE_FORMAT, "version": 1, "domains": list(losses), "losses": losses}
    obj.update(overrides)
    path.write_text(json.dumps(obj))
    return str(path)


def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the test its own copy of the mixer registry, so its registrations do not leak."""
    for table in ("_REGISTRY", "_USAGE", "_EXAMPLE"):
        monkeypatch.setattr(spec_module, table, dict(getattr(spec_module, table)))
