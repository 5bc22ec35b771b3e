"""``acodm/DataMixing-v0`` on the tiny model: API checkers, determinism, episode end, info."""

from __future__ import annotations

import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import acodm.envs
from acodm.config import debug_cpu
from acodm.envs import ENV_ID, DataMixingEnv, EnvError, RewardTerm, SpaceError, observation_size
from tests.fixtures import make_text_store

# 12 steps, K = 3: reset runs one interval, then 3 env steps. Seconds on one CPU thread.
SMALL = {"steps": 12, "warmup_steps": 2, "interval": 3, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("env") / "store"
    make_text_store(path)
    return str(path)


def make_env(store: str, **kw) -> DataMixingEnv:
    return DataMixingEnv(store, config=debug_cpu(store).replace(**SMALL), **kw)


def test_gymnasium_and_sb3_checkers_pass_with_warnings_as_errors(store):
    env = gym.make(ENV_ID, config=debug_cpu(store).replace(**SMALL))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gym_check_env(env.unwrapped)
            sb3_check_env(env, warn=True)
    finally:
        env.close()


def test_spaces(store):
    env = make_env(store)
    assert env.domains == ("code", "prose", "numbers") and env.k == 3
    assert env.action_space == gym.spaces.Box(-1, 1, (3,), np.float32)
    obs_space = env.observation_space
    assert isinstance(obs_space, gym.spaces.Box) and obs_space.dtype == np.float32
    assert obs_space.shape == (observation_size(3, 3),)  # tiny: 3 monitored layers
    assert np.all(np.isfinite(obs_space.low)) and np.all(np.isfinite(obs_space.high))
    assert env.num_intervals == 4
    env.close()


def test_same_seed_same_actions_identical_trajectory(store):
    actions = [
        np.array([1.0, -1.0, 0.0], np.float32),
        np.array([-0.5, 0.5, 0.2], np.float32),
        np.array([0.0, 0.0, 1.0], np.float32),
    ]

    def run(seed: int) -> list:
        env = make_env(store)
        obs, info = env.reset(seed=seed)
        out = [(obs, info["train_loss"])]
        for a in actions:
            obs, r, *_, info = env.step(a)
            out.append((obs, r, info["train_loss"]))
        env.close()
        return out

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])  # exact equality, not allclose
        assert x[1:] == y[1:]
    assert not np.array_equal(a[0][0], c[0][0])  # another seed is another run


def test_episode_terminates_at_budget_and_info(store):
    env = make_env(store)
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space
    assert info["step"] == 3 and info["progress"] == 0.25
    assert info["weights"] == pytest.approx({"code": 1 / 3, "prose": 1 / 3, "numbers": 1 / 3})
    steps, terminated = 0, False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0, -1.0]))
        steps += 1
        assert obs in env.observation_space and truncated is False
        assert isinstance(reward, float) and -3.0 <= reward <= 3.0
        assert reward == pytest.approx(sum(info["reward_terms"].values()))
        assert set(info["reward_terms"]) == {"alignment"}
        w = np.array(list(info["weights"].values()))
        np.testing.assert_allclose(w, acodm.envs.action_to_weights(np.array([1.0, 0.0, -1.0])))
        assert np.isfinite(info["train_loss"])
    assert steps == env.num_intervals - 1 == 3
    assert info["step"] == 12 and info["progress"] == 1.0
    with pytest.raises(EnvError, match="reset"):
        env.step(np.zeros(3))
    env.close()
    env.close()  # idempotent


def test_last_interval_may_be_short(store):
    env = make_env(store, interval=5)  # 12 steps: 5 (reset) + 5 + 2
    env.reset(seed=0)
    infos = [env.step(np.zeros(3))[-1]["step"] for _ in range(2)]
    assert infos == [10, 12]
    env.close()


def test_close_removes_alignment_hooks(store):
    env = make_env(store)
    env.reset(seed=0)
    tr = env.trainer
    assert tr is not None
    layers = [m for _, m in tr.monitored]
    hooked = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in layers)
    hooked += sum(len(getattr(m, "_forward_pre_hooks", {})) for m in layers)
    env.close()
    after = sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in layers
    )
    assert env.trainer is None and after < hooked


def test_extra_reward_terms_reach_info(store):
    term = RewardTerm("bonus", 0.1, lambda w, d: 1.0)
    env = make_env(store, reward_terms=[term])
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.zeros(3))
    assert info["reward_terms"]["bonus"] == pytest.approx(0.1)
    assert r == pytest.approx(info["reward_terms"]["alignment"] + 0.1)
    env.close()
    with pytest.raises(SpaceError, match=r"0\.3"):
        make_env(store, reward_terms=[RewardTerm("big", 0.5, term.fn)])


def test_feature_subset_and_bad_arguments(store):
    env = make_env(store, features=("alignment", "progress"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,)
    env.close()
    with pytest.raises(EnvError, match="budget"):
        make_env(store, interval=12)
    with pytest.raises(EnvError, match="dynamics"):
        make_env(store, overrides={"dynamics": False})
    with pytest.raises(SpaceError, match="eps"):
        make_env(store, eps=2.0)
    with pytest.raises(EnvError, match="shape"):
        env = make_env(store)
        env.reset(seed=0)
        try:
            env.step(np.zeros(4))
        finally:
            env.close()


def test_make_with_preset_name_and_overrides(store):
    env = gym.make(ENV_ID, store=store, config="debug_cpu", overrides=SMALL, beta=2.0)
    assert env.unwrapped.config.steps == 12 and env.unwrapped.beta == 2.0  # type: ignore[attr-defined]
    obs, _ = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape
    env.close()
    # the module-qualified id imports the package itself
    env = gym.make(f"acodm.envs:{ENV_ID}", store=store, overrides=SMALL)
    env.close()


def test_default_env_needs_no_arguments():
    """Builds the cached default store (in the test session's private cache) and runs."""
    start = time.perf_counter()
    env = gym.make(ENV_ID)
    env.reset(seed=0)
    terminated, n = False, 0
    while not terminated:
        _, _, terminated, _, _ = env.step(env.action_space.sample())
        n += 1
    env.close()
    assert n == env.unwrapped.num_intervals - 1 == 9  # type: ignore[attr-defined]
    assert time.perf_counter() - start < 120
    gym.make(ENV_ID).close()  # second time: the store comes from the cache


def test_monitored_patterns_set_the_layer_groups(store):
    """With patterns the layer count comes from the model (tiny: 4 blocks)."""
    env = make_env(
        store, overrides={"monitored_patterns": ("gpt_neox.layers.*.mlp.dense_4h_to_h",)}
    )
    assert env.observation_spec.n_layers == 4
    obs, _ = env.reset(seed=0)
    assert obs.shape == (observation_size(3, 4),) == env.observation_space.shape
    env.close()
