"""``DataMixingEnv(action="residual", prior=..., max_epochs=...)``: the env's residual action."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

from acodm.config import debug_cpu
from acodm.data.weights import project_capped
from acodm.envs import ENV_ID, V1_FEATURES, DataMixingEnv, SpaceError
from acodm.envs.spaces import ActionMapping, action_to_weights, prior_weights, run_caps
from tests.fixtures import make_text_store

SMALL = {"steps": 12, "warmup_steps": 2, "interval": 3, "device": "cpu"}
CAP = 0.04  # epochs: binds on this store's 12 x 256-token budget (numbers: 24611 tokens)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("residual-env") / "store"
    make_text_store(path)
    return str(path)


def make_env(store: str, **kw) -> DataMixingEnv:
    return DataMixingEnv(store, config=debug_cpu(store).replace(**SMALL), **kw)


def test_defaults_are_the_v0_softmax_mapping(store):
    env = make_env(store)
    assert env.action_mapping == ActionMapping("softmax", 1.0, 0.15)
    assert env.max_epochs is None and env.config.max_epochs is None
    assert "max_epochs" not in env.observation_spec.to_dict()
    env.reset(seed=0)
    assert env.prior is None
    env.close()


def test_zero_action_runs_the_capped_prior_every_interval(store):
    env = make_env(store, action="residual", max_epochs=CAP, features=V1_FEATURES)
    assert env.config.max_epochs == CAP and env.observation_spec.max_epochs == CAP
    assert env.action_mapping.prior == "unimax:0.04" and env.beta == pytest.approx(np.log(4))
    obs, info = env.reset(seed=3)
    tr = env.trainer
    assert tr is not None
    ctx = tr.mixer_context()
    prior = prior_weights("unimax:0.04", ctx)
    np.testing.assert_array_equal(env.prior, prior)
    # the first interval: the prior, already within the caps at step 0
    np.testing.assert_array_equal(list(info["weights"].values()), prior)
    done = False
    while not done:
        caps = run_caps(ctx, tr.epochs(), tr.step, CAP)
        obs, _, done, _, info = env.step(np.zeros(3, np.float32))
        np.testing.assert_array_equal(list(info["weights"].values()), project_capped(prior, caps))
        np.testing.assert_array_equal(env.last_report.weights, project_capped(prior, caps))
        assert env.observation_space.contains(obs)
    # the cap held: measured from the sampler, up to one interval's sampling noise
    windows = tr.sampler.num_windows()
    assert np.all(tr.epochs() <= CAP + 8 / windows)
    env.close()


def test_residual_actions_move_the_weights_around_the_prior(store):
    env = make_env(store, action="residual", prior="uniform", beta=1.0)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.prior, np.full(3, 1 / 3))
    a = np.array([1.0, 0.0, -1.0], np.float32)
    _, _, _, _, info = env.step(a)
    w = np.array(list(info["weights"].values()))
    np.testing.assert_allclose(w, np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum())
    _, _, _, _, info = env.step(np.array([5.0, 0.0, -5.0], np.float32))  # clipped to [-1, 1]
    np.testing.assert_allclose(list(info["weights"].values()), w)
    env.close()


def test_the_softmax_mapping_is_capped_too(store):
    env = make_env(store, max_epochs=CAP)
    _, info = env.reset(seed=0)
    tr = env.trainer
    assert tr is not None
    ctx = tr.mixer_context()
    uniform = np.full(3, 1 / 3)
    caps0 = run_caps(ctx, np.zeros(3), 0, CAP)
    np.testing.assert_array_equal(list(info["weights"].values()), project_capped(uniform, caps0))
    a = np.array([-1.0, -1.0, 1.0], np.float32)  # most weight on the smallest domain
    caps = run_caps(ctx, tr.epochs(), tr.step, CAP)
    _, reward, _, _, info = env.step(a)
    w = project_capped(action_to_weights(a), caps)
    np.testing.assert_array_equal(list(info["weights"].values()), w)
    assert w[2] == caps[2] < action_to_weights(a)[2]
    # the reward is of the weights the interval ran with
    assert reward == pytest.approx(float(w @ env.last_report.dynamics.alignment))
    env.close()


def test_checkers_pass_on_the_residual_env(store):
    env = gym.make(
        ENV_ID,
        config=debug_cpu(store).replace(**SMALL),
        action="residual",
        max_epochs=CAP,
        features=V1_FEATURES,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gym_check_env(env.unwrapped)
    finally:
        env.close()


def test_bad_residual_arguments(store):
    with pytest.raises(SpaceError, match="eps"):
        make_env(store, action="residual", eps=0.1)
    with pytest.raises(SpaceError, match="prior"):
        make_env(store, action="residual", prior="file:w.json")
    with pytest.raises(SpaceError, match="residual"):
        make_env(store, prior="uniform")
    with pytest.raises(SpaceError, match="max_epochs"):
        make_env(store, features=V1_FEATURES)  # cap_left without a cap
