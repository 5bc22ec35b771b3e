"""The interval record (IntervalFeedback): one object for mixers, the env's reward and the actor."""

from __future__ import annotations

import numpy as np
import pytest

from acodm.dynamics.features import Dynamics
from acodm.mixers import IntervalFeedback, MixerError


def dynamics(step: int, k: int = 2) -> Dynamics:
    z = np.zeros(k)
    return Dynamics(
        step=step,
        progress=0.5,
        loss=z + 1.0,
        loss_change=z,
        share=z + 1.0 / k,
        epochs=z,
        alignment=z,
        gram=np.zeros((k, k)),
        weight_norm=np.ones(3),
        weight_distance=np.zeros(3),
    )


def test_the_record_carries_its_dynamics_typed_and_once():
    dyn = dynamics(4)
    fb = IntervalFeedback(4, [1.0, np.nan], [3, 0], [0.1, 0.0], dynamics=dyn)
    assert fb.need_dynamics("the actor") is dyn
    assert not hasattr(fb, "extras")  # the alignment scores live in dynamics only


def test_dynamics_of_another_interval_are_refused():
    with pytest.raises(MixerError, match=r"step 3 .* step 4"):
        IntervalFeedback(4, [1.0, 2.0], [1, 1], [0.0, 0.0], dynamics=dynamics(3))
    with pytest.raises(MixerError, match="3 domains"):
        IntervalFeedback(4, [1.0, 2.0], [1, 1], [0.0, 0.0], dynamics=dynamics(4, k=3))


def test_a_hand_built_feedback_has_no_dynamics_and_says_who_needs_them():
    fb = IntervalFeedback(step=1, loss=[1.0, 2.0], counts=[1, 1], epochs=[0.0, 0.0])
    with pytest.raises(MixerError, match="the ddpg mixer needs the interval's dynamics"):
        fb.need_dynamics("the ddpg mixer")
