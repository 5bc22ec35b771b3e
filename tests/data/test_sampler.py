"""Behaviour of the weighted domain sampler: frequencies, epochs, shards, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acodm.data.sampler import DomainSampler, _domain_key, reshard_states, undrawn, undrawn_count
from acodm.errors import SamplerError
from tests.fixtures import make_position_store

L = 16


@pytest.fixture
def store(tmp_path):
    # 3 domains with 40, 25 and 10 windows of length L (+1 token each for the EOS)
    return make_position_store(tmp_path / "store", {"a": 40 * L, "b": 25 * L, "c": 10 * L})


def starts(batch) -> list[int]:
    return batch.tokens[:, 0].tolist()


def test_batch_shape_and_window_content(store):
    s = DomainSampler(store, seq_len=L, batch_size=8, seed=1)
    b = s.next_batch()
    assert b.tokens.shape == (8, L + 1) and b.tokens.dtype == np.int64
    assert b.domains.shape == (8,) and b.step == 0
    for row, d in zip(b.tokens, b.domains, strict=True):
        arr = store.tokens(store.domains[d])
        start = int(row[0])
        assert start % L == 0
        np.testing.assert_array_equal(row, arr[start : start + L + 1])


def test_frequencies_match_weights(store):
    w = np.array([0.5, 0.3, 0.2])
    s = DomainSampler(store, seq_len=L, batch_size=32, seed=3, weights=w)
    n_batches = 300
    counts = np.zeros(3)
    for _ in range(n_batches):
        counts += np.bincount(s.next_batch().domains, minlength=3)
    n = 32 * n_batches
    sigma = np.sqrt(n * w * (1 - w))
    assert np.all(np.abs(counts - n * w) < 4 * sigma), (counts / n, w)


def test_weight_change_takes_effect_at_next_batch(store):
    s = DomainSampler(store, seq_len=L, batch_size=16, seed=0)
    s.next_batch()
    s.set_weights({"a": 0.0, "b": 0.0, "c": 1.0})
    assert set(s.next_batch().domains.tolist()) == {2}
    s.set_weights([1.0, 0.0, 0.0])
    assert set(s.next_batch().domains.tolist()) == {0}


def test_zero_weight_domain_never_drawn(store):
    s = DomainSampler(store, seq_len=L, batch_size=64, seed=5, weights=[0.0, 0.5, 0.5])
    for _ in range(50):
        assert 0 not in s.next_batch().domains


def test_windows_without_replacement_per_epoch_and_epoch_count(store):
    s = DomainSampler(store, seq_len=L, batch_size=5, seed=2, weights=[0, 0, 1])
    first = starts(s.next_batch()) + starts(s.next_batch())  # 10 windows = one epoch of "c"
    assert sorted(first) == [i * L for i in range(10)]
    np.testing.assert_allclose(s.epochs(), [0.0, 0.0, 1.0])
    second = starts(s.next_batch()) + starts(s.next_batch())
    assert sorted(second) == sorted(first) and second != first  # new epoch, new order
    np.testing.assert_allclose(s.epochs()[2], 2.0)


def test_same_seed_same_stream_other_seed_differs(store):
    def stream(seed):
        s = DomainSampler(store, seq_len=L, batch_size=8, seed=seed)
        return np.stack([s.next_batch().tokens for _ in range(10)])

    np.testing.assert_array_equal(stream(7), stream(7))
    assert not np.array_equal(stream(7), stream(8))


def test_resume_gives_exact_stream(store):
    schedule = [[0.2, 0.3, 0.5], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]

    def run(sampler, steps):
        out = []
        for t in steps:
            sampler.set_weights(schedule[t % 3])
            b = sampler.next_batch()
            out.append((b.tokens, b.domains, b.step))
        return out

    ref = DomainSampler(store, seq_len=L, batch_size=6, seed=11)
    full = run(ref, range(60))

    first = DomainSampler(store, seq_len=L, batch_size=6, seed=11)
    run(first, range(25))
    state = json.loads(json.dumps(first.state_dict()))  # it must survive JSON
    resumed = DomainSampler(store, seq_len=L, batch_size=6, seed=11)
    resumed.load_state_dict(state)
    rest = run(resumed, range(25, 60))
    for (t1, d1, s1), (t2, d2, s2) in zip(full[25:], rest, strict=True):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(d1, d2)
        assert s1 == s2
    np.testing.assert_array_equal(ref.epochs(), resumed.epochs())


def test_rank_shards_are_disjoint_and_cover_the_epoch(store):
    world = 3
    seen = []
    for rank in range(world):
        s = DomainSampler(
            store, seq_len=L, batch_size=1, seed=4, rank=rank, world_size=world, weights=[1, 0, 0]
        )
        n = len(range(rank, 40, world))  # this rank's share of the 40 windows of "a"
        seen.append({starts(s.next_batch())[0] for _ in range(n)})
        assert len(seen[-1]) == n
        np.testing.assert_allclose(s.epochs()[0], 1.0)
    for i in range(world):
        for j in range(i + 1, world):
            assert not seen[i] & seen[j]
    assert set().union(*seen) == {i * L for i in range(40)}


def test_validation_windows_fixed_and_from_val_split(store):
    s = DomainSampler(store, seq_len=L, batch_size=4, seed=0)
    v1 = s.validation_windows("b")
    s.next_batch()
    s.set_weights([0, 1, 0])
    v2 = s.validation_windows("b")
    np.testing.assert_array_equal(v1, v2)
    val = store.tokens("b", "val")
    assert v1.shape == ((val.size - 1) // L, L + 1)
    np.testing.assert_array_equal(v1[1], val[L : 2 * L + 1])
    batches = s.validation_batches(max_windows_per_domain=6)
    assert [b.tokens.shape[0] for b in batches] == [4, 2] * 3
    assert [int(b.domains[0]) for b in batches] == [0, 0, 1, 1, 2, 2]
    r0 = DomainSampler(store, seq_len=L, batch_size=4, rank=0, world_size=2).validation_windows(0)
    r1 = DomainSampler(store, seq_len=L, batch_size=4, rank=1, world_size=2).validation_windows(0)
    assert not {tuple(r) for r in r0.tolist()} & {tuple(r) for r in r1.tolist()}


def test_validation_windows_spread_evenly_over_the_whole_val_split(store):
    val = store.tokens("a", "val")
    n_all = (val.size - 1) // L  # 37 windows in the 601-token split
    s = DomainSampler(store, seq_len=L, batch_size=4, seed=0)
    v = s.validation_windows("a", max_windows=6)
    expected = [j * n_all // 6 for j in range(6)]
    assert expected == [0, 6, 12, 18, 24, 30]
    for row, w in zip(v, expected, strict=True):
        np.testing.assert_array_equal(row, val[w * L : w * L + L + 1])
    # the same windows at every call, whatever the sampler did in between
    s.next_batch()
    np.testing.assert_array_equal(v, s.validation_windows("a", max_windows=6))
    # they reach the last part of the split, not only its head
    assert expected[-1] * L > 0.75 * val.size
    # ranks split exactly the chosen windows between them
    shards = [
        DomainSampler(store, seq_len=L, batch_size=4, rank=r, world_size=2).validation_windows(
            "a", max_windows=6
        )
        for r in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([shards[0], shards[1]])[[0, 3, 1, 4, 2, 5]], v)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, -0.1, 0.1], "non-negative"),
        ([0.0, 0.0, 0.0], "not all zero"),
        ([1.0, float("nan"), 0.0], "finite"),
        ([0.5, 0.5], "3 domains"),
        ({"a": 1.0, "b": 0.0}, "missing"),
        ({"a": 1.0, "b": 0.0, "c": 0.0, "zz": 1.0}, "unknown domains"),
    ],
)
def test_bad_weights_raise_clear_errors(store, weights, message):
    s = DomainSampler(store, seq_len=L, batch_size=4)
    before = s.weights
    with pytest.raises(SamplerError, match=message):
        s.set_weights(weights)
    np.testing.assert_array_equal(s.weights, before)  # nothing half-applied


def test_weights_are_normalised(store):
    s = DomainSampler(store, seq_len=L, batch_size=4, weights=[2, 1, 1])
    np.testing.assert_allclose(s.weights, [0.5, 0.25, 0.25])


def test_bad_configuration_errors(store):
    with pytest.raises(SamplerError, match=r"domain .c.*fewer than one window"):
        DomainSampler(store, seq_len=200, batch_size=4)
    with pytest.raises(SamplerError, match="rank"):
        DomainSampler(store, seq_len=L, batch_size=4, rank=2, world_size=2)
    with pytest.raises(SamplerError, match=">= 1"):
        DomainSampler(store, seq_len=0, batch_size=4)


def test_incompatible_state_is_rejected(store):
    s = DomainSampler(store, seq_len=L, batch_size=4, seed=1)
    state = s.state_dict()
    with pytest.raises(SamplerError, match="seed"):
        DomainSampler(store, seq_len=L, batch_size=4, seed=2).load_state_dict(state)
    with pytest.raises(SamplerError, match="version"):
        s.load_state_dict({**state, "version": 99})
    with pytest.raises(SamplerError, match="does not fit"):
        s.load_state_dict({**state, "cursor": [1000, 0, 0]})


# -- a change of world size (resume on another number of ranks) ---------------------------


def _ranks(store, world, batch, seed=5, weights=(1.0, 0.0, 0.0)):
    return [
        DomainSampler(
            store, seq_len=L, batch_size=batch, seed=seed, rank=r, world_size=world, weights=weights
        )
        for r in range(world)
    ]


def _resharded(store, old, world, batch):
    states = reshard_states([s.state_dict() for s in old], world_size=world, batch_size=batch)
    new = _ranks(store, world, batch)
    for s, st in zip(new, states, strict=True):
        s.load_state_dict(json.loads(json.dumps(st)))  # through JSON, as a checkpoint holds it
    return new


def _drawn_in_epoch(samplers, domain, epoch, drawn):
    """Draw lock-step until every rank has left ``epoch`` of ``domain``; append its windows."""
    while any(int(s._epoch[domain]) == epoch for s in samplers):
        for s in samplers:
            if int(s._epoch[domain]) == epoch:
                drawn.extend(starts(s.next_batch()))


def test_reshard_deals_out_the_rest_of_the_epoch_exactly_once(store):
    # domain a: 40 windows; 2 ranks draw 3 batches of 2 (12 windows), then 3 ranks, then 1
    old = _ranks(store, 2, 2)
    drawn: list[int] = []
    for _ in range(3):
        for s in old:
            drawn.extend(starts(s.next_batch()))
    mid = _resharded(store, old, 3, 4)
    for _ in range(1):
        for s in mid:
            drawn.extend(starts(s.next_batch()))
    assert len(drawn) == 12 + 12
    new = _resharded(store, mid, 1, 3)
    assert new[0].state_dict()["splits"][0]["layers"] == [[2, [6, 6]], [3, [4, 4, 4]]]
    _drawn_in_epoch(new, 0, 0, drawn)
    epoch0 = [w for w in drawn][:40]
    assert sorted(w // L for w in epoch0) == list(range(40))  # every window once, none twice
    assert int(new[0]._epoch[0]) == 1 and new[0].state_dict()["splits"][0] is None


def test_reshard_keeps_the_epoch_count_and_is_deterministic(store):
    old = _ranks(store, 2, 4)
    for _ in range(3):
        for s in old:
            s.next_batch()
    before = np.mean([s.epochs() for s in old], axis=0)
    a = _resharded(store, old, 4, 2)
    b = _resharded(store, old, 4, 2)
    np.testing.assert_allclose(np.mean([s.epochs() for s in a], axis=0), before)
    seen = []
    for x, y in zip(a, b, strict=True):
        first = starts(x.next_batch())
        assert first == starts(y.next_batch())
        seen.append(set(first) | set(starts(x.next_batch())))
    # 16 windows of epoch 0 were left: the 4 new ranks drew 4 each, disjoint, all of them
    assert all(not (seen[i] & seen[j]) for i in range(4) for j in range(i + 1, 4))
    assert len(set().union(*seen)) == 16 and all(int(s._epoch[0]) == 1 for s in a)


def test_reshard_with_drifting_ranks_never_repeats_a_window_in_the_epoch(store):
    # domain c (10 windows) under mixed weights: the ranks reach different epochs and cursors
    old = _ranks(store, 3, 5, weights=(0.4, 0.3, 0.3))
    for _ in range(4):
        for s in old:
            s.next_batch()
    epochs = [int(s._epoch[2]) for s in old]
    e = max(epochs)
    plain = np.random.default_rng([5, _domain_key("c"), e]).permutation(10)
    taken = [
        int(w)
        for r, s in enumerate(old)
        if int(s._epoch[2]) == e
        for w in plain[r::3][: int(s._cursor[2])]
    ]
    new = _resharded(store, old, 2, 5)
    left = []
    for s in new:
        if int(s._epoch[2]) == e:
            left.extend(int(w) for w in s._epoch_order(2, e))
    assert sorted(taken + left) == list(range(10))


def test_reshard_refuses_states_of_different_runs(store):
    a, b = _ranks(store, 2, 2)
    st = [a.state_dict(), b.state_dict()]
    st[1]["seed"] = 99
    with pytest.raises(SamplerError, match="disagree on 'seed'"):
        reshard_states(st, world_size=1, batch_size=2)
    with pytest.raises(SamplerError, match=r"ranks 0\.\.0"):
        reshard_states([b.state_dict()], world_size=1, batch_size=2)
    bad = a.state_dict()
    bad["splits"] = [{"epoch": 0, "layers": [[2, [1]]]}, None, None]
    with pytest.raises(SamplerError, match="damaged 'splits'"):
        a.load_state_dict(bad)


def test_undrawn_count_matches_undrawn():
    rng = np.random.default_rng(0)
    perm = rng.permutation(23)
    layers = [[2, [4, 3]], [3, [1, 2, 0]], [1, [5]]]
    assert undrawn(perm, layers).size == undrawn_count(23, layers) == 23 - 7 - 3 - 5
    assert set(undrawn(perm, layers)) <= set(perm)
