"""Training dynamics per interval: what the mixing agent observes (METHOD.md, "Observation").

Everything here is computed from numbers the training step already has (per-domain losses
of the same forward pass, sample counts, the sampler's epoch counters) plus one norm per
monitored weight matrix per interval, so it costs next to nothing.

Size-agnostic by construction: per-domain vectors have length k, per-layer vectors have the
length of the monitored-layer list (a fixed count chosen by relative depth), so a policy
learned on a small proxy reads the same vector on a larger target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from acodm.dynamics.alignment import GradientAlignment

# Dynamics and the loss memory are numpy only (acodm.dynamics.interval); re-exported here
from acodm.dynamics.interval import Dynamics, LossTracker, alignment_scores, permute_domains

__all__ = ["Dynamics", "LayerStats", "LossTracker", "measure_interval", "permute_domains"]


def _is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor (a parameter sharded by FSDP2 or tensor parallelism)."""
    return hasattr(t, "device_mesh") and hasattr(t, "to_local")


class LayerStats:
    """Norm and distance from initialisation of monitored weight matrices, relative to ||W_0||.

    Reads each module's *current* ``weight`` at every call (FSDP2's ``fully_shard`` replaces a
    module's parameters with sharded ones: a tensor captured before would be stale). A
    sharded weight (a DTensor) is reduced over its mesh: its norms are those of the full
    matrix, the same on every rank, without gathering it. ``W_0`` is taken at construction
    in the weight's own layout, so build the probe after sharding the model (a weight whose
    layout changed since is a clear error).
    """

    def __init__(self, modules: Sequence[tuple[str, nn.Module]]) -> None:
        self.names = [n for n, _ in modules]
        self._modules = [m for _, m in modules]
        self.initial = [self._weight(i).detach().float().clone() for i in range(len(self.names))]

    def _weight(self, i: int) -> torch.Tensor:
        w = getattr(self._modules[i], "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"monitored module {self.names[i]!r} has no 2-D weight")
        return w

    def load_initial(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore initial weights saved in a checkpoint (``initial/<name>`` keys)."""
        for i, n in enumerate(self.names):
            self.initial[i] = tensors[f"initial/{n}"].to(self._weight(i).device).float()

    def initial_tensors(self) -> dict[str, torch.Tensor]:
        return {f"initial/{n}": t for n, t in zip(self.names, self.initial, strict=True)}

    @torch.no_grad()
    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        norms, dists = [], []
        for i, w0 in enumerate(self.initial):
            wf = self._weight(i).detach().float()
            if _is_sharded(wf) != _is_sharded(w0):
                raise ValueError(
                    f"monitored weight {self.names[i]!r} was "
                    f"{'sharded' if _is_sharded(w0) else 'unsharded'} when the probe was built "
                    "and is not now: build the DynamicsProbe after fully_shard / parallelize"
                )
            n0, n, d = (
                torch.linalg.vector_norm(x) for x in (w0, wf, wf - w0)
            )  # DTensors: reduced over the mesh
            if _is_sharded(wf):
                n0, n, d = (x.full_tensor() for x in (n0, n, d))
            n0 = n0.clamp_min(1e-12)
            norms.append(n / n0)
            dists.append(d / n0)
        both = torch.stack([torch.stack(norms), torch.stack(dists)]).cpu().numpy()
        return both[0].astype(np.float64), both[1].astype(np.float64)


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
