"""The mixer interface: what every data-mixing strategy looks like to the trainer.

A mixer gives the domain weights for the next interval (``K`` optimizer steps) and receives
that interval's feedback. Static baselines, UniMax, ODM and the learned actor are all mixers,
so the trainer and the experiments treat them alike::

    mixer = make_mixer("unimax:4")
    mixer.setup(MixerContext(domains=store.domains, domain_tokens=..., total_steps=1000,
                             tokens_per_step=64 * 512, interval=10))
    while training:
        sampler.set_weights(mixer.weights())      # store domain order
        ...                                       # K optimizer steps
        mixer.update(IntervalFeedback(step=..., loss=..., counts=..., epochs=...))

Subclasses implement the hooks ``_weights`` (required), ``_prepare``, ``_update``,
``_state`` / ``_load_state`` and ``describe``; the public methods around them check the
call order and the shapes, and guarantee that :meth:`Mixer.weights` is a float64 vector
on the simplex in store order.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from acodm.data.weights import normalize_weights
from acodm.errors import MixerError

if TYPE_CHECKING:
    import torch

    from acodm.dynamics.features import Dynamics

MIXER_STATE_VERSION = 1


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise MixerError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True, eq=False)
class MixerContext:
    """What a mixer knows about the run, given once in :meth:`Mixer.setup`.

    ``domains``: the store's domain names, in the order every weight vector uses.
    ``domain_tokens``: ``(k,)`` training tokens per domain in the store (all > 0).
    ``total_steps``: optimizer steps in the run. ``tokens_per_step``: tokens consumed per
    optimizer step, all ranks together. ``interval``: optimizer steps between two mixer
    decisions (``K`` in METHOD.md). ``seed``: for mixers that draw random numbers.

    ``eq=False``: a dataclass ``__eq__`` would compare the arrays element-wise and fail.
    """

    domains: tuple[str, ...]
    domain_tokens: np.ndarray
    total_steps: int
    tokens_per_step: int
    interval: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        domains = tuple(self.domains)
        if not domains or not all(isinstance(d, str) and d for d in domains):
            raise MixerError(f"domains must be a non-empty sequence of names, got {domains!r}")
        dupes = sorted({d for d in domains if domains.count(d) > 1})
        if dupes:
            raise MixerError(f"domain names must be unique; repeated: {dupes}")
        tokens = np.array(self.domain_tokens, dtype=np.float64)
        if tokens.shape != (len(domains),):
            raise MixerError(
                f"domain_tokens must have shape ({len(domains)},) for domains {list(domains)}, "
                f"got shape {tokens.shape}"
            )
        bad = [d for d, n in zip(domains, tokens, strict=True) if not (math.isfinite(n) and n > 0)]
        if bad:
            raise MixerError(f"domains {bad} have no training tokens (or a non-finite count)")
        for name in ("total_steps", "tokens_per_step", "interval"):
            _positive_int(name, getattr(self, name))
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "domains", domains)
        object.__setattr__(self, "domain_tokens", _readonly(tokens))

    @property
    def k(self) -> int:
        """Number of domains."""
        return len(self.domains)

    @property
    def total_tokens(self) -> int:
        """Training tokens of the whole run: ``total_steps * tokens_per_step``."""
        return self.total_steps * self.tokens_per_step


@dataclass(frozen=True, eq=False)
class IntervalFeedback:
    """The one record of an interval: what a mixer, the env's reward and the actor all read.

    All arrays ``(k,)``, store order. ``step``: optimizer steps done so far (end of the
    interval). ``loss``: mean training loss per domain in the interval, NaN where the domain
    got no samples. ``counts``: sequences drawn per domain in the interval. ``epochs``: epochs
    of each domain consumed so far. ``dynamics``: the interval's full
    :class:`~acodm.dynamics.features.Dynamics` (alignment scores, Gram, layer statistics,
    console features: what a learned policy observes and the reward reads) when the interval
    was measured (acodm's trainer and :class:`~acodm.dynamics.probe.DynamicsProbe` always set
    it); None in a feedback built by hand (static mixers need only the four arrays). When
    given, its ``step`` and length must match.
    """

    step: int
    loss: np.ndarray
    counts: np.ndarray
    epochs: np.ndarray
    dynamics: Dynamics | None = None

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int | np.integer):
            raise MixerError(f"feedback step must be an integer, got {self.step!r}")
        if self.step < 0:
            raise MixerError(f"feedback step must be >= 0, got {self.step}")
        for name in ("loss", "counts", "epochs"):
            a = np.array(getattr(self, name), dtype=np.float64)
            if a.ndim != 1:
                raise MixerError(f"feedback {name} must be 1-D (one value per domain)")
            object.__setattr__(self, name, _readonly(a))
        if not self.loss.shape == self.counts.shape == self.epochs.shape:
            raise MixerError(
                f"feedback loss, counts, epochs have shapes {self.loss.shape}, "
                f"{self.counts.shape}, {self.epochs.shape}; they must match"
            )
        if np.any(~np.isfinite(self.counts)) or np.any(self.counts < 0):
            raise MixerError(f"feedback counts must be finite and >= 0: {self.counts.tolist()}")
        dyn = self.dynamics
        if dyn is not None and (dyn.step != self.step or np.shape(dyn.loss) != self.loss.shape):
            raise MixerError(
                f"feedback dynamics are of step {dyn.step} with {np.size(dyn.loss)} domains, the "
                f"feedback of step {self.step} with {self.k}; build both from one interval"
            )

    @property
    def k(self) -> int:
        return int(self.loss.size)

    def need_dynamics(self, who: str) -> Dynamics:
        """``dynamics``, or a :class:`MixerError` saying that ``who`` needs them."""
        if self.dynamics is None:
            raise MixerError(f"{who} needs the interval's dynamics; run with dynamics=True")
        return self.dynamics


class Mixer(ABC):
    """A data-mixing strategy: domain weights for the next interval, updated from feedback.

    Call order: :meth:`setup` once, then alternately :meth:`weights` and :meth:`update`;
    :meth:`load_state_dict` after :meth:`setup` to resume.
    """

    name: ClassVar[str]
    #: How the spec is written, for help texts: ``"unimax:N"`` (:func:`~acodm.mixers.spec.mixer_usage`).
    usage: ClassVar[str] = ""
    #: A spec that builds this mixer, run by the mixer contract tests: ``"unimax:4"``.
    #: ``{placeholders}`` stand for files the example needs, which the tests build:
    #: ``{weights}`` (a ``file:`` weights JSON), ``{ref}`` (a DoReMi reference file),
    #: ``{policy}`` (an exported policy folder).
    example: ClassVar[str] = ""
    #: Probe windows per domain of the store's reward split that the trainer measures after
    #: every interval for this mixer (``feedback.dynamics.probe_loss``; the ``ddpg`` mixer's
    #: probe reward); 0: none (every mixer but that one).
    probe_windows: int = 0

    def __init__(self) -> None:
        self._ctx: MixerContext | None = None

    # -- public API (template methods) -------------------------------------------------
    @property
    def ctx(self) -> MixerContext:
        """The run context; a :class:`MixerError` before :meth:`setup`."""
        if self._ctx is None:
            raise MixerError(
                f"mixer {self.describe()!r} is not set up: call setup(MixerContext(...)) first"
            )
        return self._ctx

    def setup(self, ctx: MixerContext) -> None:
        """Check the mixer against the run (e.g. a file's domain names) and store ``ctx``."""
        if not isinstance(ctx, MixerContext):
            raise MixerError(f"setup() needs a MixerContext, got {type(ctx).__name__}")
        self._prepare(ctx)
        self._ctx = ctx

    def weights(self) -> np.ndarray:
        """``(k,)`` float64 weights on the simplex, in store order, for the next interval."""
        ctx = self.ctx
        what = f"weights of mixer {self.describe()!r}"
        return normalize_weights(self._weights(), what=what, domains=ctx.domains)

    def update(self, feedback: IntervalFeedback) -> None:
        """Take the feedback of the interval that just ended (static mixers ignore it)."""
        ctx = self.ctx
        if feedback.k != ctx.k:
            raise MixerError(
                f"feedback has {feedback.k} values per array but the run has {ctx.k} domains"
            )
        self._update(feedback)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; :meth:`load_state_dict` on a set-up mixer restores it."""
        return {
            "version": MIXER_STATE_VERSION,
            "mixer": self.name,
            "spec": self.describe(),
            "domains": list(self.ctx.domains),
            "state": self._state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the mixer must be set up on the same domains)."""
        ctx = self.ctx
        if state.get("version") != MIXER_STATE_VERSION:
            raise MixerError(
                f"mixer state version {state.get('version')!r} is not {MIXER_STATE_VERSION}; "
                "the checkpoint comes from another acodm version"
            )
        if state.get("mixer") != self.name:
            raise MixerError(
                f"mixer state was saved by mixer {state.get('mixer')!r}, this is {self.name!r}"
            )
        if list(state.get("domains", [])) != list(ctx.domains):
            raise MixerError(
                f"mixer state has domains {state.get('domains')}, the run has {list(ctx.domains)}"
            )
        if state.get("spec") != self.describe():
            warnings.warn(
                f"mixer state was saved by {state.get('spec')!r}; continuing with the settings "
                f"of {self.describe()!r}",
                stacklevel=2,
            )
        self._load_state(state.get("state", {}))

    def tensor_state(self) -> dict[str, torch.Tensor]:
        """Learned state too large for JSON (networks, buffers) as named CPU tensors, saved
        beside :meth:`state_dict` in the run checkpoint's ``extra.safetensors`` (no pickle).
        Default: none; only a mixer that learns a network needs it."""
        return {}

    def load_tensor_state(self, tensors: Mapping[str, torch.Tensor]) -> None:  # noqa: B027
        """Restore :meth:`tensor_state` output; called right after :meth:`load_state_dict`."""

    @abstractmethod
    def describe(self) -> str:
        """One line for logs and config.json; a spec :func:`make_mixer` accepts."""

    # -- hooks for subclasses ----------------------------------------------------------
    def _prepare(self, ctx: MixerContext) -> None:  # noqa: B027 (optional hook)
        """Validate against and precompute from ``ctx``; raise :class:`MixerError` if unfit."""

    @abstractmethod
    def _weights(self) -> np.ndarray:
        """Unnormalised or normalised ``(k,)`` weights; :meth:`weights` validates them."""

    def _update(self, feedback: IntervalFeedback) -> None:  # noqa: B027 (optional hook)
        """Learn from one interval's feedback (shapes already checked). Default: nothing."""

    def _state(self) -> dict[str, Any]:
        """JSON-serialisable learned state (default: none)."""
        return {}

    def _load_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`_state` output."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def format_number(x: float) -> str:
    """Shortest text that parses back to ``x``: ``4`` rather than ``4.0``, ``0.1`` as is."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))
