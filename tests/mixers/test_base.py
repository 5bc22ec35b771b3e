"""The mixer contract, checked on every built-in mixer: simplex weights, call order, state."""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from acodm.dynamics.features import Dynamics
from acodm.errors import AcodmError
from acodm.mixers import (
    IntervalFeedback,
    MixerContext,
    MixerError,
    known_mixers,
    make_mixer,
    mixer_example,
    normalize_weights,
    register_mixer,
)
from tests.mixers.util import feedback, make_ctx, private_registry, write_ref

DOMAINS, N_LAYERS = ("d0", "d1", "d2"), 3  # make_ctx()'s domains; layers of the dynamics
# Every registered mixer (plugins included) by its own example spec, so a mixer is under the
# contract the moment it is registered; then variants no example covers (they hold a ':').
CASES = [*known_mixers(), "odm:warmup=0,static=natural"]


def _weights(folder: Path) -> str:
    path = folder / "w.json"
    path.write_text(json.dumps({"d0": 0.2, "d1": 0.3, "d2": 0.5}))
    return str(path)


def _ref(folder: Path) -> str:
    return write_ref(folder / "ref.json", {"d0": 2.0, "d1": 3.0, "d2": 1.0})


def _policy(folder: Path) -> str:
    """An untrained actor (any deterministic map will do) for the default observation of
    DOMAINS with N_LAYERS layers, exported as `acodm train-policy` does."""
    import gymnasium as gym
    from gymnasium import spaces

    from acodm.envs import DEFAULT_FEATURES, ObservationSpec
    from acodm.policies.agent import make_agent, small
    from acodm.policies.export import export_actor

    spec = ObservationSpec(DEFAULT_FEATURES, len(DOMAINS), N_LAYERS)
    env = gym.Env()
    env.observation_space = spaces.Box(*spec.bounds(), dtype=np.float32)
    env.action_space = spaces.Box(-1.0, 1.0, (len(DOMAINS),), dtype=np.float32)
    agent = make_agent(env, small(net_arch=(8,), seed=0))
    out = folder / "policy"
    export_actor(
        agent, out, domains=DOMAINS, observation=spec.to_dict(), beta=1.0, eps=0.15, interval=1
    )
    return str(out)


#: What fills each placeholder of an example spec (see Mixer.example).
_FILES: dict[str, Callable[[Path], str]] = {"weights": _weights, "ref": _ref, "policy": _policy}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """``spec(case)``: a contract case as a spec, its example's files built (once each)."""
    folder = tmp_path_factory.mktemp("mixer-examples")
    built: dict[str, str] = {}

    def spec(case: str) -> str:
        template = case if ":" in case else mixer_example(case)  # loud for a mixer without one
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        unknown = sorted(fields - set(_FILES))
        assert not unknown, f"no fixture builds {unknown} of example {template!r}: add to _FILES"
        for f in fields - set(built):
            built[f] = _FILES[f](folder)
        return template.format(**{f: built[f] for f in fields})

    return spec


def update(step: int, loss: list[float]) -> IntervalFeedback:
    """Feedback with the interval's dynamics, which the learned mixers observe."""
    fb = feedback(step, loss)
    k, rng = len(loss), np.random.default_rng(step)
    dyn = Dynamics(
        step=step, progress=step / 100, loss=fb.loss, loss_change=rng.normal(size=k),
        share=np.full(k, 1 / k), epochs=np.full(k, step / 50), alignment=rng.normal(size=k),
        gram=np.eye(k), weight_norm=1 + rng.uniform(size=N_LAYERS),
        weight_distance=rng.uniform(size=N_LAYERS),
    )  # fmt: skip
    return IntervalFeedback(fb.step, fb.loss, fb.counts, fb.epochs, dynamics=dyn)


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
@pytest.mark.parametrize("case", CASES)
def test_weights_are_a_fresh_simplex_vector_of_length_k(case, example):
    mixer = make_mixer(example(case))
    mixer.setup(make_ctx())
    for step in range(1, 6):
        w = mixer.weights()
        assert w.shape == (3,) and w.dtype == np.float64
        assert np.all(w >= 0) and w.sum() == pytest.approx(1.0, abs=1e-12)
        w[:] = 0.0  # the caller may scribble on it
        assert mixer.weights().sum() == pytest.approx(1.0)
        mixer.update(update(step, [3.0, 2.0, 1.0]))


@pytest.mark.parametrize("case", CASES)
def test_calls_before_setup_are_clear_errors(case, example):
    mixer = make_mixer(example(case))
    for call in (mixer.weights, mixer.state_dict, lambda: mixer.update(update(1, [1, 1, 1]))):
        with pytest.raises(MixerError, match=r"not set up: call setup"):
            call()


@pytest.mark.parametrize("case", CASES)
def test_update_with_wrong_number_of_domains_is_an_error(case, example):
    mixer = make_mixer(example(case))
    mixer.setup(make_ctx())
    with pytest.raises(MixerError, match="2 values per array but the run has 3 domains"):
        mixer.update(update(1, [1.0, 2.0]))


@pytest.mark.parametrize("case", CASES)
def test_describe_is_a_spec_for_the_same_mixer(case, example):
    mixer = make_mixer(example(case))
    again = make_mixer(mixer.describe())
    assert type(again) is type(mixer) and again.describe() == mixer.describe()
    mixer.setup(make_ctx())
    again.setup(make_ctx())
    np.testing.assert_array_equal(again.weights(), mixer.weights())


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trips_through_json(case, example):
    mixer = make_mixer(example(case))
    mixer.setup(make_ctx())
    for step in (1, 2, 3, 4, 5):
        mixer.update(update(step, [1.0, 2.0, 3.0]))
    state = json.loads(json.dumps(mixer.state_dict()))
    assert state["mixer"] == mixer.name and state["domains"] == ["d0", "d1", "d2"]
    fresh = make_mixer(example(case))
    fresh.setup(make_ctx())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.weights(), mixer.weights())


def test_every_registered_mixer_is_under_the_contract():
    assert {"uniform", "file", "unimax", "odm", "doremi", "actor", "ddpg"} <= set(CASES)
    for name in known_mixers():  # each example builds its own mixer
        assert mixer_example(name).partition(":")[0] == name


def test_a_mixer_registered_without_an_example_fails_the_contract(monkeypatch, example):
    private_registry(monkeypatch)
    register_mixer("no-example", lambda arg: make_mixer("uniform"))
    assert "no-example" in known_mixers()  # so the contract tests would collect it
    with pytest.raises(MixerError, match=r"'no-example' declares no example spec.*example ="):
        example("no-example")
    register_mixer("no-example", lambda arg: make_mixer("uniform"), replace=True, example="x")
    assert mixer_example("no-example") == "x"


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
