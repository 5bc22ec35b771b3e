"""Behaviour of the agent memories, the console and the scored within-domain sampler."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from acodm.agents.console import (
    AGENT_FEATURES,
    AgentConsole,
    AgentMemory,
    ScoredDomainSampler,
    group_feedback,
    interval_features,
    topic_entropy,
    weighted_order,
    window_priorities,
)
from acodm.errors import SamplerError
from tests.fixtures import make_position_store

L = 16


# -- memory: the corrected online update -----------------------------------------------------
def test_memory_update_hand_example():
    mem = AgentMemory("quality", 3, init=10.0)
    # items of groups 0, 1, 0, 1 with reference-loss decreases; group 2 was not trained on
    groups, r = mem.update_from_credit(np.array([0, 1, 0, 1]), np.array([0.4, 0.1, 0.2, 0.1]))
    # group means 0.3 and 0.1 -> z-scores +1 and -1
    np.testing.assert_array_equal(groups, [0, 1])
    np.testing.assert_allclose(r, [1.0, -1.0])
    # u = [0.9 + 0.1 e^0.5, 0.9 + 0.1 e^-0.5, 1] = [1.06487213, 0.96065307, 1]; mean 1.00850840
    # W = 10 u / mean(u)
    np.testing.assert_allclose(mem.weights, [10.5588821, 9.5254841, 9.9156338], atol=1e-6)
    assert mem.weights.mean() == pytest.approx(10.0)


def test_unit_init_is_exactly_the_method_rule():
    mem = AgentMemory("topic", 2, init=1.0)
    mem.update(np.array([0, 1]), np.array([1.0, -1.0]))
    w = np.array([0.9 + 0.1 * math.exp(0.5), 0.9 + 0.1 * math.exp(-0.5)])
    np.testing.assert_allclose(mem.weights, w / w.mean())


def test_loss_decrease_raises_weight_increase_lowers_it():
    mem = AgentMemory("domain", 3)
    before = np.array([3.0, 3.0, 3.0])
    after = np.array([2.5, 3.0, 3.4])  # group 0 decreased, group 2 increased
    mem.update_from_credit(np.array([0, 1, 2]), before - after)
    w = mem.weights
    assert w[0] > 10.0 > w[2]  # the released code rewards the increase: the opposite
    assert w[0] > w[1] > w[2]


def test_feedback_is_z_scored():
    labels = np.array([0, 1, 2, 0])
    credit = np.array([0.03, 0.01, -0.02, 0.01])
    a, b = AgentMemory("q", 3), AgentMemory("q", 3)
    a.update_from_credit(labels, credit)
    b.update_from_credit(labels, 1000.0 * credit + 7.0)  # z-scores are scale/shift invariant
    np.testing.assert_allclose(a.weights, b.weights)
    _, r = group_feedback(labels, credit)
    assert r.mean() == pytest.approx(0.0, abs=1e-12) and r.std() == pytest.approx(1.0)


def test_every_group_of_the_interval_is_updated_not_only_the_last_document():
    mem = AgentMemory("topic", 5, init=1.0)
    labels = np.array([0, 3, 1, 3, 4])  # last document is group 4; group 2 is absent
    credit = np.array([0.5, -0.2, 0.1, 0.0, 0.3])
    groups, r = mem.update_from_credit(labels, credit)
    np.testing.assert_array_equal(groups, [0, 1, 3, 4])
    raw = np.array([0.5, 0.1, -0.1, 0.3])
    np.testing.assert_allclose(r, (raw - raw.mean()) / raw.std())
    u = np.ones(5)
    u[groups] = 0.9 + 0.1 * np.exp(0.5 * r)
    np.testing.assert_allclose(mem.weights, u / u.mean())


# -- console ---------------------------------------------------------------------------------
def _console() -> AgentConsole:
    return AgentConsole([AgentMemory("signal", 5), AgentMemory("noise", 5)], eta=1.0)


def test_alpha_moves_to_the_agent_that_predicts_the_feedback():
    rng = np.random.default_rng(0)
    console = _console()
    effect = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    alphas = [console.alpha.copy()]
    for _ in range(25):
        labels = {"signal": rng.integers(0, 5, 300), "noise": rng.integers(0, 5, 300)}
        credit = effect[labels["signal"]] + 0.5 * rng.standard_normal(300)
        console.update(labels, credit)
        alphas.append(console.alpha.copy())
    a = np.array(alphas)
    assert a[-1, 0] > 0.9 and a[-1, 1] < 0.1
    # first update: the memories are still uniform, so no agent predicts anything yet
    np.testing.assert_allclose(a[1], [0.5, 0.5])
    # then the signal agent grows at every update until near the floor's cap 1 - 0.01 / 2
    assert np.all(np.diff(a[1:8, 0]) > 0) and np.all(a[8:, 0] > 0.98)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    # the signal agent's memory ranks its labels by their effect
    assert np.all(np.diff(console.agents[0].weights) > 0)


def test_repetition_penalty():
    console = _console()
    labels = {"signal": np.array([0, 0, 0]), "noise": np.array([1, 1, 1])}
    s = console.score(labels, times_seen=np.array([0, 1, 10]))
    np.testing.assert_allclose(s, 10.0 / np.array([1.0, 1.1, 2.0]))


def test_state_round_trip_through_json():
    console = _console()
    rng = np.random.default_rng(1)
    for _ in range(3):
        labels = {"signal": rng.integers(0, 5, 50), "noise": rng.integers(0, 5, 50)}
        console.update(labels, rng.standard_normal(50))
    restored = _console()
    restored.load_state_dict(json.loads(json.dumps(console.state_dict())))
    labels = {"signal": np.arange(5), "noise": np.arange(5)[::-1]}
    np.testing.assert_array_equal(restored.score(labels), console.score(labels))
    np.testing.assert_array_equal(restored.alpha, console.alpha)


# -- within-domain order ---------------------------------------------------------------------
def test_window_priorities_token_weighted():
    offsets = np.array([0, 3, 10, 12])  # documents of 3, 7 and 2 tokens
    s = window_priorities(np.array([1.0, 2.0, 4.0]), offsets, seq_len=4, n_windows=3)
    np.testing.assert_allclose(s, [(3 * 1 + 2) / 4, 2.0, (2 * 2 + 2 * 4) / 4])


def test_weighted_order_first_place_tracks_softmax():
    scores = np.array([0.0, 1.0, 2.0, 0.5])
    n = 4000
    rng = np.random.default_rng(0)
    for temperature, p in ((1.0, np.exp(scores)), (2.0, np.exp(scores / 2)), (1e9, np.ones(4))):
        p = p / p.sum()
        first = np.zeros(4)
        for _ in range(n):
            order = weighted_order(scores, rng, temperature)
            first[order[0]] += 1
        assert np.all(np.abs(first - n * p) < 5 * np.sqrt(n * p * (1 - p))), (temperature, first)
    order = weighted_order(scores, rng, math.inf)
    np.testing.assert_array_equal(np.sort(order), np.arange(4))


@pytest.fixture
def store(tmp_path):
    return make_position_store(tmp_path / "store", {"a": 40 * L, "b": 25 * L})


def _windows(sampler: ScoredDomainSampler, n_batches: int) -> list[int]:
    return [w // L for _ in range(n_batches) for w in sampler.next_batch().tokens[:, 0].tolist()]


def _sampler(store, rank: int = 0, world: int = 1) -> ScoredDomainSampler:
    s = ScoredDomainSampler(
        store, seq_len=L, batch_size=4, seed=3, weights=[1.0, 0.0], rank=rank, world_size=world
    )
    s.set_window_scores("a", 20.0 * (np.arange(40) >= 30))
    return s


def test_scored_sampler_disjoint_shards_cover_every_window_once(store):
    s0, s1 = _sampler(store, 0, 2), _sampler(store, 1, 2)
    r0, r1 = _windows(s0, 5), _windows(s1, 5)
    assert len(set(r0)) == 20 and len(set(r1)) == 20
    assert set(r0) | set(r1) == set(range(40))
    # inside its shard, each rank draws the high-scored windows (30..39) first
    for r in (r0, r1):
        top = [w for w in r if w >= 30]
        assert set(r[: len(top)]) == set(top)


def test_scored_sampler_every_epoch_is_a_permutation(store):
    w = _windows(_sampler(store), 20)  # two epochs of 40
    assert sorted(w[:40]) == list(range(40)) and sorted(w[40:]) == list(range(40))
    assert w[:40] != w[40:]


def test_new_scores_reorder_the_rest_of_the_epoch_at_once(store):
    s = _sampler(store)
    first = _windows(s, 3)  # 12 windows, mostly the high-scored 30..39
    s.set_window_scores("a", 20.0 * (np.arange(40) < 10))
    rest = _windows(s, 7)
    assert sorted(first + rest) == list(range(40))  # the epoch stays without replacement
    assert set(rest[:10]) == set(range(10)) - set(first)  # the new favourites come next
    assert set(_windows(s, 10)[:10]) == set(range(10))  # and lead the next epoch


def test_lookahead_orders_only_the_next_windows(store):
    s = ScoredDomainSampler(store, seq_len=L, batch_size=4, seed=3, weights=[1.0, 0.0])
    s.set_window_scores("a", np.zeros(40))
    first = _windows(s, 1)
    s.lookahead = 4
    s.set_window_scores("a", 20.0 * (np.arange(40) < 10))
    nxt = _windows(s, 1)
    assert set(nxt) <= set(range(10))  # the 4 ordered windows are favourites
    assert sorted(first + nxt + _windows(s, 8)) == list(range(40))


def test_scored_sampler_exact_resume(store):
    s = _sampler(store)
    _windows(s, 13)  # mid-way through the second epoch
    s.set_window_scores("a", np.arange(40.0))  # re-orders the rest of that epoch
    state = json.loads(json.dumps(s.state_dict()))
    orders = s.order_arrays()
    expected = _windows(s, 12)
    t = _sampler(store)
    t.set_window_scores("a", np.arange(40.0), reorder=False)
    t.load_state_dict(state)
    t.load_order_arrays(orders)
    assert _windows(t, 12) == expected
    # without the saved orders the epoch cannot be rebuilt: a clear error, not another stream
    u = _sampler(store)
    u.set_window_scores("a", np.arange(40.0))
    u.load_state_dict(state)
    with pytest.raises(SamplerError, match="mid-epoch"):
        u.next_batch()
    with pytest.raises(SamplerError, match="does not fit"):
        _sampler(store).load_order_arrays(orders)  # state not loaded: cursor/hash differ


def test_scored_sampler_resume_without_score_changes_needs_no_orders(store):
    s = _sampler(store)
    _windows(s, 13)
    state = json.loads(json.dumps(s.state_dict()))
    expected = _windows(s, 12)
    t = _sampler(store)
    t.load_state_dict(state)
    assert _windows(t, 12) == expected


def test_unscored_domain_keeps_the_base_order(store):
    from acodm.data.sampler import DomainSampler

    base = DomainSampler(store, seq_len=L, batch_size=4, seed=3, weights=[1.0, 0.0])
    s = ScoredDomainSampler(store, seq_len=L, batch_size=4, seed=3, weights=[1.0, 0.0])
    for _ in range(12):
        np.testing.assert_array_equal(s.next_batch().tokens, base.next_batch().tokens)


# -- features --------------------------------------------------------------------------------
def test_interval_features():
    f = interval_features(
        domains=np.array([0, 0, 0, 0, 1]),
        quality=np.array([1.0, 3.0, 2.0, 2.0, 4.0]),
        topics=np.array([0, 1, 2, 3, 1]),
        times_seen=np.array([0, 2, 0, 0, 1]),
        n_domains=3,
        n_topics=4,
    )
    np.testing.assert_allclose(f["mean_quality"], [2.0, 4.0, 0.0])
    np.testing.assert_allclose(f["topic_entropy"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(f["topic_coverage"], [1.0, 0.25, 0.0])
    np.testing.assert_allclose(f["repetition_rate"], [0.25, 1.0, 0.0])
    assert topic_entropy(np.array([0, 0, 1, 1]), 4) == pytest.approx(0.5)
    assert tuple(f) == AGENT_FEATURES


def test_env_observes_the_features_the_console_computes():
    # one list: the env's console features are the console's own tuple, each a known group
    from acodm.envs import AGENT_FEATURES as ENV_AGENT_FEATURES
    from acodm.envs import CONSOLE_FEATURES, FEATURES

    assert ENV_AGENT_FEATURES is AGENT_FEATURES
    assert [f for f in CONSOLE_FEATURES if f in AGENT_FEATURES] == list(AGENT_FEATURES)
    assert all(FEATURES[f].kind == "domain" for f in AGENT_FEATURES)
