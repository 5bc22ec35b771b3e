"""The capped simplex (issue 11): no domain beyond ``max_epochs`` epochs of its tokens.

``epoch_caps`` turns a run's live epochs and remaining budget into per-domain caps,
``feasible_caps`` raises them the way UniMax does when nothing fits, and ``project_capped``
is the KL projection of a mixture onto them.
"""

from __future__ import annotations

import numpy as np
import pytest

from acodm.data.weights import epoch_caps, feasible_caps, project_capped
from acodm.errors import WeightsError
from acodm.mixers.unimax import unimax_allocation


def random_case(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A random mixture and random caps summing to more than 1."""
    w = rng.dirichlet(np.full(k, 0.5))
    caps = rng.uniform(0.0, 1.0, k)
    if caps.sum() < 1.0:
        caps = np.minimum(caps / caps.sum() * 1.05, 1.0)
    return w, caps


def test_caps_are_the_share_of_the_remaining_budget_left_under_the_epoch_cap():
    tokens = np.array([100.0, 1000.0, 10_000.0])
    caps = epoch_caps([1.0, 3.5, 0.0], tokens, remaining_tokens=2000.0, max_epochs=4.0)
    # 3 epochs of 100 tokens, 0.5 of 1000, 4 of 10_000 (clipped at 1)
    np.testing.assert_allclose(caps, [300 / 2000, 500 / 2000, 1.0])
    # a domain beyond the cap may take nothing; nothing left to train: no constraint
    assert epoch_caps([5.0, 0.0, 0.0], tokens, 2000.0, 4.0)[0] == 0.0
    np.testing.assert_array_equal(epoch_caps([9.0, 9.0, 9.0], tokens, 0.0, 4.0), np.ones(3))


def test_projection_sums_to_one_respects_caps_and_is_idempotent():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 9))
        w, caps = random_case(rng, k)
        if caps.sum() < 1.0:
            caps = np.ones(k)
        x = project_capped(w, caps)
        assert abs(x.sum() - 1.0) < 1e-12
        assert np.all(x >= 0) and np.all(x <= caps + 1e-15)
        np.testing.assert_array_equal(project_capped(x, caps), x)  # bit for bit


def test_projection_is_the_kl_projection():
    """x_i = min(cap_i, c w_i): the uncapped domains keep their ratios, the capped sit at
    their cap, and no feasible point is closer in KL."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        w, caps = random_case(rng, 5)
        x = project_capped(w, caps)
        free = x < caps - 1e-12
        if free.sum() >= 2:
            ratio = x[free] / w[free]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
        assert np.all(x[~free] <= caps[~free] + 1e-15)
        kl = float(np.sum(x * np.log(np.maximum(x, 1e-300) / w)))
        for _ in range(20):  # random feasible points are no closer
            y = project_capped(rng.dirichlet(np.ones(5)), caps)
            assert kl <= float(np.sum(y * np.log(np.maximum(y, 1e-300) / w))) + 1e-9


def test_an_already_feasible_mixture_is_returned_unchanged():
    w = np.array([0.1, 0.2, 0.3, 0.4])
    out = project_capped(w, [0.1, 0.5, 0.3, 1.0])  # two domains exactly at their cap
    np.testing.assert_array_equal(out, w)
    assert out is not w  # a new array, as normalize_weights gives


def test_projection_is_order_equivariant():
    rng = np.random.default_rng(2)
    for _ in range(50):
        w, caps = random_case(rng, 6)
        perm = rng.permutation(6)
        np.testing.assert_allclose(
            project_capped(w[perm], caps[perm]), project_capped(w, caps)[perm], atol=1e-15
        )


def test_edge_cases():
    # one domain: its weight is 1 whatever the cap, once the cap is feasible
    np.testing.assert_array_equal(project_capped([1.0], [1.0]), [1.0])
    # caps summing exactly to 1: the one feasible point
    np.testing.assert_allclose(project_capped([0.9, 0.1, 0.0], [0.2, 0.3, 0.5]), [0.2, 0.3, 0.5])
    # the uncapped domains hold no weight: they take the rest by their headroom
    np.testing.assert_allclose(project_capped([1.0, 0.0, 0.0], [0.4, 0.2, 0.6]), [0.4, 0.15, 0.45])
    # a zero weight stays zero when the others can take the rest
    assert project_capped([0.8, 0.2, 0.0], [0.5, 1.0, 1.0])[2] == 0.0
    with pytest.raises(WeightsError, match="sum to"):
        project_capped([0.5, 0.5], [0.3, 0.3])
    with pytest.raises(WeightsError, match="non-negative"):
        project_capped([0.5, -0.5], [1.0, 1.0])


def test_every_domain_exhausted_raises_the_cap_as_unimax_does():
    tokens = np.array([100.0, 300.0, 600.0])
    # at the start of a run, a budget beyond 4 epochs of all the data: UniMax's natural fallback
    caps, used = feasible_caps(np.zeros(3), tokens, remaining_tokens=8000.0, max_epochs=4.0)
    assert used == pytest.approx(8.0)
    np.testing.assert_allclose(caps, tokens / tokens.sum())
    alloc = unimax_allocation(tokens, 8000.0, 4.0)
    with pytest.warns(UserWarning):  # UniMax warns and uses weights proportional to its caps
        from acodm.mixers.base import MixerContext
        from acodm.mixers.unimax import UniMaxMixer

        m = UniMaxMixer(4.0)
        m.setup(MixerContext(("a", "b", "c"), tokens, total_steps=80, tokens_per_step=100))
    np.testing.assert_allclose(m.weights(), alloc / alloc.sum())
    np.testing.assert_allclose(caps, m.weights())
    # mid-run: the least repeated domains are filled up first, to one common level
    caps, used = feasible_caps([4.0, 2.0, 3.5], tokens, remaining_tokens=1000.0, max_epochs=4.0)
    assert used > 4.0 and caps.sum() == pytest.approx(1.0)
    epochs_after = np.array([4.0, 2.0, 3.5]) + caps * 1000.0 / tokens
    np.testing.assert_allclose(epochs_after[epochs_after > 4.0 + 1e-9], used)
    # feasible caps are left alone
    caps, used = feasible_caps([0.0, 0.0, 0.0], tokens, 1000.0, 4.0)
    assert used == 4.0 and caps.sum() > 1.0


def test_zero_remaining_budget_at_the_end_lets_any_mixture_through():
    caps, used = feasible_caps([7.0, 7.0], [10.0, 20.0], remaining_tokens=0.0, max_epochs=4.0)
    assert used == 4.0
    np.testing.assert_array_equal(project_capped([0.3, 0.7], caps), [0.3, 0.7])


def test_bad_cap_inputs_are_errors_that_name_the_problem():
    with pytest.raises(WeightsError, match="max_epochs"):
        epoch_caps([0.0], [1.0], 10.0, 0.0)
    with pytest.raises(WeightsError, match="one length"):
        epoch_caps([0.0, 1.0], [1.0], 10.0, 4.0)
    with pytest.raises(WeightsError, match="tokens"):
        epoch_caps([0.0], [0.0], 10.0, 4.0)
