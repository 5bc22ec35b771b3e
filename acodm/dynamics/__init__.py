"""Training dynamics the mixer observes (METHOD.md, "Observation" and "Reward").

:mod:`~acodm.dynamics.alignment`: per-domain gradient alignment from hooks in the normal pass;
:mod:`~acodm.dynamics.features`: per-domain losses, shares, epochs and layer statistics;
:mod:`~acodm.dynamics.layers`: which weight matrices of a model both of them read;
:mod:`~acodm.dynamics.probe`: :class:`DynamicsProbe`, the one meter of every training loop
(acodm's trainer, the Hugging Face path, any torch loop); :mod:`~acodm.dynamics.standardize`:
:func:`zscore`, the one z-score (observation, alignment scores, the agents' feedback).
"""

from acodm.dynamics.alignment import (
    AlignmentError,
    GradientAlignment,
    alignment_scores,
    raw_alignment_scores,
)
from acodm.dynamics.features import Dynamics, LayerStats, LossTracker
from acodm.dynamics.layers import distinct_layers, monitored_layers
from acodm.dynamics.probe import DynamicsProbe, sequence_losses, window_losses
from acodm.dynamics.standardize import zscore

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
