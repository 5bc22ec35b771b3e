"""Domain weights are checked by one function with one error, wherever they enter."""

from __future__ import annotations

import numpy as np
import pytest

from acodm.data.sampler import DomainSampler
from acodm.data.weights import normalize_weights
from acodm.errors import MixerError, SamplerError, WeightsError
from acodm.mixers import Mixer
from tests.fixtures import make_position_store
from tests.mixers.util import make_ctx

BAD = [[0.5, -0.5, 1.0], [np.nan, 0.5, 0.5], [0.0, 0.0, 0.0], [0.5, 0.5]]


class Returns(Mixer):
    """A user's mixer that returns whatever it is given."""

    name = "returns"

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.w = w

    def describe(self) -> str:
        return self.name

    def _weights(self) -> np.ndarray:
        return np.asarray(self.w)


@pytest.mark.parametrize("bad", BAD)
def test_the_mixer_and_the_sampler_refuse_bad_weights_alike(tmp_path, bad):
    store = make_position_store(tmp_path / "s", {"a": 300, "b": 300, "c": 300})
    sampler = DomainSampler(store, seq_len=8, batch_size=2)
    with pytest.raises(WeightsError) as at_sampler:
        sampler.set_weights(bad)
    mixer = Returns(bad)
    mixer.setup(make_ctx(domains=("a", "b", "c")))
    with pytest.raises(WeightsError) as at_mixer:
        mixer.weights()
    # one rule: the same problem is named the same way (only the vector's name differs)
    assert str(at_sampler.value).split(" must ")[1] == str(at_mixer.value).split(" must ")[1]
    assert isinstance(at_sampler.value, SamplerError) and isinstance(at_mixer.value, MixerError)


def test_weights_by_name_follow_the_domain_order():
    w = normalize_weights({"b": 1.0, "a": 3.0}, domains=("a", "b"))
    np.testing.assert_array_equal(w, [0.75, 0.25])
    with pytest.raises(WeightsError, match="need the domain names"):
        normalize_weights({"a": 1.0})
