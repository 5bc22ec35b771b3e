"""Training dynamics the mixer observes (METHOD.md, "Observation" and "Reward").

:mod:`~acodm.dynamics.alignment`: per-domain gradient alignment from hooks in the normal pass;
:mod:`~acodm.dynamics.features`: per-domain losses, shares, epochs and layer statistics;
:mod:`~acodm.dynamics.layers`: which weight matrices of a model both of them read;
:mod:`~acodm.dynamics.probe`: :class:`DynamicsProbe`, the one meter of every training loop
(acodm's trainer, the Hugging Face path, any torch loop); :mod:`~acodm.dynamics.standardize`:
:func:`zscore`, the one z-score (observation, alignment scores, the agents' feedback);
:mod:`~acodm.dynamics.interval`: :class:`Dynamics` and the alignment scores, numpy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# numpy only: importing acodm.dynamics (or its interval module) does not import torch; the
# torch parts load on first use of their names (the framework-agnostic mixing API needs none)
from acodm.dynamics.interval import (
    AlignmentError,
    Dynamics,
    LossTracker,
    alignment_scores,
    raw_alignment_scores,
)
from acodm.dynamics.standardize import zscore

if TYPE_CHECKING:
    from acodm.dynamics.alignment import GradientAlignment
    from acodm.dynamics.features import LayerStats
    from acodm.dynamics.layers import distinct_layers, monitored_layers
    from acodm.dynamics.probe import DynamicsProbe, sequence_losses, window_losses

_LAZY = {
    "GradientAlignment": "acodm.dynamics.alignment",
    "LayerStats": "acodm.dynamics.features",
    "distinct_layers": "acodm.dynamics.layers",
    "monitored_layers": "acodm.dynamics.layers",
    "DynamicsProbe": "acodm.dynamics.probe",
    "sequence_losses": "acodm.dynamics.probe",
    "window_losses": "acodm.dynamics.probe",
}

__all__ = [
    "AlignmentError",
    "Dynamics",
    "DynamicsProbe",
    "GradientAlignment",
    "LayerStats",
    "LossTracker",
    "alignment_scores",
    "distinct_layers",
    "monitored_layers",
    "raw_alignment_scores",
    "sequence_losses",
    "window_losses",
    "zscore",
]


def __getattr__(name: str) -> Any:
    """The torch-based names, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'acodm.dynamics' has no attribute {name!r}")
