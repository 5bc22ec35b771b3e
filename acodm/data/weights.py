"""Domain weights: the one check that a vector is a mixture, wherever weights enter acodm.

A mixer's output (:meth:`acodm.mixers.base.Mixer.weights`), a weight file and the sampler
(:meth:`acodm.data.sampler.DomainSampler.set_weights`, which every training loop feeds) all
validate with :func:`normalize_weights`; one rule, one error type (:class:`WeightsError`).

The capped simplex lives here too, because every mixer may be held to it
(``TrainConfig.max_epochs``): :func:`epoch_caps` (how much of the remaining budget each
domain may take without going beyond ``max_epochs`` epochs), :func:`feasible_caps` (the same,
raised the way UniMax does when no mixture fits) and :func:`project_capped` (the KL projection
of a mixture onto the caps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from acodm.errors import WeightsError

__all__ = [
    "WeightsError",
    "epoch_caps",
    "feasible_caps",
    "normalize_weights",
    "project_capped",
]


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


# ---------------------------------------------------------------------------------------
# The capped simplex: no domain beyond ``max_epochs`` epochs of its training tokens
# ---------------------------------------------------------------------------------------

#: How far below 1 the caps may sum before they are called infeasible (float rounding).
CAP_SUM_TOLERANCE = 1e-9


def epoch_caps(
    epochs: Sequence[float] | np.ndarray,
    domain_tokens: Sequence[float] | np.ndarray,
    remaining_tokens: float,
    max_epochs: float,
) -> np.ndarray:
    """Per-domain caps on the weights, float64 ``(k,)`` in [0, 1].

    ``cap_i = max(0, max_epochs - epochs_i) * tokens_i / remaining_tokens``, clipped to
    [0, 1]: the share of the run's remaining token budget that domain ``i`` may take without
    going beyond ``max_epochs`` epochs of its ``tokens_i`` training tokens, given the
    ``epochs_i`` it has used so far. With nothing left to train (``remaining_tokens <= 0``)
    no weight can cause a repetition, so every cap is 1.
    """
    e = np.asarray(epochs, dtype=np.float64)
    n = np.asarray(domain_tokens, dtype=np.float64)
    _check_cap_inputs(e, n, max_epochs)
    if not remaining_tokens > 0:
        return np.ones_like(n)
    left = np.maximum(float(max_epochs) - e, 0.0)
    return np.clip(left * n / float(remaining_tokens), 0.0, 1.0)


def feasible_caps(
    epochs: Sequence[float] | np.ndarray,
    domain_tokens: Sequence[float] | np.ndarray,
    remaining_tokens: float,
    max_epochs: float,
) -> tuple[np.ndarray, float]:
    """:func:`epoch_caps`, raised to the smallest feasible epoch cap when they sum to < 1.

    Returns ``(caps, cap_used)``. When the remaining budget is larger than what every
    domain has left under ``max_epochs`` (``sum(caps) < 1``), no mixture respects the cap.
    UniMax (:mod:`acodm.mixers.unimax`) then warns and uses weights proportional to its caps
    (natural weights, every domain repeated ``budget / data`` times); the live version of
    that rule is to raise the cap, for every domain alike, to the smallest ``cap_used >
    max_epochs`` whose caps sum to 1: the least repeated domains are filled up first, and at
    the start of a run (no epochs used) this is exactly UniMax's natural fallback. The caller
    says so (the trainer warns once).
    """
    e = np.asarray(epochs, dtype=np.float64)
    n = np.asarray(domain_tokens, dtype=np.float64)
    caps = epoch_caps(e, n, remaining_tokens, max_epochs)
    if caps.sum() >= 1.0 - CAP_SUM_TOLERANCE:
        return caps, float(max_epochs)
    # Solve sum_i max(0, M - e_i) n_i = R for M (piecewise linear, increasing): fill the
    # domains in the order of their epochs until the level M lies below the next one's.
    order = np.argsort(e, kind="stable")
    remaining = float(remaining_tokens)
    level = float(max_epochs)
    filled_tokens = filled_epoch_tokens = 0.0
    for j, i in enumerate(order.tolist()):
        filled_tokens += n[i]
        filled_epoch_tokens += e[i] * n[i]
        level = (remaining + filled_epoch_tokens) / filled_tokens
        if j + 1 == len(order) or level <= e[order[j + 1]]:
            break
    level = max(level, float(max_epochs))
    caps = epoch_caps(e, n, remaining, level)
    return caps / max(caps.sum(), 1e-300), level  # sum exactly 1: the one feasible point


def project_capped(
    weights: Sequence[float] | np.ndarray, caps: Sequence[float] | np.ndarray
) -> np.ndarray:
    """The KL (multiplicative) projection of a mixture onto ``{w >= 0, sum w = 1, w <= caps}``.

    ``argmin_x KL(x || w)`` over the capped simplex is ``x_i = min(caps_i, c * w_i)`` with the
    one ``c >= 1`` that makes ``x`` sum to 1: water-filling. Clip the domains above their cap
    at the cap, scale the others up proportionally, repeat (at most ``k`` rounds; a domain
    once capped stays capped). Multiplicative rather than Euclidean because the residual
    action is multiplicative (``w_prior * exp(beta * a)``): the projection keeps the ratios
    between the uncapped domains, and a zero weight stays zero. If the uncapped domains hold
    no weight at all, the rest of the budget goes to them in proportion to their caps.

    An already feasible ``w`` (every ``w_i <= caps_i``) is returned unchanged, bit for bit,
    so projecting twice is projecting once, and a mixer that respects the caps is not
    touched. Permuting ``w`` and ``caps`` alike permutes the result. The caps must sum to at
    least 1 (:func:`feasible_caps` guarantees it), else a :class:`WeightsError`.
    """
    w = normalize_weights(weights, what="weights to project")
    raw = np.asarray(weights, dtype=np.float64)
    if abs(raw.sum() - 1.0) <= 1e-12:  # already a mixture: keep its exact bits
        w = raw.copy()
    c = np.asarray(caps, dtype=np.float64)
    if c.shape != w.shape or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise WeightsError(
            f"caps must be finite, >= 0 and of the weights' shape {w.shape}, got {c.tolist()}"
        )
    if c.sum() < 1.0 - CAP_SUM_TOLERANCE:
        raise WeightsError(
            f"the caps sum to {c.sum():.6g} < 1, so no mixture respects them; raise the cap "
            "(acodm.data.weights.feasible_caps does it the way UniMax does)"
        )
    if np.all(w <= c):
        return w
    x = np.zeros_like(w)
    free = np.ones(w.shape, dtype=bool)
    while True:
        budget = 1.0 - c[~free].sum()
        mass = w[free].sum()
        if mass <= 0.0:  # the uncapped domains hold nothing: fill them by their headroom
            x[free] = c[free] * (budget / max(c[free].sum(), 1e-300))
            break
        x[free] = w[free] * (budget / mass)
        over = free & (x > c)
        if not over.any():
            break
        free &= ~over
    x[~free] = c[~free]
    return _unit_sum(x, c)


def _unit_sum(x: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """``x`` with its float sum exactly 1.0 where a few ulps on an entry below its cap do it.

    Then :func:`normalize_weights` (which every mixer's weights and the sampler go through)
    leaves the projection's result bit for bit as it is, so a mixer that projects onto the
    caps itself and the trainer's projection of the same mixture agree exactly.
    """
    for _ in range(4):
        err = 1.0 - x.sum()
        if err == 0.0:
            break
        room = np.where(x + err <= caps, x, -np.inf)
        j = int(np.argmax(room))
        if not np.isfinite(room[j]) or x[j] + err < 0.0:
            break
        x[j] += err
    return x


def _check_cap_inputs(epochs: np.ndarray, tokens: np.ndarray, max_epochs: float) -> None:
    if epochs.ndim != 1 or epochs.shape != tokens.shape:
        raise WeightsError(
            f"epochs {epochs.shape} and domain tokens {tokens.shape} must be vectors of one "
            "length (one value per domain)"
        )
    if not (np.all(np.isfinite(epochs)) and np.all(np.isfinite(tokens)) and np.all(tokens > 0)):
        raise WeightsError("epochs must be finite and every domain must have > 0 tokens")
    if isinstance(max_epochs, bool) or not (np.isfinite(max_epochs) and max_epochs > 0):
        raise WeightsError(f"max_epochs must be a finite number > 0, got {max_epochs!r}")
