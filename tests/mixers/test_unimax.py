"""UniMax on hand-computed examples: water-filling with caps, and the all-capped fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from acodm.mixers import MixerError, UniMaxMixer, make_mixer
from tests.mixers.util import make_ctx


def unimax(tokens, budget: int, n: float = 4, domains=None) -> np.ndarray:
    mixer = make_mixer(f"unimax:{n}")
    # budget = total_steps * tokens_per_step
    mixer.setup(make_ctx(tokens, domains, total_steps=budget // 100, tokens_per_step=100))
    return mixer.weights()


def test_hand_example_two_domains_capped():
    # tokens 10, 100, 1000, 10000; budget 4000; N = 4 -> caps 40, 400, 4000, 40000.
    #   d0: share 4000/4 = 1000 > cap 40      -> 40,   remaining 3960
    #   d1: share 3960/3 = 1320 > cap 400     -> 400,  remaining 3560
    #   d2: share 3560/2 = 1780 < cap 4000    -> 1780, remaining 1780
    #   d3: share 1780/1 = 1780 < cap 40000   -> 1780
    # weights = allocation / 4000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = unimax((10, 100, 1000, 10000), 4000)
    np.testing.assert_allclose(w, [0.01, 0.1, 0.445, 0.445])


def test_result_follows_domains_not_positions():
    # the same corpus in another store order: each domain keeps its weight
    w = unimax((10000, 10, 1000, 100), 4000, domains=("d3", "d0", "d2", "d1"))
    np.testing.assert_allclose(w, [0.445, 0.01, 0.445, 0.1])


def test_smaller_budget_caps_only_the_tiny_domain():
    # budget 400: d0: 400/4 = 100 > cap 40 -> 40, remaining 360;
    # d1..d3: 360/3 = 120 each, under caps 400, 4000, 40000
    np.testing.assert_allclose(unimax((10, 100, 1000, 10000), 400), [0.1, 0.3, 0.3, 0.3])


def test_no_domain_capped_is_uniform():
    # budget 300, share 100; caps 400, 400, 4000
    np.testing.assert_allclose(unimax((100, 100, 1000), 300), [1 / 3, 1 / 3, 1 / 3])


def test_exactly_filling_every_cap_needs_no_fallback():
    # caps 40 + 400 + 800 + 1200 = 2440 = budget; weights = caps / budget, no warning
    mixer = make_mixer("unimax:4")
    mixer.setup(make_ctx((10, 100, 200, 300), total_steps=244, tokens_per_step=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = mixer.weights()
    np.testing.assert_allclose(w, [40 / 2440, 400 / 2440, 800 / 2440, 1200 / 2440])


def test_all_capped_warns_and_falls_back_to_capped_proportional():
    # tokens 10, 100, 200, 300 (610); N = 4 -> caps 40, 400, 800, 1200 (2440) < budget 4000.
    # Every domain is capped; weights proportional to the caps = 10/610, 100/610, ...
    with pytest.warns(UserWarning, match="every domain is capped"):
        w = unimax((10, 100, 200, 300), 4000)
    np.testing.assert_allclose(w, np.array([10, 100, 200, 300]) / 610)


def test_fractional_cap():
    # N = 0.5: caps 5, 50, 500; budget 300 -> d0 5 (rem 295), d1 50 (rem 245), d2 245
    np.testing.assert_allclose(unimax((10, 100, 1000), 300, n=0.5), [5 / 300, 50 / 300, 245 / 300])


@pytest.mark.parametrize("n", [0, -1, float("nan")])
def test_cap_must_be_positive(n):
    with pytest.raises(MixerError, match="epoch cap N"):
        UniMaxMixer(n)
