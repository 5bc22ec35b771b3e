"""The action <-> weights mapping (METHOD.md, Action) and the analytic test env."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from acodm.policies.analytic import TargetMixtureEnv
from acodm.policies.export import PolicyError, action_to_weights, weights_to_action


@pytest.mark.parametrize(("beta", "eps"), [(1.0, 0.0), (2.0, 0.1), (5.0, 0.15)])
def test_weights_to_action_round_trip(beta, eps):
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, size=(100, 4))
    w = np.stack([action_to_weights(row, beta, eps) for row in a])  # the env's mapping
    back = weights_to_action(w, beta, eps)
    assert back.dtype == np.float32 and np.all(np.abs(back) <= 1.0)
    # same weights; the action itself is recovered up to softmax's free constant
    again = np.stack([action_to_weights(row, beta, eps) for row in back])
    np.testing.assert_allclose(again, w, atol=1e-6)
    shift = (a - back).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(a - shift, back, atol=1e-5)


def test_weights_to_action_clips_unreachable_weights():
    w = np.array([0.97, 0.01, 0.01, 0.01])  # max/min ratio far beyond exp(2 beta)
    a = weights_to_action(w, beta=1.0, eps=0.0)
    np.testing.assert_allclose(a, [1.0, -1.0, -1.0, -1.0])


def test_inverse_mapping_rejects_bad_parameters():
    with pytest.raises(PolicyError, match="beta"):
        weights_to_action(np.full(3, 1 / 3), beta=0.0, eps=0.1)
    with pytest.raises(PolicyError, match="eps"):
        weights_to_action(np.full(3, 1 / 3), beta=1.0, eps=1.0)


def test_analytic_env_passes_check_env_and_peaks_at_target():
    env = TargetMixtureEnv(noise=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    env.reset(seed=0)
    best = weights_to_action(env.target, env.beta, env.eps)
    _, r_best, *_ = env.step(best)
    _, r_zero, *_ = env.step(np.zeros(env.k, np.float32))
    assert r_best == pytest.approx(0.0, abs=1e-9) and r_zero < -1.0


def test_analytic_env_episode_and_seeding():
    env = TargetMixtureEnv(episode_length=3, noise=0.5)
    o1, _ = env.reset(seed=7)
    o2, _ = TargetMixtureEnv(episode_length=3, noise=0.5).reset(seed=7)
    np.testing.assert_array_equal(o1, o2)
    flags = [env.step(np.zeros(4, np.float32))[2] for _ in range(3)]
    assert flags == [False, False, True]
    with pytest.raises(ValueError, match="target"):
        TargetMixtureEnv(target=(0.5, 0.6))
