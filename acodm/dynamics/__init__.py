"""Training dynamics the mixer observes (METHOD.md, "Observation" and "Reward").

:mod:`~acodm.dynamics.alignment`: per-domain gradient alignment from hooks in the normal pass;
:mod:`~acodm.dynamics.features`: per-domain losses, shares, epochs and layer statistics;
:mod:`~acodm.dynamics.layers`: which weight matrices of a model both of them read.
"""

from acodm.dynamics.alignment import (
    AlignmentError,
    GradientAlignment,
    alignment_scores,
    raw_alignment_scores,
)
from acodm.dynamics.features import Dynamics, LayerStats, LossTracker
from acodm.dynamics.layers import distinct_layers, monitored_layers

__all__ = [
    "AlignmentError",
    "Dynamics",
    "GradientAlignment",
    "LayerStats",
    "LossTracker",
    "alignment_scores",
    "distinct_layers",
    "monitored_layers",
    "raw_alignment_scores",
]
