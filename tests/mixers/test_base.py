"""The mixer contract, checked on every built-in mixer: simplex weights, call order, state."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from acodm.errors import AcodmError
from acodm.mixers import (
    IntervalFeedback,
    Mixer,
    MixerContext,
    MixerError,
    make_mixer,
    normalize_weights,
)
from tests.mixers.util import feedback, make_ctx

STATIC_SPECS = ["uniform", "natural", "temperature:0.5", "unimax:4"]
ALL_SPECS = [*STATIC_SPECS, "odm", "odm:warmup=0,static=natural", "FILE"]


@pytest.fixture
def weight_file(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"d0": 0.2, "d1": 0.3, "d2": 0.5}))
    return str(path)


def build(spec: str, weight_file: str) -> Mixer:
    return make_mixer(f"file:{weight_file}" if spec == "FILE" else spec)


# -- normalize_weights ----------------------------------------------------------------------
def test_normalize_weights_returns_new_simplex_vector():
    raw = np.array([1.0, 3.0, 0.0])
    w = normalize_weights(raw, 3)
    np.testing.assert_allclose(w, [0.25, 0.75, 0.0])
    assert w.dtype == np.float64 and w is not raw and raw[0] == 1.0


@pytest.mark.parametrize(
    "bad", [[1.0, np.nan], [1.0, np.inf], [1.0, -0.1], [0.0, 0.0], [[0.5, 0.5]], []]
)
def test_normalize_weights_rejects_bad_vectors(bad):
    with pytest.raises(MixerError):
        normalize_weights(bad)


def test_normalize_weights_checks_length():
    with pytest.raises(MixerError, match=r"shape \(3,\)"):
        normalize_weights([0.5, 0.5], 3)


def test_mixer_error_is_an_acodm_error():
    assert issubclass(MixerError, AcodmError)


# -- context and feedback -------------------------------------------------------------------
def test_context_normalises_fields():
    ctx = MixerContext(domains=["a", "b"], domain_tokens=[5, 7], total_steps=3, tokens_per_step=4)
    assert ctx.domains == ("a", "b") and ctx.k == 2 and ctx.total_tokens == 12
    assert ctx.domain_tokens.dtype == np.float64
    with pytest.raises(ValueError):
        ctx.domain_tokens[0] = 1.0  # read-only: a mixer cannot change the run's facts


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"domains": ("a", "a")}, "unique"),
        ({"domains": ()}, "non-empty"),
        ({"domain_tokens": [5, 7, 9]}, "shape"),
        ({"domain_tokens": [5, 0]}, r"\['b'\] have no training tokens"),
        ({"total_steps": 0}, "total_steps"),
        ({"tokens_per_step": 2.5}, "tokens_per_step"),
        ({"interval": True}, "interval"),
    ],
)
def test_context_validation(kwargs, match):
    base = {"domains": ("a", "b"), "domain_tokens": [5, 7], "total_steps": 3, "tokens_per_step": 4}
    with pytest.raises(MixerError, match=match):
        MixerContext(**{**base, **kwargs})


def test_feedback_validation():
    ok = {"step": 1, "loss": [1.0, np.nan], "counts": [2, 0], "epochs": [0.1, 0.0]}
    fb = IntervalFeedback(**ok)
    assert fb.k == 2 and fb.counts.dtype == np.float64
    with pytest.raises(MixerError, match="must match"):
        IntervalFeedback(**{**ok, "counts": [1, 2, 3]})
    with pytest.raises(MixerError, match="counts"):
        IntervalFeedback(**{**ok, "counts": [-1, 0]})
    with pytest.raises(MixerError, match="step"):
        IntervalFeedback(**{**ok, "step": -1})


# -- the contract, on every mixer -----------------------------------------------------------
@pytest.mark.parametrize("spec", ALL_SPECS)
def test_weights_are_a_fresh_simplex_vector_of_length_k(spec, weight_file):
    mixer = build(spec, weight_file)
    mixer.setup(make_ctx())
    for step in range(1, 6):
        w = mixer.weights()
        assert w.shape == (3,) and w.dtype == np.float64
        assert np.all(w >= 0) and w.sum() == pytest.approx(1.0, abs=1e-12)
        w[:] = 0.0  # the caller may scribble on it
        assert mixer.weights().sum() == pytest.approx(1.0)
        mixer.update(feedback(step, [3.0, 2.0, 1.0]))


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_calls_before_setup_are_clear_errors(spec, weight_file):
    mixer = build(spec, weight_file)
    for call in (mixer.weights, mixer.state_dict, lambda: mixer.update(feedback(1, [1, 1, 1]))):
        with pytest.raises(MixerError, match=r"not set up: call setup"):
            call()


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_update_with_wrong_number_of_domains_is_an_error(spec, weight_file):
    mixer = build(spec, weight_file)
    mixer.setup(make_ctx())
    with pytest.raises(MixerError, match="2 values per array but the run has 3 domains"):
        mixer.update(feedback(1, [1.0, 2.0]))


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_describe_is_a_spec_for_the_same_mixer(spec, weight_file):
    mixer = build(spec, weight_file)
    again = make_mixer(mixer.describe())
    assert type(again) is type(mixer) and again.describe() == mixer.describe()
    mixer.setup(make_ctx())
    again.setup(make_ctx())
    np.testing.assert_array_equal(again.weights(), mixer.weights())


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_state_dict_round_trips_through_json(spec, weight_file):
    mixer = build(spec, weight_file)
    mixer.setup(make_ctx())
    for step in (1, 2, 3, 4, 5):
        mixer.update(feedback(step, [1.0, 2.0, 3.0]))
    state = json.loads(json.dumps(mixer.state_dict()))
    assert state["mixer"] == mixer.name and state["domains"] == ["d0", "d1", "d2"]
    fresh = build(spec, weight_file)
    fresh.setup(make_ctx())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.weights(), mixer.weights())


def test_load_state_dict_checks_mixer_domains_and_version():
    odm = make_mixer("odm")
    odm.setup(make_ctx())
    state = odm.state_dict()
    other = make_mixer("uniform")
    other.setup(make_ctx())
    with pytest.raises(MixerError, match="saved by mixer 'odm'"):
        other.load_state_dict(state)
    renamed = make_mixer("odm")
    renamed.setup(make_ctx(domains=("x", "d1", "d2")))
    with pytest.raises(MixerError, match="domains"):
        renamed.load_state_dict(state)
    with pytest.raises(MixerError, match="version"):
        odm.load_state_dict({**state, "version": 99})


def test_load_state_dict_warns_when_settings_differ():
    saved = make_mixer("odm:alpha=0.9")
    saved.setup(make_ctx())
    mixer = make_mixer("odm")
    mixer.setup(make_ctx())
    with pytest.warns(UserWarning, match="alpha=0.9"):
        mixer.load_state_dict(saved.state_dict())
