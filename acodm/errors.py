"""Error types. Every error acodm raises for bad input says what is wrong and how to fix it."""

from __future__ import annotations


class AcodmError(Exception):
    """Base class of acodm's user-facing errors (the CLI prints them without a traceback)."""


class CorpusError(AcodmError):
    """A corpus is missing, malformed, or cannot be built."""


class StoreError(AcodmError):
    """A tokenized store is missing, truncated, or does not match its manifest."""


class SamplerError(AcodmError):
    """Invalid sampler configuration, weights, or state."""


class AnnotationError(AcodmError):
    """Annotations are missing, stale (the store changed), corrupt, or cannot be built."""


class ModelError(AcodmError):
    """A model preset, shape, config path, or layer selection is invalid."""


class MixerError(AcodmError):
    """Invalid mixer spec, weights, context, feedback or state."""


class WeightsError(MixerError, SamplerError):
    """A vector of domain weights is not a mixture (wrong length, negative, NaN, all zero).

    Raised by the one check of :func:`acodm.data.weights.normalize_weights`, wherever weights
    enter (a mixer's output, the sampler); a :class:`MixerError` and a :class:`SamplerError`,
    so code that catches either keeps working.
    """
