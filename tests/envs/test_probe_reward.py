"""The probe reward (issue 11): its math by hand, the env's ``reward="probe"``, the probe
features, exact save/load of its baseline, and the errors of a store without a reward split."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from acodm.config import debug_cpu
from acodm.data.store import MANIFEST
from acodm.envs import (
    DEFAULT_FEATURES,
    PROBE_FEATURES,
    DataMixingEnv,
    EnvError,
    ObservationSpec,
    ProbeTracker,
    SpaceError,
    probe_reward,
)
from acodm.envs.spaces import PROBE_BASELINE_RATE, build_observation, with_probe
from tests.fixtures import make_text_store

SMALL = {"steps": 12, "warmup_steps": 2, "interval": 3, "device": "cpu"}
ACTIONS = [np.array([0.5, -0.5, 0.0]), np.array([-1.0, 1.0, 0.2]), np.array([0.0, 0.3, -0.9])]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("probe") / "store"
    make_text_store(path)
    return str(path)


def make_env(store: str, **kw: object) -> DataMixingEnv:
    return DataMixingEnv(store, config=debug_cpu(store).replace(**SMALL), **kw)  # type: ignore[arg-type]


# -- the pure math ---------------------------------------------------------------------------


def test_probe_reward_by_hand() -> None:
    # first interval of an episode: the baseline starts at the first decrease, r_1 = 0
    first = probe_reward(5.0, 4.9, None)
    assert first.decrease == pytest.approx(0.1)
    assert first.baseline == first.decrease and first.reward == 0.0
    assert first.next_baseline == pytest.approx(0.1)
    # then r = 100 (d - b) / L_prev and b <- 0.7 b + 0.3 d
    second = probe_reward(4.9, 4.85, 0.1)
    assert second.decrease == pytest.approx(0.05)
    assert second.reward == pytest.approx(100 * (0.05 - 0.1) / 4.9)  # -1.0204
    assert second.next_baseline == pytest.approx(0.7 * 0.1 + 0.3 * 0.05)  # 0.085
    assert PROBE_BASELINE_RATE == 0.3
    # a loss that rises is a negative decrease
    assert probe_reward(4.0, 4.2, 0.0).reward == pytest.approx(-5.0)


@pytest.mark.parametrize(("prev", "loss"), [(math.nan, 1.0), (1.0, math.inf), (0.0, 1.0)])
def test_probe_reward_refuses_bad_losses(prev: float, loss: float) -> None:
    with pytest.raises(SpaceError, match="probe loss"):
        probe_reward(prev, loss, None)


def test_tracker_is_the_mean_over_domains_and_round_trips_exactly() -> None:
    t = ProbeTracker()
    with pytest.raises(SpaceError, match="start"):
        t.step(np.array([1.0, 2.0]))
    t.start(np.array([5.0, 3.0]))  # L_0 = 4
    s1 = t.step(np.array([4.8, 3.0]))  # L_1 = 3.9
    assert s1.loss == pytest.approx(3.9) and s1.reward == 0.0
    again = ProbeTracker.from_dict(json.loads(json.dumps(t.to_dict())))
    a, b = t.step(np.array([4.7, 2.95])), again.step(np.array([4.7, 2.95]))
    assert a == b  # bit for bit
    assert a.reward == pytest.approx(100 * ((3.9 - 3.825) - s1.next_baseline) / 3.9)


def test_probe_features_are_z_scored_and_need_the_probe(store: str) -> None:
    env = make_env(store)
    env.reset(seed=0)
    assert env.trainer is not None
    dyn = env.trainer.train_interval(np.full(3, 1 / 3)).dynamics
    spec = ObservationSpec(PROBE_FEATURES, 3, 3)
    with pytest.raises(SpaceError, match="reward split"):
        build_observation(dyn, spec)
    obs = build_observation(
        with_probe(dyn, np.array([3.0, 2.0, 1.0]), np.array([3.5, 2.0, 1.5])), spec
    )
    z = np.array([1.0, 0.0, -1.0]) / np.std([1.0, 0.0, -1.0])
    np.testing.assert_allclose(obs[:3], z, rtol=1e-6)  # probe_loss
    delta = np.array([0.5, 0.0, 0.5])
    np.testing.assert_allclose(obs[3:], (delta - delta.mean()) / delta.std(), rtol=1e-6)
    env.close()


# -- the env ---------------------------------------------------------------------------------


def _run(env: DataMixingEnv, seed: int = 0) -> list[tuple[np.ndarray, float, dict]]:
    """Reset with ``seed``, then one step per action: (observation, reward, info) each."""
    env.reset(seed=seed)
    out = []
    for a in ACTIONS:
        obs, reward, _, _, info = env.step(a)
        out.append((obs, reward, info))
    env.close()
    return out


def test_probe_reward_in_the_env(store: str) -> None:
    env = make_env(store, reward="probe")
    assert env.reward == "probe" and env.probe_windows == 4
    assert env.reward == "probe"
    steps = _run(env)
    infos = [i for _, _, i in steps]
    rewards = [r for _, r, _ in steps]
    for info, r in zip(infos, rewards, strict=True):
        assert set(info["reward_terms"]) == {"probe"} and info["reward_terms"]["probe"] == r
        p = info["probe"]
        assert set(p) == {"loss", "decrease", "baseline", "reward", "losses"}
        assert p["loss"] == pytest.approx(np.mean(list(p["losses"].values())), abs=1e-12)
    assert env.unwrapped.probe_seconds > 0  # the wall time stays out of info (determinism)
    assert rewards[0] == 0.0 and infos[0]["probe"]["baseline"] == infos[0]["probe"]["decrease"]
    # r_2 by hand from the measured losses
    d1, d2 = infos[0]["probe"]["decrease"], infos[1]["probe"]["decrease"]
    l1 = infos[0]["probe"]["loss"]
    assert infos[1]["probe"]["decrease"] == pytest.approx(l1 - infos[1]["probe"]["loss"])
    assert rewards[1] == pytest.approx(100 * (d2 - d1) / l1)
    b2 = (1 - PROBE_BASELINE_RATE) * d1 + PROBE_BASELINE_RATE * d2
    assert infos[2]["probe"]["baseline"] == pytest.approx(b2)
    env.close()


def test_the_probe_does_not_change_training(store: str) -> None:
    """Forward passes only, no hooks: the same seed and actions train the same run."""
    plain = _run(make_env(store))
    probed = _run(make_env(store, reward="probe"))
    for (o1, _, i1), (o2, _, i2) in zip(plain, probed, strict=True):
        assert i1["train_loss"] == i2["train_loss"] and i1["weights"] == i2["weights"]
        np.testing.assert_array_equal(o1, o2)  # same observation (default features)
        assert "probe" not in i1


def test_probe_features_in_the_observation(store: str) -> None:
    features = DEFAULT_FEATURES[:-1] + PROBE_FEATURES + ("progress",)
    env = make_env(store, features=features)
    assert env.measures_probe and env.reward == "alignment"
    obs, _ = env.reset(seed=0)
    names = env.observation_spec.names()
    delta = obs[[i for i, n in enumerate(names) if n.startswith("probe_delta")]]
    assert np.all(delta == 0)  # the first interval has no previous probe
    o, _, _, _, info = env.step(ACTIONS[0])
    assert set(info["reward_terms"]) == {"alignment"} and "probe" in info
    assert env.observation_space.contains(o)
    env.close()


def test_save_and_load_keep_the_baseline_exactly(store: str, tmp_path: Path) -> None:
    env = make_env(store, reward="probe")
    env.reset(seed=1)
    env.step(ACTIONS[0])
    env.step(ACTIONS[1])
    env.save_state(tmp_path / "s")
    saved = json.loads((tmp_path / "s" / "env.json").read_text())["probe"]
    assert saved["baseline"] == env.probe.baseline
    want = env.step(ACTIONS[2])
    other = make_env(store, reward="probe")
    other.load_state(tmp_path / "s")
    got = other.step(ACTIONS[2])
    assert got[1] == want[1] and got[4]["probe"]["baseline"] == want[4]["probe"]["baseline"]
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(EnvError, match="probe_windows=2"):
        make_env(store, reward="probe", probe_windows=2).load_state(tmp_path / "s")
    env.close()
    other.close()


def test_bad_reward_arguments(store: str) -> None:
    with pytest.raises(EnvError, match="reward must be one of"):
        make_env(store, reward="loss")
    with pytest.raises(EnvError, match="probe_windows"):
        make_env(store, reward="probe", probe_windows=0)


def test_a_store_without_a_reward_split_names_prepare(store: str, tmp_path: Path) -> None:
    old = Path(shutil.copytree(store, tmp_path / "old"))
    m = json.loads((old / MANIFEST).read_text())
    m["schema_version"] = 2
    for e in m["domains"]:
        del e["reward"]
    (old / MANIFEST).write_text(json.dumps(m))
    shutil.rmtree(old / "reward")
    make_env(str(old)).close()  # the alignment reward works on it
    with pytest.raises(EnvError, match=r"schema-2 store.*acodm prepare .*--reward-fraction"):
        make_env(str(old), reward="probe")
    with pytest.raises(EnvError, match=r"a probe feature.*--reward-fraction"):
        make_env(str(old), features=("probe_loss", "progress"))


def test_trainer_window_losses_is_what_evaluate_reports(store: str) -> None:
    env = make_env(store, reward="probe")
    env.reset(seed=0)
    tr = env.trainer
    assert tr is not None
    ev = tr.evaluate()
    loss = tr.window_losses(tr._validation())
    assert ev["eval/loss_mean"] == float(loss.mean())
    r1, r2 = tr.reward_losses(4), tr.reward_losses(4)
    np.testing.assert_array_equal(r1, r2)  # the same fixed windows, nothing trained between
    assert tr.sampler.reward_windows("code", 4).shape == (4, 65)
    env.close()
