"""Training dynamics per interval: what the mixing agent observes (METHOD.md, "Observation").

Everything here is computed from numbers the training step already has (per-domain losses
of the same forward pass, sample counts, the sampler's epoch counters) plus one norm per
monitored weight matrix per interval, so it costs next to nothing.

Size-agnostic by construction: per-domain vectors have length k, per-layer vectors have the
length of the monitored-layer list (a fixed count chosen by relative depth), so a policy
learned on a small proxy reads the same vector on a larger target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from acodm.dynamics.alignment import GradientAlignment, alignment_scores


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
    the env measures the probe (:func:`acodm.envs.spaces.with_probe`); None otherwise.
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


class LayerStats:
    """Norm and distance from initialisation of monitored weight matrices, relative to ||W_0||."""

    def __init__(self, modules: Sequence[tuple[str, nn.Linear]]) -> None:
        self.names = [n for n, _ in modules]
        self._weights: list[torch.Tensor] = [m.weight for _, m in modules]
        self.initial = [w.detach().float().clone() for w in self._weights]

    def load_initial(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore initial weights saved in a checkpoint (``initial/<name>`` keys)."""
        for i, n in enumerate(self.names):
            self.initial[i] = tensors[f"initial/{n}"].to(self._weights[i].device).float()

    def initial_tensors(self) -> dict[str, torch.Tensor]:
        return {f"initial/{n}": t for n, t in zip(self.names, self.initial, strict=True)}

    @torch.no_grad()
    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        norms, dists = [], []
        for w, w0 in zip(self._weights, self.initial, strict=True):
            n0 = torch.linalg.vector_norm(w0).clamp_min(1e-12)
            wf = w.detach().float()
            norms.append(torch.linalg.vector_norm(wf) / n0)
            dists.append(torch.linalg.vector_norm(wf - w0) / n0)
        both = torch.stack([torch.stack(norms), torch.stack(dists)]).cpu().numpy()
        return both[0].astype(np.float64), both[1].astype(np.float64)


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


def measure_interval(
    *,
    step: int,
    total_steps: int,
    raw_loss: np.ndarray,
    counts: np.ndarray,
    epochs: np.ndarray,
    loss_tracker: LossTracker,
    alignment: GradientAlignment | None,
    layer_stats: LayerStats,
    agents: Mapping[str, np.ndarray] | None = None,
    console_alpha: Mapping[str, float] | None = None,
) -> Dynamics:
    """Close an interval: the :class:`Dynamics` from its per-domain losses and sample counts.

    ``alignment`` must already be reduced over ranks. Without it (no hooks), alignment,
    Gram and layer statistics are zeros. ``agents`` / ``console_alpha``: the agent console's
    features and weights (console runs). Called by :class:`acodm.dynamics.probe.DynamicsProbe`,
    the one meter of every training loop.
    """
    k = raw_loss.shape[0]
    loss, change = loss_tracker.update(raw_loss)
    if alignment is not None:
        gram = alignment.gram().cpu().numpy().astype(np.float64)
        scores = alignment_scores(gram, alignment.counts().cpu().numpy())
        norm, distance = layer_stats()
    else:
        gram, scores = np.zeros((k, k)), np.zeros(k)
        norm = distance = np.zeros(len(layer_stats.names))
    return Dynamics(
        step=int(step),
        progress=min(1.0, step / max(total_steps, 1)),
        loss=loss,
        loss_change=change,
        share=counts / max(counts.sum(), 1),
        epochs=np.asarray(epochs, dtype=np.float64),
        alignment=scores,
        gram=gram,
        weight_norm=norm,
        weight_distance=distance,
        agents=dict(agents or {}),
        console_alpha=dict(console_alpha or {}),
    )
