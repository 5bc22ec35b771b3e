"""The action <-> weights mapping (METHOD.md, Action) and the analytic test env."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from acodm.envs.spaces import SpaceError
from acodm.policies.analytic import TargetMixtureEnv
from acodm.policies.export import action_to_weights, weights_to_action


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


def test_one_validator_for_the_mapping_and_its_inverse():
    """Both directions check beta and eps with the same rule and error (the inverse used to
    refuse eps = 1, which the forward mapping and the ddpg mixer accepted)."""
    for bad in ({"beta": 0.0, "eps": 0.1}, {"beta": 1.0, "eps": 1.5}):
        with pytest.raises(SpaceError) as forward:
            action_to_weights(np.zeros(3), **bad)
        with pytest.raises(SpaceError) as inverse:
            weights_to_action(np.full(3, 1 / 3), **bad)
        assert str(forward.value) == str(inverse.value)
    # eps = 1: every action gives the uniform mixture, so the zero action is an exact inverse
    a = weights_to_action(np.full(3, 1 / 3), beta=1.0, eps=1.0)
    assert a.dtype == np.float32 and a.tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(action_to_weights(a, eps=1.0), 1 / 3)


def test_the_mapping_has_one_home():
    from acodm.envs import spaces

    assert weights_to_action is spaces.weights_to_action  # re-exported by acodm.policies.export
    assert action_to_weights is spaces.action_to_weights


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
