"""Training dynamics the mixer observes (METHOD.md, "Observation" and "Reward").

:mod:`~acodm.dynamics.alignment`: per-domain gradient alignment from hooks in the normal pass;
:mod:`~acodm.dynamics.features`: per-domain losses, shares, epochs and layer statistics.
"""

from acodm.dynamics.alignment import (
    AlignmentError,
    GradientAlignment,
    alignment_scores,
    raw_alignment_scores,
)
from acodm.dynamics.features import Dynamics, LayerStats, LossTracker

__all__ = [
    "AlignmentError",
    "Dynamics",
    "GradientAlignment",
    "LayerStats",
    "LossTracker",
    "alignment_scores",
    "raw_alignment_scores",
]
