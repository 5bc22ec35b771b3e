"""The one z-score (acodm.dynamics.standardize.zscore) reproduces the three it replaced."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from acodm.agents import console
from acodm.dynamics import alignment
from acodm.dynamics.standardize import zscore
from acodm.envs import spaces


# -- the three implementations as they were (acodm before the refactor), for reference -------
def old_console(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return np.zeros_like(x)
    std = float(x.std())
    if not np.isfinite(std) or std < 1e-12:
        return np.zeros_like(x)
    return (x - x.mean()) / std


def old_observation(x: np.ndarray, clip: float = 3.0) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return out
    v = x[ok]
    mu, sd = v.mean(), v.std()
    if sd <= 1e-12 * max(1.0, float(np.abs(v).max())):
        return out
    out[ok] = np.clip((v - mu) / sd, -clip, clip)
    return out


def old_alignment(s: np.ndarray, active: np.ndarray) -> np.ndarray:
    z = np.zeros_like(s)
    if active.sum() < 2:
        return z
    sa = s[active]
    std = sa.std()
    if not std > 1e-12 * max(1e-300, float(np.abs(sa).max())):
        return z
    z[active] = np.clip((sa - sa.mean()) / std, -3.0, 3.0)
    return z


def vectors() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [rng.normal(size=n) * scale for n in (2, 3, 7, 40) for scale in (1e-9, 1.0, 1e6)]
    out += [rng.standard_t(1, size=30)]  # heavy tails: the clip acts
    out += [np.full(5, 4.2), np.array([1e6, 1e6 + 1e-9, 1e6]), np.array([7.0]), np.zeros(0)]
    out += [np.array([1.0, 1.0 + 1e-13]), np.array([1e-310, 3e-310, 2e-310])]
    return out


@pytest.mark.parametrize("x", vectors())
def test_the_observation_and_the_console_get_their_old_numbers(x):
    np.testing.assert_array_equal(spaces.zscore_clip(x), old_observation(x))
    np.testing.assert_array_equal(console.zscore(x), old_console(x))


@pytest.mark.parametrize("k", [2, 3, 5, 12])
@pytest.mark.parametrize("scale", [1e-150, 1e-3, 1.0, 1e8])
def test_the_alignment_scores_get_their_old_numbers(k, scale):
    rng = np.random.default_rng(k)
    for _ in range(5):
        a = rng.normal(size=(k, 4)) * scale
        gram = a @ a.T
        counts = rng.integers(0, 3, size=k).astype(float)
        want = old_alignment(alignment.raw_alignment_scores(gram, counts), counts > 0)
        np.testing.assert_array_equal(alignment.alignment_scores(gram, counts), want)


def test_alignment_scores_call_the_one_zscore(monkeypatch):
    calls = []
    # alignment_scores lives in the numpy-only acodm.dynamics.interval (alignment re-exports it)
    home = importlib.import_module(alignment.alignment_scores.__module__)
    assert home.__name__ == "acodm.dynamics.interval"
    real = home.zscore
    monkeypatch.setattr(home, "zscore", lambda *a, **k: calls.append(k) or real(*a, **k))
    g = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
    alignment.alignment_scores(g, np.ones(3))
    assert calls and calls[0]["clip"] == alignment.SCORE_CLIP


def test_non_finite_and_invalid_entries_are_left_out():
    z = zscore(np.array([1.0, np.nan, 3.0, 100.0]), valid=np.array([True, True, True, False]))
    np.testing.assert_array_equal(z, [-1.0, 0.0, 1.0, 0.0])
