"""One interval's training dynamics as numbers: :class:`Dynamics` and what turns per-domain
sums into it, without torch.

The observation and the reward (:mod:`acodm.spaces`) read a :class:`Dynamics`; a training loop
fills one with :class:`acodm.dynamics.probe.DynamicsProbe` (torch hooks) or, in any framework,
from the per-domain sums it computed itself (:func:`acodm.policies.mixing.interval_dynamics`).
Everything here is numpy only, so the framework-agnostic mixing API imports in a fraction of
a second (no torch, no gymnasium, no stable-baselines3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acodm.dynamics.standardize import zscore
from acodm.errors import AcodmError

__all__ = [
    "AGENT_FEATURES",
    "AlignmentError",
    "Dynamics",
    "LossTracker",
    "alignment_scores",
    "permute_domains",
    "raw_alignment_scores",
]

#: A torch tensor, a numpy array or a sequence of numbers (tensors are read on the host).
ArrayLike = Any

#: Added to the mean gradient norm before dividing (METHOD.md).
NORM_EPS = 1e-6
#: The alignment scores are clipped to [-SCORE_CLIP, SCORE_CLIP] (METHOD.md).
SCORE_CLIP = 3.0


class AlignmentError(AcodmError, ValueError):
    """Bad input to the gradient-alignment measurement (shapes, domain ids, a non-finite Gram)."""


def host_array(x: ArrayLike) -> np.ndarray:
    """``x`` as a float64 numpy array (a torch tensor is detached and copied to the host)."""
    if hasattr(x, "detach"):  # a torch tensor, read without importing torch here
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


#: The per-domain features of the agent console
#: (:func:`acodm.agents.console.interval_features`), in the order the observation lists them
#: (``Dynamics.agents`` keys; the env's ``acodm.envs.AGENT_FEATURES`` is this tuple).
AGENT_FEATURES: tuple[str, ...] = (
    "mean_quality",
    "topic_entropy",
    "topic_coverage",
    "repetition_rate",
)


@dataclass(frozen=True)
class Dynamics:
    """One interval's training dynamics (raw, not normalised; the env normalises).

    Per domain (length k): ``loss`` (mean training loss in the interval; a domain without
    samples keeps its last known loss), ``loss_change`` (against the *previous* interval,
    not the first one as in the AC-ODM code), ``share`` (fraction of the interval's
    sequences), ``epochs`` (epochs of the domain consumed so far), ``alignment`` (gradient
    alignment score ``s_i``). Per monitored layer: ``weight_norm`` (||W|| / ||W_0||) and
    ``weight_distance`` (||W - W_0|| / ||W_0||). ``progress`` in [0, 1] (not 0..100).
    ``gram``: the k x k Gram matrix of mean per-domain gradients.
    ``agents``: per-domain features of the agent console (``mean_quality``,
    ``topic_entropy``, ``topic_coverage``, ``repetition_rate``; length k each) and
    ``console_alpha`` its agent weights, when the run has a console (``TrainConfig.console``);
    empty otherwise. ``probe_loss`` / ``probe_delta`` (length k): the loss on the fixed probe
    windows of the reward split after the interval and its decrease over the interval, where
    the env measures the probe (:func:`acodm.spaces.with_probe`); None otherwise.
    """

    step: int
    progress: float
    loss: np.ndarray
    loss_change: np.ndarray
    share: np.ndarray
    epochs: np.ndarray
    alignment: np.ndarray
    gram: np.ndarray
    weight_norm: np.ndarray
    weight_distance: np.ndarray
    agents: Mapping[str, np.ndarray] = field(default_factory=dict)
    console_alpha: Mapping[str, float] = field(default_factory=dict)
    probe_loss: np.ndarray | None = None
    probe_delta: np.ndarray | None = None


def permute_domains(dynamics: Dynamics, order: Sequence[int]) -> Dynamics:
    """``dynamics`` with its per-domain entries in another domain order.

    Entry ``i`` of the result is entry ``order[i]`` of ``dynamics`` (every length-k vector,
    the agents' features, both axes of the Gram); per-layer values and progress are unchanged.
    Lets a policy trained on domains listed in one order read a run that lists them in another.
    """
    idx = np.asarray(order, dtype=np.int64)
    if sorted(idx.tolist()) != list(range(len(dynamics.loss))):
        raise ValueError(
            f"order {list(order)} is not a permutation of {len(dynamics.loss)} domains"
        )
    return dataclasses.replace(
        dynamics,
        loss=dynamics.loss[idx],
        loss_change=dynamics.loss_change[idx],
        share=dynamics.share[idx],
        epochs=dynamics.epochs[idx],
        alignment=dynamics.alignment[idx],
        gram=dynamics.gram[np.ix_(idx, idx)],
        agents={name: np.asarray(v)[idx] for name, v in dynamics.agents.items()},
        probe_loss=None if dynamics.probe_loss is None else dynamics.probe_loss[idx],
        probe_delta=None if dynamics.probe_delta is None else dynamics.probe_delta[idx],
    )


class LossTracker:
    """Per-domain interval losses with a memory for domains that got no samples."""

    def __init__(self, k: int) -> None:
        self.last = np.full(k, np.nan)

    def update(self, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(loss, change)``; unseen domains carry their last value (change 0).

        Before a domain was ever seen its loss is the mean of the seen ones (or 0).
        """
        filled = np.where(np.isfinite(loss), loss, self.last)
        if np.any(~np.isfinite(filled)):
            seen = filled[np.isfinite(filled)]
            filled = np.where(np.isfinite(filled), filled, seen.mean() if seen.size else 0.0)
        prev = np.where(np.isfinite(self.last), self.last, filled)
        change = filled - prev
        self.last = filled.copy()
        return filled, change

    def state_dict(self) -> list[float | None]:
        return [None if not np.isfinite(x) else float(x) for x in self.last]

    def load_state_dict(self, state: list[float | None]) -> None:
        self.last = np.array([np.nan if x is None else x for x in state], dtype=np.float64)


def _mean_gram(
    gram: ArrayLike, counts: ArrayLike | Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(k, k) Gram of MEAN gradients ``gram_ij / (n_i n_j)`` and the (k,) bool active mask.

    Active: ``n_i > 0`` with counts; without counts the Gram is used as is and a domain is
    active when ``gram_ii > 0``.
    """
    g = host_array(gram)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] < 2:
        raise AlignmentError(f"gram must be a (k, k) matrix with k >= 2, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise AlignmentError("gram has non-finite entries")
    if counts is None:
        return g, np.diag(g) > 0
    n = host_array(counts)
    if n.shape != (g.shape[0],) or not np.isfinite(n).all() or (n < 0).any():
        raise AlignmentError(f"counts must be {g.shape[0]} non-negative numbers, got {n}")
    active = n > 0
    inv = np.where(active, 1.0 / np.where(active, n, 1.0), 0.0)  # 1/n_i, 0 for empty domains
    return g * np.outer(inv, inv), active


def raw_alignment_scores(
    gram: ArrayLike, counts: ArrayLike | Sequence[float] | None = None
) -> np.ndarray:
    """``s_i = sum_{j != i} <g_i, g_j> / (mean_k ||g_k|| + 1e-6)`` before z-scoring (METHOD.md).

    With ``counts`` the ``g_i`` are MEAN gradients: ``<g_i, g_j> = gram_ij / (n_i n_j)``. Sums and
    the mean norm run over active domains only (see :func:`alignment_scores`); inactive get 0.
    """
    g, active = _mean_gram(gram, counts)
    scores = np.zeros(g.shape[0])
    if not active.any():
        return scores
    a = g[np.ix_(active, active)]  # (m, m) active block
    norms = np.sqrt(np.clip(np.diag(a), 0.0, None))  # ||g_i||
    off = a.sum(axis=1) - np.diag(a)  # sum_{j != i} <g_i, g_j>
    scores[active] = off / (norms.mean() + NORM_EPS)
    return scores


def alignment_scores(
    gram: ArrayLike, counts: ArrayLike | Sequence[float] | None = None
) -> np.ndarray:
    """Per-domain gradient-alignment scores (METHOD.md, "Reward: gradient alignment").

    ``s_i = sum_{j != i} <g_i, g_j> / (mean_k ||g_k|| + 1e-6)`` with ``g_i`` domain i's MEAN
    gradient (``gram_ij / (n_i n_j)`` when ``counts`` is given, else the Gram as is), then
    z-scored across the active domains (population std) and clipped to ``[-3, 3]``.

    - Active domains: ``counts > 0`` (without counts: ``gram_ii > 0``). The others score exactly
      0 and are left out of the sums, the mean norm, and the z-score's mean and std.
    - If the active scores are all equal (or fewer than 2 domains are active) every score is 0.
    - Invariant to a common positive factor of the Gram (loss scaling, accumulation); the
      division by the mean norm is immaterial too (z-scoring removes any common scale; only the
      ``1e-6`` could matter, for mean-gradient norms near 1e-6).
    - With ``m`` active domains ``|z| <= sqrt(m - 1)``, so the clip only acts when ``m >= 11``.
    - The std is the population std (divides by ``m``). The AC-ODM code uses the sample std
      (divides by ``m - 1``): unclipped scores here are ``sqrt(m / (m - 1))`` times its scores
      (1.0235 at ``m = 22``), so the reward is too, and the clip at 3 here is the code's
      ``3 sqrt((m - 1) / m)`` (2.93 at ``m = 22``). README, "Implementation details".

    Returns a ``(k,)`` float64 array.
    """
    s = raw_alignment_scores(gram, counts)
    _, active = _mean_gram(gram, counts)
    # all equal up to rounding (relative to the scores' scale, down to 1e-300): no preference
    return zscore(s, clip=SCORE_CLIP, valid=active, atol=1e-12 * 1e-300)
