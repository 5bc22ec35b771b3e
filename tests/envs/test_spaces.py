"""The MDP's pure parts: action -> weights, observation normalisation, reward."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from acodm.dynamics.features import Dynamics
from acodm.envs.spaces import (
    AGENT_FEATURES,
    CLIP,
    CONSOLE_FEATURES,
    DEFAULT_FEATURES,
    MAX_EXTRA_REWARD_WEIGHT,
    ObservationSpec,
    RewardTerm,
    SpaceError,
    action_to_weights,
    alignment_reward,
    build_observation,
    check_reward_terms,
    console_reward_terms,
    observation_size,
    total_reward,
    zscore_clip,
)


def dyn(
    k: int = 3, n_layers: int = 2, *, seed: int = 0, progress: float = 0.25, **fields: np.ndarray
) -> Dynamics:
    rng = np.random.default_rng(seed)
    base = {
        name: rng.normal(size=k) for name in ("loss", "loss_change", "share", "epochs", "alignment")
    }
    base.update(weight_norm=rng.normal(size=n_layers), weight_distance=rng.normal(size=n_layers))
    base.update(fields)
    return Dynamics(step=5, progress=progress, gram=np.eye(k), **base)


# -- action -> weights -----------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3, 7, 64])
@pytest.mark.parametrize("eps", [0.0, 0.15, 1.0])
def test_weights_on_simplex_with_floor(k, eps):
    rng = np.random.default_rng(k)
    for a in [rng.uniform(-1, 1, k), np.full(k, -1.0), np.eye(k)[0], rng.normal(0, 50, k)]:
        w = action_to_weights(a, beta=3.0, eps=eps)
        assert w.dtype == np.float64 and w.shape == (k,)
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(w >= eps / k * (1 - 1e-12))


def test_weights_formula_hand_example():
    a = np.array([1.0, 0.0, -1.0])
    e = np.exp([2.0, 0.0, -2.0])  # beta = 2
    want = 0.85 * e / e.sum() + 0.15 / 3
    np.testing.assert_allclose(action_to_weights(a, beta=2.0, eps=0.15), want, rtol=1e-14)
    np.testing.assert_allclose(action_to_weights(np.zeros(4)), np.full(4, 0.25), rtol=1e-15)
    # eps = 1: uniform whatever the action
    np.testing.assert_allclose(action_to_weights(a, eps=1.0), np.full(3, 1 / 3), rtol=1e-15)


def test_weights_permutation_equivariant():
    a = np.array([0.3, -0.7, 0.9, 0.0])
    w = action_to_weights(a)
    for perm in itertools.permutations(range(4)):
        p = list(perm)
        np.testing.assert_allclose(action_to_weights(a[p]), w[p], rtol=1e-14)


def test_weights_monotone_and_float32_input():
    w = action_to_weights(np.array([-1, 0, 1], dtype=np.float32))
    assert w[0] < w[1] < w[2]


@pytest.mark.parametrize(
    ("action", "kw", "match"),
    [
        (np.zeros(1), {}, "k >= 2"),
        (np.zeros((2, 2)), {}, "k >= 2"),
        (np.array([0.0, np.nan]), {}, "NaN"),
        (np.zeros(3), {"beta": 0.0}, "beta"),
        (np.zeros(3), {"beta": np.inf}, "beta"),
        (np.zeros(3), {"eps": -0.1}, "eps"),
        (np.zeros(3), {"eps": 1.5}, "eps"),
    ],
)
def test_weights_validate_inputs(action, kw, match):
    with pytest.raises(SpaceError, match=match):
        action_to_weights(action, **kw)


# -- observation -----------------------------------------------------------------------
def test_zscore_clip_groups():
    z = zscore_clip(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(z, [-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
    assert zscore_clip(np.full(5, 4.2)).tolist() == [0.0] * 5  # constant -> zeros
    assert zscore_clip(np.array([1e6, 1e6 + 1e-9, 1e6])).tolist() == [0.0] * 3  # float noise
    # one outlier among 20: clipped at 3
    x = np.zeros(20)
    x[0] = 100.0
    z = zscore_clip(x)
    assert z[0] == CLIP and z.max() <= CLIP and z.min() >= -CLIP
    # non-finite entries are left out and map to 0
    z = zscore_clip(np.array([1.0, np.nan, 3.0]))
    np.testing.assert_allclose(z, [-1.0, 0.0, 1.0])
    assert zscore_clip(np.array([7.0])).tolist() == [0.0]


def test_observation_layout_and_values():
    spec = ObservationSpec(DEFAULT_FEATURES, k=3, n_layers=2)
    assert spec.size == observation_size(3, 2) == 5 * 3 + 2 * 2 + 1
    d = dyn(
        loss=np.array([2.0, 4.0, 6.0]),
        share=np.full(3, 1 / 3),
        weight_norm=np.array([1.0, 3.0]),
        progress=0.25,
    )
    obs = build_observation(d, spec)
    assert obs.dtype == np.float32 and obs.shape == (spec.size,)
    names = spec.names()
    assert names[:3] == ["loss[0]", "loss[1]", "loss[2]"] and names[-1] == "progress[0]"
    got = dict(zip(names, obs.tolist(), strict=True))
    assert got["loss[0]"] == pytest.approx(-np.sqrt(1.5)) and got["loss[1]"] == 0.0
    assert [got[f"share[{i}]"] for i in range(3)] == [0.0, 0.0, 0.0]  # constant group
    assert [got["weight_norm[0]"], got["weight_norm[1]"]] == [-1.0, 1.0]
    assert got["progress[0]"] == 0.25  # raw, not z-scored
    low, high = spec.bounds()
    assert np.all(obs >= low) and np.all(obs <= high)
    assert low[-1] == 0.0 and high[-1] == 1.0 and low[0] == -CLIP and high[0] == CLIP


def test_observation_is_scale_invariant_per_group():
    """Z-scoring per group: a model with 10x the loss scale gives the same vector."""
    spec = ObservationSpec(("loss", "weight_distance"), k=4, n_layers=3)
    a = dyn(k=4, n_layers=3, seed=1)
    b = dyn(k=4, n_layers=3, seed=1, loss=10 * a.loss + 5, weight_distance=3 * a.weight_distance)
    np.testing.assert_allclose(build_observation(a, spec), build_observation(b, spec), atol=1e-6)


def test_observation_feature_subset_and_shape_mismatch():
    spec = ObservationSpec(("alignment", "progress"), k=3, n_layers=0)
    assert build_observation(dyn(), spec).shape == (4,)
    with pytest.raises(SpaceError, match="does the run match"):
        build_observation(dyn(k=4), spec)


def test_spec_validation_and_round_trip():
    spec = ObservationSpec(("loss", "progress"), k=5, n_layers=3)
    d = json.loads(json.dumps(spec.to_dict()))  # it goes into policy.json
    assert ObservationSpec.from_dict(d) == spec
    with pytest.raises(SpaceError, match="unknown observation features"):
        ObservationSpec(("loss", "quality"), k=3, n_layers=1)
    with pytest.raises(SpaceError, match="repeat"):
        ObservationSpec(("loss", "loss"), k=3, n_layers=1)
    with pytest.raises(SpaceError, match="k"):
        ObservationSpec(("loss",), k=1, n_layers=1)
    with pytest.raises(SpaceError, match="format"):
        ObservationSpec.from_dict({**d, "version": 99})
    with pytest.raises(SpaceError, match="lacks"):
        ObservationSpec.from_dict({"features": ["loss"], "k": 3})


# -- reward ----------------------------------------------------------------------------
def test_alignment_reward_rounds_the_same_on_every_cpu():
    # the golden trace's first step: BLAS's dot (OpenBLAS picks its kernel per CPU) gave
    # ...6616 on an AMD EPYC where the recording machine gave ...66162; the reward is a plain
    # sum of exact products in index order, the same on every IEEE machine
    w = np.array([0.4805083323973059, 0.20837516474197043, 0.3111165028607236])
    s = np.array([0.2298029929735781, -1.3233686819392072, 1.0935656889656291])
    in_order = (float(w[0] * s[0]) + float(w[1] * s[1])) + float(w[2] * s[2])
    assert alignment_reward(w, s) == in_order == 0.17489141861966162


def test_alignment_reward_hand_example():
    assert alignment_reward(np.array([0.5, 0.25, 0.25]), np.array([2.0, -1.0, 0.0])) == 0.75
    assert isinstance(alignment_reward(np.ones(2) / 2, np.zeros(2)), float)
    with pytest.raises(SpaceError):
        alignment_reward(np.ones(3) / 3, np.zeros(2))
    with pytest.raises(SpaceError):
        alignment_reward(np.ones(2) / 2, np.array([np.nan, 0.0]))


def test_extra_reward_terms_and_cap():
    d = dyn(alignment=np.array([1.0, 0.0, -1.0]))
    w = np.array([0.6, 0.2, 0.2])
    term = RewardTerm("low_loss", 0.2, lambda w, d: float(-(w @ zscore_clip(d.loss))))
    r, parts = total_reward(w, d, [term])
    assert parts["alignment"] == pytest.approx(0.4)
    assert parts["low_loss"] == pytest.approx(-0.2 * float(w @ zscore_clip(d.loss)))
    assert r == pytest.approx(sum(parts.values()))
    assert total_reward(w, d) == (pytest.approx(0.4), {"alignment": pytest.approx(0.4)})
    too_much = [RewardTerm("a", 0.2, term.fn), RewardTerm("b", 0.11, term.fn)]
    with pytest.raises(SpaceError, match=str(MAX_EXTRA_REWARD_WEIGHT)):
        check_reward_terms(too_much)
    with pytest.raises(SpaceError, match="repeat"):
        check_reward_terms([RewardTerm("a", 0.1, term.fn)] * 2)
    with pytest.raises(SpaceError, match="reserved"):
        RewardTerm("alignment", 0.1, term.fn)
    with pytest.raises(SpaceError, match=">= 0"):
        RewardTerm("neg", -0.1, term.fn)


# -- the agent console's features and reward terms -------------------------------------------
def _console_dyn(alpha: dict[str, float]) -> Dynamics:
    agents = {
        "mean_quality": np.array([0.2, 0.9, 0.5]),
        "topic_entropy": np.array([0.1, 0.1, 0.7]),
        "topic_coverage": np.array([0.3, 0.6, 0.9]),
        "repetition_rate": np.array([0.0, 0.5, 0.0]),
    }
    return dataclasses.replace(dyn(), agents=agents, console_alpha=alpha)


def test_console_features_in_the_observation():
    spec = ObservationSpec(CONSOLE_FEATURES, 3, 2)
    assert spec.size == observation_size(3, 2) + 3 * len(AGENT_FEATURES)
    d = _console_dyn({"quality": 0.5, "domain": 0.2, "topic": 0.3})
    obs = build_observation(d, spec)
    start = spec.names().index("mean_quality[0]")
    np.testing.assert_allclose(obs[start : start + 3], zscore_clip(d.agents["mean_quality"]), 1e-6)
    assert obs[-1] == pytest.approx(0.25)  # progress stays last
    with pytest.raises(SpaceError, match="--console"):
        build_observation(dyn(), spec)  # a run without the console


def test_console_reward_terms_hand_example():
    quality, diversity = console_reward_terms(0.2)
    assert (quality.name, quality.weight, diversity.name, diversity.weight) == (
        "quality",
        0.1,
        "diversity",
        0.1,
    )
    w = np.array([0.2, 0.5, 0.3])
    d = _console_dyn({"quality": 0.5, "domain": 0.25, "topic": 0.25})
    # trust = alpha / max(alpha): 1 for quality, 0.5 for topic
    assert quality.fn(w, d) == pytest.approx(w @ zscore_clip(d.agents["mean_quality"]))
    assert diversity.fn(w, d) == pytest.approx(0.5 * w @ zscore_clip(d.agents["topic_entropy"]))
    reward, terms = total_reward(w, d, (quality, diversity))
    assert set(terms) == {"alignment", "quality", "diversity"}
    assert reward == pytest.approx(sum(terms.values()))
    with pytest.raises(SpaceError, match="at most"):
        check_reward_terms(console_reward_terms(0.4))
    with pytest.raises(SpaceError, match="--console"):
        total_reward(w, dyn(), (quality,))


def test_acodm_envs_spaces_is_the_numpy_only_acodm_spaces():
    import acodm.envs
    import acodm.envs.spaces
    import acodm.spaces

    assert acodm.envs.spaces is acodm.spaces and acodm.envs.spaces.ObservationSpec.__module__ == (
        "acodm.spaces"
    )
