"""Static mixers: hand-computed natural / temperature weights, the weight-file checks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from acodm.mixers import FileMixer, MixerError, TemperatureMixer, make_mixer
from tests.mixers.util import make_ctx


def weights_of(spec: str, tokens=(100, 300, 600), domains=None) -> np.ndarray:
    mixer = make_mixer(spec)
    mixer.setup(make_ctx(tokens, domains))
    return mixer.weights()


def test_uniform():
    np.testing.assert_array_equal(weights_of("uniform", (1, 10, 100, 1000)), [0.25] * 4)


def test_natural_is_token_proportional():
    np.testing.assert_allclose(weights_of("natural", (100, 300, 600)), [0.1, 0.3, 0.6])


def test_temperature_on_a_hand_example():
    # sqrt of (100, 400, 1600) / 2100 is proportional to (10, 20, 40): weights 1/7, 2/7, 4/7
    np.testing.assert_allclose(
        weights_of("temperature:0.5", (100, 400, 1600)), [1 / 7, 2 / 7, 4 / 7]
    )


def test_temperature_one_is_natural_and_small_temperature_tends_to_uniform():
    np.testing.assert_allclose(weights_of("temperature:1"), weights_of("natural"))
    # skewed by 1e12: a naive (n / sum n) ** T would still work, but must not underflow either
    w = weights_of("temperature:1e-6", (1, 1e12))
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-4)
    assert w[0] > 0


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_positive_and_finite(t):
    with pytest.raises(MixerError, match="temperature T"):
        TemperatureMixer(t)


# -- file ----------------------------------------------------------------------------------
DOMAINS = ("code", "news", "wiki")


def write(tmp_path, obj, name="w.json") -> str:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_file_round_trip_in_store_order(tmp_path):
    # the file's key order differs from the store's: weights follow the store
    path = write(tmp_path, {"wiki": 0.5, "code": 0.2, "news": 0.3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sums to 1: no normalisation warning
        w = weights_of(f"file:{path}", domains=DOMAINS)
    np.testing.assert_allclose(w, [0.2, 0.3, 0.5])


def test_file_allows_zero(tmp_path):
    path = write(tmp_path, {"code": 0, "news": 0.25, "wiki": 0.75})
    np.testing.assert_allclose(weights_of(f"file:{path}", domains=DOMAINS), [0.0, 0.25, 0.75])


def test_file_normalises_with_a_warning(tmp_path):
    path = write(tmp_path, {"code": 2, "news": 3, "wiki": 5})
    with pytest.warns(UserWarning, match=r"sum to 10, not 1; normalised"):
        w = weights_of(f"file:{path}", domains=DOMAINS)
    np.testing.assert_allclose(w, [0.2, 0.3, 0.5])


def test_file_tolerates_rounding_without_warning(tmp_path):
    path = write(tmp_path, {"code": 0.2, "news": 0.3, "wiki": 0.5 + 5e-7})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights_of(f"file:{path}", domains=DOMAINS)


def test_file_unknown_and_missing_names_are_named(tmp_path):
    path = write(tmp_path, {"code": 0.5, "wikipedia": 0.5})
    mixer = make_mixer(f"file:{path}")
    with pytest.raises(MixerError) as err:
        mixer.setup(make_ctx(domains=DOMAINS))
    assert "unknown domains ['wikipedia']" in str(err.value)
    assert "missing domains ['news', 'wiki']" in str(err.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"code": -0.1, "news": 0.6, "wiki": 0.5}, r"finite numbers >= 0.*code"),
        ('{"code": NaN, "news": 0.5, "wiki": 0.5}', r"finite numbers >= 0.*code"),
        ({"code": "0.5", "news": 0.5, "wiki": 0}, r"finite numbers >= 0.*code"),
        ([0.2, 0.3, 0.5], "JSON object"),
        ("{not json", "not readable JSON"),
    ],
)
def test_file_bad_values(tmp_path, content, match):
    with pytest.raises(MixerError, match=match):
        FileMixer(write(tmp_path, content))


def test_file_all_zero_is_an_error(tmp_path):
    mixer = FileMixer(write(tmp_path, {"code": 0, "news": 0, "wiki": 0}))
    with pytest.raises(MixerError, match="not all zero"):
        mixer.setup(make_ctx(domains=DOMAINS))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MixerError, match="does not exist"):
        make_mixer(f"file:{tmp_path / 'nope.json'}")


def test_file_edited_since_checkpoint_is_detected(tmp_path):
    path = write(tmp_path, {"code": 0.2, "news": 0.3, "wiki": 0.5})
    mixer = make_mixer(f"file:{path}")
    mixer.setup(make_ctx(domains=DOMAINS))
    state = json.loads(json.dumps(mixer.state_dict()))
    write(tmp_path, {"code": 0.5, "news": 0.3, "wiki": 0.2})
    resumed = make_mixer(f"file:{path}")
    resumed.setup(make_ctx(domains=DOMAINS))
    with pytest.raises(MixerError, match="changed since the checkpoint"):
        resumed.load_state_dict(state)
