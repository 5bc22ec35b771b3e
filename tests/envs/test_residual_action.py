"""The residual action around a prior, within the epoch caps (issue 11; METHOD.md, "Action
around a prior, with caps"), and the observation groups that carry repetition."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from acodm.data.weights import project_capped
from acodm.dynamics.features import Dynamics
from acodm.envs.spaces import (
    DEFAULT_FEATURES,
    DEFAULT_RESIDUAL_BETA,
    FEATURES,
    LOG_EPOCHS_MAX,
    REPETITION_FEATURES,
    V1_FEATURES,
    ActionMapping,
    ObservationSpec,
    SpaceError,
    action_to_weights,
    build_observation,
    prior_weights,
    residual_action,
    residual_weights,
    resolve_prior,
    run_caps,
)
from acodm.mixers.unimax import UniMaxMixer
from tests.mixers.util import make_ctx

PRIOR = np.array([0.1, 0.2, 0.3, 0.4])


def test_zero_action_is_the_prior_bit_for_bit():
    np.testing.assert_array_equal(residual_weights(np.zeros(4), PRIOR), PRIOR)
    caps = np.array([0.05, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(
        residual_weights(np.zeros(4), PRIOR, caps=caps), project_capped(PRIOR, caps)
    )
    assert residual_weights(np.zeros(4), PRIOR, caps=caps)[0] == 0.05


def test_residual_weights_are_a_multiplicative_change_of_the_prior():
    a = np.array([1.0, -1.0, 0.5, 0.0])
    w = residual_weights(a, PRIOR, beta=2.0)
    want = PRIOR * np.exp(2.0 * a)
    np.testing.assert_allclose(w, want / want.sum(), rtol=1e-14)
    assert abs(w.sum() - 1.0) < 1e-15
    # at the default beta a domain's share moves by at most 4x (before renormalising)
    w = residual_weights(np.array([1.0, -1.0, -1.0, -1.0]), PRIOR)
    assert w[0] / w[1] == pytest.approx(16 * PRIOR[0] / PRIOR[1])
    assert math.exp(DEFAULT_RESIDUAL_BETA) == pytest.approx(4.0)
    # a zero prior share stays zero; permuting everything permutes the weights
    assert residual_weights(a, [0.0, 0.5, 0.5, 0.0])[0] == 0.0
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(
        residual_weights(a[perm], PRIOR[perm]), residual_weights(a, PRIOR)[perm]
    )


def test_capped_residual_weights_respect_the_caps():
    rng = np.random.default_rng(0)
    caps = np.array([0.15, 0.3, 1.0, 0.2])
    for _ in range(100):
        w = residual_weights(rng.uniform(-1, 1, 4), PRIOR, caps=caps)
        assert np.all(w <= caps) and abs(w.sum() - 1.0) < 1e-12


def test_the_inverse_round_trips_inside_the_range_and_clips_beyond():
    rng = np.random.default_rng(1)
    for _ in range(100):
        a = rng.uniform(-1, 1, 4)
        w = residual_weights(a, PRIOR)
        back = residual_action(w, PRIOR)
        assert back.dtype == np.float32 and np.all(np.abs(back) <= 1.0)
        np.testing.assert_allclose(residual_weights(back, PRIOR), w, rtol=1e-6)
    batch = np.stack([residual_weights(rng.uniform(-1, 1, 4), PRIOR) for _ in range(3)])
    assert residual_action(batch, PRIOR).shape == (3, 4)
    # beyond a ratio of exp(2 beta) = 16 to the prior: lossy, clipped to the nearest reachable
    far = np.array([0.97, 0.01, 0.01, 0.01])
    a = residual_action(far, PRIOR)
    assert a[0] == 1.0 and np.all(a[1:] <= -0.5)
    assert residual_weights(a, PRIOR)[0] < far[0]
    np.testing.assert_array_equal(residual_action(PRIOR, PRIOR), np.zeros(4, np.float32))


def test_the_auto_prior_is_unimax_at_the_cap_and_uniform_when_nothing_repeats():
    assert resolve_prior(None) == resolve_prior("auto") == "unimax:4"
    assert resolve_prior("auto", 2.5) == "unimax:2.5"
    assert resolve_prior(" uniform ") == "uniform" and resolve_prior("temperature:0.5")
    for bad in ("file:weights.json", "odm", "nonsense"):
        with pytest.raises(SpaceError):
            resolve_prior(bad)
    # a budget under N epochs of every domain: UniMax, so the prior, is uniform
    roomy = make_ctx(tokens=(100, 300, 600), total_steps=10, tokens_per_step=10)
    np.testing.assert_allclose(prior_weights("auto", roomy), np.full(3, 1 / 3))
    # small domains would repeat: the prior is UniMax's allocation, within the caps at step 0
    tight = make_ctx(tokens=(100, 300, 600), total_steps=300, tokens_per_step=10)
    w = prior_weights("auto", tight)
    want = UniMaxMixer(4.0)
    want.setup(tight)
    np.testing.assert_array_equal(w, want.weights())
    np.testing.assert_allclose(w, [400 / 3000, 1200 / 3000, 1400 / 3000])
    assert np.all(w <= run_caps(tight, np.zeros(3), 0, 4.0))


def test_action_mapping_round_trips_and_reads_the_v2_mapping():
    for m in (
        ActionMapping.make(),
        ActionMapping.make("softmax", beta=2.0, eps=0.1, max_epochs=3),
        ActionMapping.make("residual"),
        ActionMapping.make("residual", beta=1.0, prior="uniform", max_epochs=4),
    ):
        d = json.loads(json.dumps(m.to_dict()))
        assert ActionMapping.from_dict(d) == m
    r = ActionMapping.make("residual", max_epochs=2)
    assert r.prior == "unimax:2" and r.eps == 0.0 and r.to_dict()["projection"] == "kl"
    legacy = {"formula": "w = (1 - eps) * softmax(beta * a) + eps / k", "beta": 2.0, "eps": 0.1}
    assert ActionMapping.from_dict(legacy, legacy=True) == ActionMapping("softmax", 2.0, 0.1)
    with pytest.raises(SpaceError, match="kind"):
        ActionMapping.from_dict(legacy)
    with pytest.raises(SpaceError, match="eps"):
        ActionMapping.make("residual", eps=0.1)
    with pytest.raises(SpaceError, match="residual"):
        ActionMapping.make("softmax", prior="uniform")
    with pytest.raises(SpaceError, match="kind"):
        ActionMapping.make("linear")
    with pytest.raises(SpaceError, match="max_epochs"):
        ActionMapping.make("residual", max_epochs=0)


def test_action_mapping_weights_and_inverse():
    ctx = make_ctx(tokens=(100, 300, 600), total_steps=100, tokens_per_step=10)
    soft = ActionMapping.make()
    a = np.array([0.3, -0.2, 0.9])
    np.testing.assert_array_equal(soft.weights(a), action_to_weights(a))
    np.testing.assert_array_equal(soft.initial_weights(ctx), np.full(3, 1 / 3))
    res = ActionMapping.make("residual", max_epochs=4)
    prior = res.prior_weights(ctx)
    np.testing.assert_array_equal(res.initial_weights(ctx), prior)  # within the caps at step 0
    # mid-run, the small domain has used its 4 epochs: the prior is projected away from it
    caps = res.caps(ctx, np.array([4.0, 1.0, 0.5]), 50)
    assert caps is not None and caps[0] == 0.0
    w = res.weights(np.zeros(3), prior, caps)
    assert w[0] == 0.0 and w[1] / w[2] == pytest.approx(prior[1] / prior[2])
    # a zero share is beyond the action's range, but the caps put it back
    np.testing.assert_allclose(res.weights(res.action(w, prior), prior, caps), w, atol=1e-7)
    with pytest.raises(SpaceError, match="prior"):
        res.weights(a)


def dynamics(epochs: np.ndarray) -> Dynamics:
    k = epochs.size
    z = np.zeros(k)
    return Dynamics(
        step=4, progress=0.5, loss=z + 1.0, loss_change=z, share=z + 1 / k, epochs=epochs,
        alignment=z, gram=np.eye(k), weight_norm=np.ones(2), weight_distance=np.zeros(2),
    )  # fmt: skip


def test_repetition_features_keep_absolute_levels():
    spec = ObservationSpec(("epochs", "log_epochs", "cap_left"), 3, 2, max_epochs=4.0)
    low, high = spec.bounds()
    np.testing.assert_array_equal(low, [-3] * 3 + [0] * 6)
    np.testing.assert_allclose(high, [3] * 3 + [LOG_EPOCHS_MAX] * 3 + [1] * 3, rtol=1e-6)
    one = build_observation(dynamics(np.array([1.0, 2.0, 3.0])), spec)
    ten = build_observation(dynamics(np.array([10.0, 20.0, 30.0])), spec)
    # the z-scored group cannot tell ten times the epochs apart; the raw ones can
    np.testing.assert_allclose(one[:3], ten[:3], atol=1e-6)
    np.testing.assert_allclose(one[3:6], np.log1p([1.0, 2.0, 3.0]), rtol=1e-6)
    np.testing.assert_allclose(one[6:], [0.75, 0.5, 0.25])
    np.testing.assert_allclose(ten[6:], [0.0, 0.0, 0.0])
    huge = build_observation(dynamics(np.array([1e6, 0.0, 0.0])), spec)
    assert huge[3] == pytest.approx(LOG_EPOCHS_MAX)
    assert np.all(huge >= low) and np.all(huge <= high)


def test_the_cap_is_part_of_the_observation_spec():
    spec = ObservationSpec(V1_FEATURES, 3, 2, max_epochs=4)
    d = spec.to_dict()
    assert d["max_epochs"] == 4.0 and "log_epochs, cap_left raw" in d["normalisation"]
    assert ObservationSpec.from_dict(json.loads(json.dumps(d))) == spec
    with pytest.raises(SpaceError, match="max_epochs"):
        ObservationSpec(("cap_left",), 3, 2)
    # the default observation (the golden trace's) has neither group and no new key
    assert not set(REPETITION_FEATURES) & set(DEFAULT_FEATURES)
    assert "max_epochs" not in ObservationSpec(DEFAULT_FEATURES, 3, 2).to_dict()
    assert ObservationSpec(DEFAULT_FEATURES, 3, 2).to_dict()["normalisation"] == (
        "per-group z-score (population std), clipped; scalars raw"
    )
    assert [f for f in V1_FEATURES if f not in DEFAULT_FEATURES] == list(REPETITION_FEATURES)
    assert all(FEATURES[f].raw for f in REPETITION_FEATURES)
