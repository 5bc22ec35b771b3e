"""Domain weights: the one check that a vector is a mixture, wherever weights enter acodm.

A mixer's output (:meth:`acodm.mixers.base.Mixer.weights`), a weight file and the sampler
(:meth:`acodm.data.sampler.DomainSampler.set_weights`, which every training loop feeds) all
validate with :func:`normalize_weights`; one rule, one error type (:class:`WeightsError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from acodm.errors import WeightsError

__all__ = ["WeightsError", "normalize_weights"]


def normalize_weights(
    weights: Sequence[float] | np.ndarray | Mapping[str, float],
    k: int | None = None,
    what: str = "weights",
    *,
    domains: Sequence[str] | None = None,
) -> np.ndarray:
    """Validate a weight vector and return it as float64 summing to 1 (a new array).

    The weights must be 1-D, finite, non-negative and not all zero; with ``k`` (or
    ``domains``) their length must be ``k``. A mapping ``{domain: weight}`` needs ``domains``
    and must name each of them (give 0 to skip one). ``what`` names the vector in the error.
    """
    if domains is not None:
        k = len(domains)
    if isinstance(weights, Mapping):
        weights = _by_name(weights, domains, what)
    w = np.array(weights, dtype=np.float64)
    if w.ndim != 1 or (k is not None and w.size != k):
        want = f"({k},), one per domain ({k} domains{_names(domains)})" if k is not None else "1-D"
        raise WeightsError(f"{what} must have shape {want}, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise WeightsError(f"{what} must be finite, non-negative, not all zero: {w.tolist()}")
    return w / w.sum()


def _names(domains: Sequence[str] | None) -> str:
    return f" {list(domains)}" if domains is not None else ""


def _by_name(weights: Mapping[str, float], domains: Sequence[str] | None, what: str) -> list[float]:
    if domains is None:
        raise WeightsError(f"{what} given by domain name need the domain names to order them")
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise WeightsError(f"{what}: unknown domains {unknown}; the store has {list(domains)}")
    missing = [d for d in domains if d not in weights]
    if missing:
        raise WeightsError(f"{what} for domains {missing} are missing (give 0 to skip)")
    return [float(weights[d]) for d in domains]
