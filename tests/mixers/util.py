"""Shared helpers of the mixer tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from acodm.mixers import IntervalFeedback, MixerContext


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
