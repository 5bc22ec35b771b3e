"""ODM against numbers worked out by hand from METHOD.md's formulas (k = 3, a = 0.5).

    R_i <- a R_i + (1 - a) exp(loss_i)     (sampled domains only; R starts at 1)
    eps_t = min(1/k, sqrt(ln k / (k t)))
    w = (1 - k eps_t) R / sum R + eps_t

For k = 3, eps_t = 1/3 (uniform weights) while t <= 3 ln 3 = 3.3, i.e. for t = 1, 2, 3.
Losses are written as ``log(x)`` so that ``exp(loss) = x`` is a round number.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from acodm.mixers import ODMMixer, make_mixer
from tests.mixers.util import feedback, make_ctx

NAN = float("nan")
THIRD = [1 / 3, 1 / 3, 1 / 3]


def odm(spec: str = "odm:warmup=0", **ctx_kwargs) -> ODMMixer:
    mixer = make_mixer(spec)
    assert isinstance(mixer, ODMMixer)
    mixer.setup(make_ctx(**ctx_kwargs))
    return mixer


def reward(mixer: ODMMixer) -> list[float]:
    return mixer.state_dict()["state"]["reward"]


def test_hand_computed_sequence():
    m = odm()
    np.testing.assert_allclose(m.weights(), THIRD)  # t = 0 counts as t = 1: eps = 1/3

    # update 1: exp(loss) = 3, 1, 5 -> R = 0.5 * 1 + 0.5 * (3, 1, 5) = (2, 1, 3)
    m.update(feedback(1, np.log([3.0, 1.0, 5.0])))
    assert reward(m) == pytest.approx([2.0, 1.0, 3.0])
    np.testing.assert_allclose(m.weights(), THIRD)  # t = 1: sqrt(ln3 / 3) = 0.605 > 1/3

    # update 2: exp(loss) = 1, 3, 1 -> R = (1 + 1, 0.5 + 1.5, 1.5 + 0.5) / ... = (1.5, 2, 2)
    m.update(feedback(2, np.log([1.0, 3.0, 1.0])))
    assert reward(m) == pytest.approx([1.5, 2.0, 2.0])
    np.testing.assert_allclose(m.weights(), THIRD)  # t = 2: sqrt(ln3 / 6) = 0.428 > 1/3

    # update 3: domain 0 not sampled (NaN, count 0); exp(loss) = 4, 2 -> R = (1.5, 3, 2)
    m.update(feedback(3, [NAN, math.log(4.0), math.log(2.0)], counts=[0, 5, 5]))
    assert reward(m) == pytest.approx([1.5, 3.0, 2.0])
    np.testing.assert_allclose(m.weights(), THIRD)  # t = 3: sqrt(ln3 / 9) = 0.349 > 1/3

    # update 4: exp(loss) = 2.5, 1, 4 -> R = (2, 2, 3), sum 7
    # t = 4: eps = sqrt(ln3 / 12) = 0.30257399765293086, 1 - 3 eps = 0.09227800704120748
    # w = 0.092278 * (2, 2, 3) / 7 + 0.302574 = (0.3289391425218473, same, 0.3421217149563055)
    m.update(feedback(4, np.log([2.5, 1.0, 4.0])))
    assert reward(m) == pytest.approx([2.0, 2.0, 3.0])
    np.testing.assert_allclose(
        m.weights(), [0.3289391425218473, 0.3289391425218473, 0.3421217149563055], rtol=1e-12
    )

    # update 5: domain 1 has a loss but count 0 -> ignored; exp(loss) = 1, -, 1
    # R = (1 + 0.5, 2, 1.5 + 0.5) = (1.5, 2, 2), sum 5.5
    # t = 5: eps = sqrt(ln3 / 15) = 0.27063041079032607, 1 - 3 eps = 0.18810876762902184
    # w = 0.188109 * (1.5, 2, 2) / 5.5 + 0.270630 = (0.32193280196187746, 0.33903359901906127, ..)
    m.update(feedback(5, np.log([1.0, 2.0, 1.0]), counts=[4, 0, 4]))
    assert reward(m) == pytest.approx([1.5, 2.0, 2.0])
    np.testing.assert_allclose(
        m.weights(), [0.32193280196187746, 0.33903359901906127, 0.33903359901906127], rtol=1e-12
    )


def test_high_loss_domain_gains_weight_over_time():
    m = odm()
    for step in range(1, 200):
        m.update(feedback(step, [1.0, 2.0, 3.0]))
    w = m.weights()
    assert w[0] < w[1] < w[2]
    assert w.min() > 0  # exploration keeps every domain alive


def test_nan_losses_leave_reward_unchanged():
    m = odm()
    m.update(feedback(1, np.log([3.0, 1.0, 5.0])))  # R = (2, 1, 3)
    before = reward(m)
    m.update(feedback(2, [NAN, NAN, NAN], counts=[0, 0, 0]))
    assert reward(m) == before  # exactly unchanged
    m.update(feedback(3, [NAN, NAN, math.log(7.0)], counts=[3, 0, 1]))  # count > 0, loss NaN
    assert reward(m)[:2] == before[:2]
    assert reward(m)[2] == pytest.approx(0.5 * 3.0 + 0.5 * 7.0)


def test_losses_are_clipped_to_0_and_30_nats():
    m = odm()
    m.update(feedback(1, [1e4, float("inf"), -float("inf")]))
    r = reward(m)
    assert r[0] == r[1] == pytest.approx(0.5 + 0.5 * math.exp(30.0))  # no overflow
    assert r[2] == 1.0  # 0.5 * 1 + 0.5 * exp(0): R stays > 0
    assert np.all(np.isfinite(m.weights()))


def test_warmup_returns_static_weights_then_switches():
    # 100 steps, warm-up 10% = the first 10 steps, static = natural (100, 300, 600 tokens)
    m = odm("odm:warmup=0.1,static=natural", total_steps=100, interval=5)
    natural = [0.1, 0.3, 0.6]
    np.testing.assert_allclose(m.weights(), natural)
    m.update(feedback(5, np.log([3.0, 1.0, 5.0])))  # step 5 < 10: still warm-up
    assert m.in_warmup
    np.testing.assert_allclose(m.weights(), natural)
    assert reward(m) == pytest.approx([2.0, 1.0, 3.0])  # R is learned during warm-up
    m.update(feedback(10, np.log([1.0, 3.0, 1.0])))  # step 10: warm-up over
    assert not m.in_warmup
    assert reward(m) == pytest.approx([1.5, 2.0, 2.0])
    np.testing.assert_allclose(m.weights(), THIRD)  # ODM with t = 2: eps = 1/3


def test_default_warmup_is_two_percent_on_uniform():
    m = odm("odm", total_steps=1000)
    assert m.describe() == "odm:warmup=0.02,alpha=0.5,static=uniform"
    m.update(feedback(19, [1.0, 2.0, 3.0]))
    assert m.in_warmup
    m.update(feedback(20, [1.0, 2.0, 3.0]))
    assert not m.in_warmup


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    stream = [feedback(s, rng.uniform(1, 4, 3), rng.integers(0, 3, 3)) for s in range(1, 31)]
    a = odm("odm:warmup=0.1", total_steps=30)
    for fb in stream[:12]:
        a.update(fb)
    b = odm("odm:warmup=0.1", total_steps=30)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for fb in stream[12:]:
        np.testing.assert_array_equal(a.weights(), b.weights())
        a.update(fb)
        b.update(fb)
    assert a.state_dict() == b.state_dict()


def test_setup_resets_the_bandit():
    m = odm()
    for step in range(1, 10):
        m.update(feedback(step, [1.0, 2.0, 3.0]))
    m.setup(make_ctx())
    assert reward(m) == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(m.weights(), THIRD)
