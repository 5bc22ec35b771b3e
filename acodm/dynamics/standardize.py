"""The one z-score of acodm: observation groups, alignment scores and the agents' feedback.

METHOD.md z-scores in three places: each per-domain / per-layer group of the observation
(:func:`acodm.spaces.build_observation`), the gradient-alignment scores across the active
domains (:func:`acodm.dynamics.alignment.alignment_scores`) and the agents' per-group feedback
and correlations (:mod:`acodm.agents.console`). All three call :func:`zscore`; they differ
only in the arguments they pass (a clip, which entries count, how small a spread is "none").
"""

from __future__ import annotations

import numpy as np

__all__ = ["zscore"]


def zscore(
    x: np.ndarray,
    *,
    clip: float | None = None,
    valid: np.ndarray | None = None,
    atol: float = 1e-12,
    rtol: float = 1e-12,
) -> np.ndarray:
    """``(x - mean) / std`` across the entries of ``x`` (population std), float64, same shape.

    - Only entries that are finite (and ``True`` in ``valid``, when given) enter the mean
      and the std; the others get 0.
    - Fewer than 2 such entries, or a spread ``std <= max(atol, rtol * max|x|)``, give all
      zeros: a constant group carries no information, and float noise in it must not be blown
      up to +-1 (the relative part makes that independent of the scale of ``x``).
    - ``clip``: the result is clipped to ``[-clip, clip]`` (METHOD.md clips at 3).
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    ok = np.isfinite(x) if valid is None else np.isfinite(x) & np.asarray(valid, dtype=bool)
    if ok.sum() < 2:
        return out
    v = x[ok]
    mu, sd = v.mean(), v.std()
    if not sd > max(atol, rtol * float(np.abs(v).max())):
        return out
    z = (v - mu) / sd
    out[ok] = z if clip is None else np.clip(z, -clip, clip)
    return out
