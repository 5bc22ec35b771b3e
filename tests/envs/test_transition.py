"""One MDP step: the env's step and the online ddpg mixer both go through spaces.transition."""

from __future__ import annotations

import numpy as np
import pytest

from acodm.config import debug_cpu
from acodm.envs import DataMixingEnv, spaces
from acodm.envs.spaces import build_observation, total_reward, transition
from tests.fixtures import make_text_store

SMALL = {"steps": 9, "warmup_steps": 2, "interval": 3, "device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("transition") / "store"
    make_text_store(path)
    return str(path)


def test_the_env_step_is_transition_of_the_interval_it_keeps(store):
    env = DataMixingEnv(store, config=debug_cpu(store).replace(**SMALL))
    try:
        env.reset(seed=3)
        assert env.last_report is None  # reset's interval is not a step
        obs, reward, terminated, _, info = env.step(np.array([0.5, -0.5, 0.0], np.float32))
        report = env.last_report
        assert report is not None and report.steps == 3 and not terminated
        weights = np.array([info["weights"][d] for d in env.domains])
        again = transition(weights, report.dynamics, env.observation_spec)
        np.testing.assert_array_equal(again[0], obs)
        assert again[1] == reward and again[2] == info["reward_terms"]
        env.step(np.zeros(3, np.float32))
        last = env.last_report
        env.reset(seed=4)  # a vectorised env resets before its callbacks read the last step
        assert env.last_report is last
    finally:
        env.close()


def test_transition_is_the_observation_and_the_reward():
    from tests.envs.test_spaces import dyn

    d = dyn(alignment=np.array([1.0, 0.0, -1.0]))
    spec = spaces.ObservationSpec(spaces.DEFAULT_FEATURES, 3, 2)
    w = np.array([0.6, 0.2, 0.2])
    obs, reward, terms = transition(w, d, spec)
    np.testing.assert_array_equal(obs, build_observation(d, spec))
    assert (reward, terms) == total_reward(w, d)


def test_the_online_mixer_learns_from_transition(store, tmp_path, monkeypatch):
    """A changed reward in spaces.transition reaches the ddpg mixer's replay buffer."""
    from acodm.policies import ddpg

    seen: list[float] = []
    real = ddpg.transition

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out[1])
        return out

    monkeypatch.setattr(ddpg, "transition", spy)
    from acodm.pretrain import pretrain

    cfg = debug_cpu(store).replace(**SMALL, mixer="ddpg:warmup=0.5", eval_every=0)
    pretrain(cfg, tmp_path / "run", progress=False)
    assert len(seen) == 2  # 3 intervals: the first has no chosen weights to reward
