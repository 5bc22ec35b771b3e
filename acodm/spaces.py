"""The MDP's pure parts: action -> weights, observation vector, reward (METHOD.md, "The environment").

Everything here is a pure function of numpy arrays (or of a :class:`Dynamics`), so it is unit
tested on its own and shared by the environment (:mod:`acodm.envs.data_mixing`) and by an
exported actor that drives a target run: the target must compute *exactly* the same
observation, which is why the feature list lives in a serialisable :class:`ObservationSpec`.

Shapes: ``k`` domains (any ``k >= 2``), ``n_layers`` monitored layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from acodm.data.weights import feasible_caps, project_capped
from acodm.dynamics.interval import AGENT_FEATURES, Dynamics
from acodm.dynamics.standardize import zscore
from acodm.errors import AcodmError

if TYPE_CHECKING:
    from acodm.mixers.base import MixerContext

# ---------------------------------------------------------------------------------------
# Action -> weights
# ---------------------------------------------------------------------------------------

#: Default uniform floor: the paper forces one micro-batch per domain per step, about 15% of
#: every batch (METHOD.md, "Action").
DEFAULT_EPS = 0.15
#: Default softmax temperature. With ``a`` in [-1, 1] and beta = 1 the softmax part spans a
#: weight ratio of at most e^2 ~ 7.4 between two domains; larger beta lets the actor be more
#: decisive (the ratio bound is e^(2 beta)).
DEFAULT_BETA = 1.0


class SpaceError(AcodmError):
    """An action, observation spec or reward term is invalid."""


def check_mapping(beta: float, eps: float) -> None:
    """The one check of the action mapping's parameters (the env, the exported policy, the
    online mixer and the expert's inverse mapping all use it): ``beta`` finite and > 0,
    ``eps`` in [0, 1]."""
    if not (math.isfinite(beta) and beta > 0):
        raise SpaceError(f"beta must be a finite number > 0, got {beta!r}")
    if not (0.0 <= eps <= 1.0):
        raise SpaceError(f"eps (the uniform floor) must be in [0, 1], got {eps!r}")


def action_to_weights(
    action: np.ndarray | Sequence[float], beta: float = DEFAULT_BETA, eps: float = DEFAULT_EPS
) -> np.ndarray:
    """Map an action ``a`` (k,) to sampling weights on the simplex, float64 (k,).

    ``w = (1 - eps) * softmax(beta * a) + eps / k`` (METHOD.md, "Action"). So ``sum w = 1``,
    ``w_i >= eps / k`` (every domain keeps a measurable gradient), and permuting ``a``
    permutes ``w`` the same way. Actions outside [-1, 1] are not clipped here: the mapping
    is well defined for any finite ``a``, and clipping is the policy's (or the space's) job.
    """
    a = np.asarray(action, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] < 2:
        raise SpaceError(
            f"the action must be a vector of k >= 2 domain scores, got shape {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise SpaceError(f"the action has NaN/inf entries: {a.tolist()}")
    check_mapping(beta, eps)
    k = a.shape[0]
    z = beta * a
    e = np.exp(z - z.max())  # shift for numerical stability; softmax is shift-invariant
    soft = e / e.sum()
    w: np.ndarray = (1.0 - eps) * soft + eps / k
    return w / w.sum()  # remove the last ulp of rounding so sum(w) == 1 to float64 precision


def weights_to_action(
    weights: np.ndarray, beta: float = DEFAULT_BETA, eps: float = DEFAULT_EPS
) -> np.ndarray:
    """Inverse of :func:`action_to_weights` up to the softmax's free constant, clipped to [-1, 1].

    ``p = (w - eps/k) / (1 - eps)`` is the softmax part; ``a = log(p) / beta + c``. The constant
    ``c`` centres the action on the mid-range of ``log(p) / beta`` so the widest range of weights
    is representable: every ``w`` with ``max(p) / min(p) <= exp(2 beta)`` round-trips exactly.
    **Lossy beyond that ratio** (e^2 ~ 7.4 at the default beta = 1): such weights are clipped
    to the nearest reachable mixture. Weights below the floor ``eps / k`` are unreachable and
    treated as a tiny positive ``p``; with ``eps = 1`` every action maps to the uniform
    mixture, so the zero action is returned. Used to turn an expert's weights (e.g. an ODM
    bandit during warm-up, METHOD.md "The agent") into actions for the replay buffer.
    ``weights``: ``(k,)`` or a batch ``(n, k)``; float32 like the action space.
    """
    check_mapping(beta, eps)
    w = np.asarray(weights, dtype=np.float64)
    if eps == 1.0:
        return np.zeros(w.shape, dtype=np.float32)
    k = w.shape[-1]
    p = np.clip((w - eps / k) / (1.0 - eps), 1e-12, None)
    logits = np.log(p) / beta
    centre = 0.5 * (logits.max(axis=-1, keepdims=True) + logits.min(axis=-1, keepdims=True))
    return np.clip(logits - centre, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------
# The residual action: a multiplicative change of a prior mixture, within the epoch caps
# (METHOD.md, "Action around a prior, with caps")
# ---------------------------------------------------------------------------------------

#: The action mappings: ``softmax`` (acodm/DataMixing-v0, around uniform) and ``residual``.
ACTION_KINDS = ("softmax", "residual")
#: Default beta of the residual action: ``exp(beta * a)`` with ``a`` in [-1, 1] scales a
#: domain's prior share by 1/4 to 4 before renormalising (a ratio of up to 16 between two
#: domains). Wide enough to reach the static rules from one another in a data-constrained
#: regime (UniMax halves or quarters a small domain's uniform share; from a uniform prior
#: over 5 domains one domain can reach 80% or fall to 1.5%), narrow enough that the
#: exploration noise (sigma 0.1) moves a share by about 15%.
DEFAULT_RESIDUAL_BETA = math.log(4.0)
#: The default prior rule, resolved by :func:`resolve_prior`.
AUTO_PRIOR = "auto"
#: UniMax's epoch cap N of the ``auto`` prior when the run sets no ``max_epochs``.
DEFAULT_PRIOR_EPOCHS = 4.0


def _action_vector(action: np.ndarray | Sequence[float]) -> np.ndarray:
    a = np.asarray(action, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] < 1:
        raise SpaceError(f"the action must be a vector of domain scores, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise SpaceError(f"the action has NaN/inf entries: {a.tolist()}")
    return a


def _prior_vector(prior: np.ndarray | Sequence[float], k: int) -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (k,) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise SpaceError(
            f"the prior must be a mixture of the {k} domains (finite, >= 0, not all zero), "
            f"got {p.tolist()}"
        )
    return p


def residual_weights(
    action: np.ndarray | Sequence[float],
    prior: np.ndarray | Sequence[float],
    beta: float = DEFAULT_RESIDUAL_BETA,
    caps: np.ndarray | Sequence[float] | None = None,
) -> np.ndarray:
    """Map an action ``a`` (k,) to weights around ``prior``, float64 (k,).

    ``w = project(normalise(prior * exp(beta * a)), caps)``: a multiplicative change of the
    prior mixture, projected onto the capped simplex (:func:`acodm.data.weights.project_capped`,
    the KL projection) when ``caps`` are given (:func:`acodm.data.weights.feasible_caps`).
    ``a = 0`` gives the (projected) prior bit for bit, so a policy whose output is zero, such
    as an actor with a zero-initialised last layer, *is* the prior. A domain with prior 0
    stays at 0. Permuting ``a``, ``prior`` and ``caps`` alike permutes ``w``. Not clipped.
    """
    a = _action_vector(action)
    p = _prior_vector(prior, a.shape[0])
    check_mapping(beta, 0.0)
    if np.any(a):
        z = beta * a
        e = p * np.exp(z - z.max())  # shift for stability; the normalisation removes it
        w = e / e.sum()
    elif abs(p.sum() - 1.0) <= 1e-12:
        w = p.copy()  # the prior itself, bits included (no renormalising round trip)
    else:
        w = p / p.sum()
    return w if caps is None else project_capped(w, caps)


def residual_action(
    weights: np.ndarray,
    prior: np.ndarray | Sequence[float],
    beta: float = DEFAULT_RESIDUAL_BETA,
) -> np.ndarray:
    """Inverse of :func:`residual_weights` (without caps), clipped to [-1, 1]; float32.

    ``a = log(w / prior) / beta + c``, with the free constant ``c`` centring the action on
    the mid-range of ``log(w / prior) / beta``, so every ``w`` whose ratios to the prior
    span at most ``exp(2 beta)`` (16 at the default beta) round-trips exactly. **Lossy beyond
    that range** (such weights are clipped to the nearest reachable mixture), for weights the
    caps moved (the projection is not inverted), and where ``w`` or the prior is 0 (treated
    as a tiny positive share). Turns an expert's weights (the ODM bandit of the warm-up) into
    residual actions for the replay buffer. ``weights``: ``(k,)`` or a batch ``(n, k)``.
    """
    check_mapping(beta, 0.0)
    w = np.asarray(weights, dtype=np.float64)
    p = _prior_vector(prior, w.shape[-1])
    logits = np.log(np.clip(w, 1e-12, None) / np.clip(p / p.sum(), 1e-12, None)) / beta
    centre = 0.5 * (logits.max(axis=-1, keepdims=True) + logits.min(axis=-1, keepdims=True))
    return np.clip(logits - centre, -1.0, 1.0).astype(np.float32)


def resolve_prior(rule: str | None, max_epochs: float | None = None) -> str:
    """The prior rule as a static mixer spec that each run computes from its own context.

    ``None`` or ``"auto"`` (the default): ``unimax:N`` with ``N = max_epochs``, or
    ``DEFAULT_PRIOR_EPOCHS`` (4) without a cap. Why UniMax: it is the strongest static rule
    measured under data constraints (BENCHMARKS.md; Chung et al. 2023), it *is* uniform
    whenever no domain would repeat beyond N epochs under uniform weights (so the rule picks
    between UniMax and uniform by itself, from the run's own budget and store), and with
    ``N = max_epochs`` it lies within the epoch caps at the start of the run, so the
    untrained policy needs no projection there. Any other static rule computed from the run
    alone may be given: ``uniform``, ``natural``, ``temperature:T``, ``unimax:N`` (not
    ``file:PATH``, whose path need not exist on a target).
    """
    from acodm.mixers import make_mixer
    from acodm.mixers.base import format_number
    from acodm.mixers.static import StaticMixer

    if rule is None or rule.strip() == AUTO_PRIOR:
        n = DEFAULT_PRIOR_EPOCHS if max_epochs is None else float(max_epochs)
        return f"unimax:{format_number(n)}"
    try:
        mixer = make_mixer(rule)
    except AcodmError as e:
        raise SpaceError(f"bad prior {rule!r}: {e}") from e
    if not isinstance(mixer, StaticMixer) or mixer.name == "file":
        raise SpaceError(
            f"the prior {rule!r} is not a static rule computed from the run itself; use "
            "auto, uniform, natural, temperature:T or unimax:N"
        )
    return mixer.describe()


def prior_weights(rule: str, ctx: MixerContext) -> np.ndarray:
    """The weights of the prior ``rule`` (:func:`resolve_prior`) for the run ``ctx``."""
    from acodm.mixers import make_mixer

    mixer = make_mixer(resolve_prior(rule))
    mixer.setup(ctx)
    return mixer.weights()


def run_caps(
    ctx: MixerContext, epochs: np.ndarray | Sequence[float], step: int, max_epochs: float
) -> np.ndarray:
    """The epoch caps of run ``ctx`` after ``step`` optimizer steps with ``epochs`` used:
    :func:`~acodm.data.weights.feasible_caps` over the tokens still in the budget, as
    acodm's trainer computes them for ``TrainConfig.max_epochs``."""
    remaining = max(ctx.total_steps - int(step), 0) * ctx.tokens_per_step
    caps, _ = feasible_caps(epochs, ctx.domain_tokens, remaining, max_epochs)
    return caps


@dataclass(frozen=True)
class ActionMapping:
    """How an action in [-1, 1]^k becomes weights: the env's, the exported policy's, the
    online mixer's (one serialisable description; :meth:`to_dict` goes into policy.json).

    ``kind="softmax"`` (acodm/DataMixing-v0): ``w = (1 - eps) softmax(beta a) + eps / k``
    (:func:`action_to_weights`). ``kind="residual"``: ``w = project(normalise(prior *
    exp(beta a)), caps)`` (:func:`residual_weights`) around ``prior``, a static rule
    (:func:`resolve_prior`, stored resolved) that each run computes from its own
    :class:`~acodm.mixers.MixerContext`; ``eps`` is unused (0). ``max_epochs``: the epoch
    cap; either kind then projects its weights onto the run's live caps (:func:`run_caps`).
    """

    kind: str = "softmax"
    beta: float = DEFAULT_BETA
    eps: float = DEFAULT_EPS
    prior: str | None = None
    max_epochs: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise SpaceError(
                f"action mapping kind must be one of {ACTION_KINDS}, got {self.kind!r}"
            )
        m = self.max_epochs
        if m is not None and (isinstance(m, bool) or not (math.isfinite(m) and m > 0)):
            raise SpaceError(f"max_epochs must be a finite number > 0 or None, got {m!r}")
        if self.kind == "softmax":
            if self.prior is not None:
                raise SpaceError(
                    "a prior belongs to the residual action; the softmax mapping is centred "
                    "on uniform (use action='residual')"
                )
        else:
            object.__setattr__(self, "eps", 0.0)
            object.__setattr__(self, "prior", resolve_prior(self.prior, m))
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "eps", float(self.eps))
        if m is not None:
            object.__setattr__(self, "max_epochs", float(m))
        check_mapping(self.beta, self.eps)

    @classmethod
    def make(
        cls,
        kind: str = "softmax",
        *,
        beta: float | None = None,
        eps: float | None = None,
        prior: str | None = None,
        max_epochs: float | None = None,
    ) -> ActionMapping:
        """A mapping with the defaults of its kind (beta 1 and eps 0.15 for ``softmax``;
        beta ln 4 and the ``auto`` prior for ``residual``)."""
        if kind == "residual":
            if eps is not None:
                raise SpaceError(
                    "eps is the softmax mapping's uniform floor; the residual action has none "
                    "(its floor is the prior's own share times exp(-beta))"
                )
            beta = DEFAULT_RESIDUAL_BETA if beta is None else beta
            return cls("residual", beta, 0.0, prior, max_epochs)
        beta = DEFAULT_BETA if beta is None else beta
        eps = DEFAULT_EPS if eps is None else eps
        return cls(kind, beta, eps, prior, max_epochs)

    @property
    def residual(self) -> bool:
        return self.kind == "residual"

    def to_dict(self) -> dict[str, Any]:
        if self.residual:
            d: dict[str, Any] = {
                "kind": "residual",
                "formula": "w = project(normalise(prior * exp(beta * a)), caps)",
                "beta": self.beta,
                "prior": self.prior,
                "projection": "kl",
            }
        else:
            d = {
                "kind": "softmax",
                "formula": "w = (1 - eps) * softmax(beta * a) + eps / k",
                "beta": self.beta,
                "eps": self.eps,
            }
        d["max_epochs"] = self.max_epochs
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, legacy: bool = False) -> ActionMapping:
        """Read :meth:`to_dict` output; ``legacy``: a policy.json of format version 2, whose
        mapping (``beta``, ``eps``, no ``kind``) is the softmax one."""
        try:
            if legacy or "kind" not in d:
                if not legacy:
                    raise SpaceError("the action mapping names no kind (softmax or residual)")
                return cls("softmax", float(d["beta"]), float(d["eps"]))
            kind = str(d["kind"])
            m = d.get("max_epochs")
            max_epochs = None if m is None else float(m)
            if kind == "residual":
                return cls(kind, float(d["beta"]), 0.0, str(d["prior"]), max_epochs)
            return cls(kind, float(d["beta"]), float(d["eps"]), None, max_epochs)
        except (KeyError, TypeError, ValueError) as e:
            raise SpaceError(f"malformed action mapping {dict(d)!r} ({e!r})") from None

    # -- the run's side: prior and caps from its own context --------------------------------
    def prior_weights(self, ctx: MixerContext) -> np.ndarray:
        """The prior for run ``ctx`` (uniform for the softmax mapping, its centre)."""
        if not self.residual:
            return np.full(ctx.k, 1.0 / ctx.k)
        assert self.prior is not None  # resolved in __post_init__
        return prior_weights(self.prior, ctx)

    def caps(
        self, ctx: MixerContext, epochs: np.ndarray | Sequence[float], step: int
    ) -> np.ndarray | None:
        """The live caps (:func:`run_caps`), or None without ``max_epochs``."""
        if self.max_epochs is None:
            return None
        return run_caps(ctx, epochs, step, self.max_epochs)

    def initial_weights(self, ctx: MixerContext, prior: np.ndarray | None = None) -> np.ndarray:
        """The weights of a run's first interval, before anything was observed: uniform for
        the softmax mapping (the env's v0 start), the prior for the residual one (what a zero
        action gives), each within the caps at step 0."""
        if self.residual:
            w = self.prior_weights(ctx) if prior is None else np.asarray(prior, np.float64)
        else:
            w = np.full(ctx.k, 1.0 / ctx.k)
        caps = self.caps(ctx, np.zeros(ctx.k), 0)
        return w if caps is None else project_capped(w, caps)

    # -- action <-> weights -------------------------------------------------------------------
    def weights(
        self,
        action: np.ndarray | Sequence[float],
        prior: np.ndarray | Sequence[float] | None = None,
        caps: np.ndarray | Sequence[float] | None = None,
    ) -> np.ndarray:
        """The weights of ``action``; ``prior`` is required by the residual mapping."""
        if self.residual:
            if prior is None:
                raise SpaceError("the residual action needs the run's prior weights")
            return residual_weights(action, prior, self.beta, caps)
        w = action_to_weights(action, self.beta, self.eps)
        return w if caps is None else project_capped(w, caps)

    def action(
        self, weights: np.ndarray, prior: np.ndarray | Sequence[float] | None = None
    ) -> np.ndarray:
        """The action closest to ``weights`` (lossy, see :func:`weights_to_action` and
        :func:`residual_action`); for an expert's weights in the warm-up."""
        if self.residual:
            if prior is None:
                raise SpaceError("the residual action needs the run's prior weights")
            return residual_action(weights, prior, self.beta)
        return weights_to_action(weights, self.beta, self.eps)


# ---------------------------------------------------------------------------------------
# Observation
# ---------------------------------------------------------------------------------------

#: Bound of every z-scored feature group (METHOD.md, "Observation").
CLIP = 3.0

Kind = Literal["domain", "layer", "scalar"]


@dataclass(frozen=True)
class FeatureGroup:
    """One named group of the observation: where it comes from and how long it is.

    ``read`` takes the group's source field out of the interval's :class:`Dynamics` (the
    field named ``source``, by default the group's own name); ``transform`` (optional)
    derives the group from it with the :class:`ObservationSpec`'s parameters (e.g. the epoch
    cap). ``scale``: ``"zscore"`` (z-scored within the group, clipped to [-3, 3]) or
    ``"raw"`` (the value itself, clipped to ``[low, high]``: absolute levels that a z-score
    would erase). Scalar groups are raw in [0, 1]. ``needs_cap``: the group reads the spec's
    ``max_epochs``.
    """

    name: str
    kind: Kind  # "domain": length k; "layer": length n_layers; "scalar": length 1, in [0, 1]
    read: Callable[[Dynamics], np.ndarray | float]
    doc: str
    source: str | None = None
    transform: Callable[[np.ndarray, ObservationSpec], np.ndarray] | None = None
    scale: Literal["zscore", "raw"] = "zscore"
    low: float = -CLIP
    high: float = CLIP
    needs_cap: bool = False

    @property
    def raw(self) -> bool:
        """Whether the group's values are kept as they are (clipped), not z-scored."""
        return self.kind == "scalar" or self.scale == "raw"

    def bounds(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.kind == "scalar" else (self.low, self.high)


#: Where ``log_epochs`` saturates: ``log(1 + 100)``, i.e. 100 epochs of a domain.
LOG_EPOCHS_MAX = math.log1p(100.0)


def _log_epochs(epochs: np.ndarray, spec: ObservationSpec) -> np.ndarray:
    return np.log1p(np.maximum(epochs, 0.0))


def _cap_left(epochs: np.ndarray, spec: ObservationSpec) -> np.ndarray:
    if spec.max_epochs is None:  # the spec checks it; a hand-made call may not
        raise SpaceError("the cap_left feature needs the observation spec's max_epochs")
    return np.clip(1.0 - epochs / spec.max_epochs, 0.0, 1.0)


def _probe_feature(name: str) -> Callable[[Dynamics], np.ndarray]:
    def read(d: Dynamics) -> np.ndarray:
        value = getattr(d, name)
        if value is None:
            raise SpaceError(
                f"observation feature {name!r} is the probe of the reward split, which this "
                "run does not measure: it is measured by the env (any probe feature or "
                "reward='probe') on a store with a reward split (`acodm prepare "
                "--reward-fraction`)"
            )
        return np.asarray(value, dtype=np.float64)

    return read


def _agent_feature(name: str) -> Callable[[Dynamics], np.ndarray]:
    def read(d: Dynamics) -> np.ndarray:
        if name not in d.agents:
            raise SpaceError(
                f"observation feature {name!r} comes from the agent console, which this run "
                "does not have: annotate the store (`acodm annotate STORE`) and train with "
                "the console on (`--console`, TrainConfig.console=True)"
            )
        return np.asarray(d.agents[name], dtype=np.float64)

    return read


#: Every feature group the observation can hold, by name. Per-domain and per-layer groups
#: are z-scored within the group and clipped to [-3, 3]; scalar groups are already in [0, 1].
FEATURES: dict[str, FeatureGroup] = {
    g.name: g
    for g in (
        FeatureGroup(
            "loss",
            "domain",
            lambda d: d.loss,
            "mean training loss of the interval (same forward pass)",
        ),
        FeatureGroup(
            "loss_change",
            "domain",
            lambda d: d.loss_change,
            "loss change since the previous interval (not the first one, as in the AC-ODM code)",
        ),
        FeatureGroup(
            "share",
            "domain",
            lambda d: d.share,
            "fraction of the interval's sequences drawn from the domain",
        ),
        FeatureGroup(
            "epochs", "domain", lambda d: d.epochs, "epochs of the domain consumed so far"
        ),
        FeatureGroup(
            "alignment",
            "domain",
            lambda d: d.alignment,
            "gradient-alignment score s_i of the interval",
        ),
        FeatureGroup(
            "weight_norm",
            "layer",
            lambda d: d.weight_norm,
            "||W|| / ||W_0|| of each monitored layer",
        ),
        FeatureGroup(
            "weight_distance",
            "layer",
            lambda d: d.weight_distance,
            "||W - W_0|| / ||W_0|| of each monitored layer",
        ),
        FeatureGroup(
            "mean_quality",
            "domain",
            _agent_feature("mean_quality"),
            "mean quality score of what the domain contributed (console runs only)",
        ),
        FeatureGroup(
            "topic_entropy",
            "domain",
            _agent_feature("topic_entropy"),
            "entropy of the topics drawn from the domain over log(n_topics) (console runs only)",
        ),
        FeatureGroup(
            "topic_coverage",
            "domain",
            _agent_feature("topic_coverage"),
            "fraction of the topics drawn at least once from the domain (console runs only)",
        ),
        FeatureGroup(
            "repetition_rate",
            "domain",
            _agent_feature("repetition_rate"),
            "fraction of the domain's windows drawn that were seen before (console runs only)",
        ),
        FeatureGroup(
            "log_epochs",
            "domain",
            lambda d: d.epochs,
            "log(1 + epochs of the domain consumed so far), raw (not z-scored), at most log(101)",
            source="epochs",
            transform=_log_epochs,
            scale="raw",
            low=0.0,
            high=LOG_EPOCHS_MAX,
        ),
        FeatureGroup(
            "cap_left",
            "domain",
            lambda d: d.epochs,
            "fraction of the domain's epoch cap still unused, 1 - epochs / max_epochs, in "
            "[0, 1] (needs max_epochs)",
            source="epochs",
            transform=_cap_left,
            scale="raw",
            low=0.0,
            high=1.0,
            needs_cap=True,
        ),
        FeatureGroup(
            "probe_loss",
            "domain",
            _probe_feature("probe_loss"),
            "loss on the fixed probe windows of the reward split after the interval (needs "
            "the probe: reward='probe' or a probe feature)",
        ),
        FeatureGroup(
            "probe_delta",
            "domain",
            _probe_feature("probe_delta"),
            "decrease of the probe loss over the interval (0 at an episode's first interval)",
        ),
        FeatureGroup(
            "progress",
            "scalar",
            lambda d: d.progress,
            "training progress, step / total_steps, in [0, 1] (not 0..100)",
        ),
    )
}

DEFAULT_FEATURES: tuple[str, ...] = (
    "loss",
    "loss_change",
    "share",
    "epochs",
    "alignment",
    "weight_norm",
    "weight_distance",
    "progress",
)

# AGENT_FEATURES, the agent console's per-domain features (need ``TrainConfig.console=True``),
# is imported from acodm.agents.console, which computes them.
#: The default features plus the console's, before ``progress``.
CONSOLE_FEATURES: tuple[str, ...] = DEFAULT_FEATURES[:-1] + AGENT_FEATURES + ("progress",)

#: Feature groups of the probe of the reward split (issue 11): measured by the env when listed.
PROBE_FEATURES: tuple[str, ...] = ("probe_loss", "probe_delta")

#: Feature groups that carry repetition in absolute terms (issue 11): raw, not z-scored.
REPETITION_FEATURES: tuple[str, ...] = ("log_epochs", "cap_left")

#: The observation of acodm/DataMixing-v1: the default groups plus the repetition ones,
#: before ``progress``. ``cap_left`` needs an epoch cap (``max_epochs``). The probe groups
#: are not in it: a target run measures no probe (its mixers see the training dynamics only),
#: so a policy observing them could not be transferred.
V1_FEATURES: tuple[str, ...] = DEFAULT_FEATURES[:-1] + REPETITION_FEATURES + ("progress",)

#: acodm/DataMixing-v1's epoch cap. Muennighoff et al. 2023 (data-constrained scaling laws)
#: fit the value of repeated tokens as decaying with a characteristic ~15 epochs: up to about
#: 4 epochs repeated data is nearly as good as new, beyond ~16 it adds little. A cap of 16
#: forbids only repetition that is close to worthless, and leaves the policy free to repeat a
#: small domain more than UniMax's usual 4 where that helps (BENCHMARKS.md: at 14 epochs
#: uniform beat UniMax(4) on mean loss).
V1_MAX_EPOCHS = 16.0

#: The defaults of each registered env version (``acodm/DataMixing-<version>``); the
#: DataMixingEnv class's own defaults are v0's. Keys are DataMixingEnv arguments.
ENV_VERSIONS: dict[str, dict[str, Any]] = {
    "v0": {
        "action": "softmax",
        "reward": "alignment",
        "max_epochs": None,
        "features": DEFAULT_FEATURES,
    },
    "v1": {
        "action": "residual",
        "reward": "probe",
        "max_epochs": V1_MAX_EPOCHS,
        "features": V1_FEATURES,
    },
}


def env_version(version: str) -> dict[str, Any]:
    """The DataMixingEnv defaults of an env version (``"v0"`` or ``"v1"``, or the full id)."""
    key = version.rsplit("-", 1)[-1] if version.startswith("acodm/") else version
    if key not in ENV_VERSIONS:
        raise SpaceError(
            f"unknown env version {version!r}; use one of {sorted(ENV_VERSIONS)} "
            "(acodm/DataMixing-v0 is the paper's formulation, v1 the default)"
        )
    return dict(ENV_VERSIONS[key])


SPEC_FORMAT = "acodm-observation"
SPEC_VERSION = 1


@dataclass(frozen=True)
class ObservationSpec:
    """Which feature groups, in which order, for ``k`` domains and ``n_layers`` layers.

    Goes into the exported policy's JSON so that a target run computes the same vector.
    The layout is the concatenation of the groups in ``features`` order. ``max_epochs``: the
    epoch cap that ``cap_left`` is measured against (required by it, recorded only when set).
    """

    features: tuple[str, ...]
    k: int
    n_layers: int
    max_epochs: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise SpaceError(f"unknown observation features {unknown}; known: {sorted(FEATURES)}")
        if not self.features:
            raise SpaceError("the observation needs at least one feature group")
        if len(set(self.features)) != len(self.features):
            raise SpaceError(f"observation features repeat: {list(self.features)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise SpaceError(f"k (number of domains) must be an int >= 2, got {self.k!r}")
        if (
            isinstance(self.n_layers, bool)
            or not isinstance(self.n_layers, int)
            or self.n_layers < 0
        ):
            raise SpaceError(f"n_layers must be an int >= 0, got {self.n_layers!r}")
        m = self.max_epochs
        if m is not None:
            if isinstance(m, bool) or not (math.isfinite(m) and m > 0):
                raise SpaceError(f"max_epochs must be a finite number > 0, got {m!r}")
            object.__setattr__(self, "max_epochs", float(m))
        capped = [f for f in self.features if FEATURES[f].needs_cap]
        if capped and m is None:
            raise SpaceError(
                f"observation features {capped} are measured against an epoch cap: give "
                "max_epochs (the env's max_epochs, TrainConfig.max_epochs)"
            )

    def group_size(self, name: str) -> int:
        kind = FEATURES[name].kind
        return self.k if kind == "domain" else self.n_layers if kind == "layer" else 1

    @property
    def size(self) -> int:
        return sum(self.group_size(f) for f in self.features)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` float32 (size,): [-3, 3] for z-scored groups, [0, 1] for scalars."""
        low, high = [], []
        for f in self.features:
            n = self.group_size(f)
            lo, hi = FEATURES[f].bounds()
            low.append(np.full(n, lo, dtype=np.float32))
            high.append(np.full(n, hi, dtype=np.float32))
        return np.concatenate(low), np.concatenate(high)

    def names(self) -> list[str]:
        """One label per entry of the vector, e.g. ``loss[0]`` (for logs and debugging)."""
        return [f"{f}[{i}]" for f in self.features for i in range(self.group_size(f))]

    def to_dict(self) -> dict[str, Any]:
        normalisation = "per-group z-score (population std), clipped; scalars raw"
        raw = [f for f in self.features if FEATURES[f].raw and FEATURES[f].kind != "scalar"]
        if raw:  # named only where present: earlier specs stay byte for byte what they were
            normalisation += f"; {', '.join(raw)} raw, clipped to their bounds"
        d: dict[str, Any] = {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "features": list(self.features),
            "k": self.k,
            "n_layers": self.n_layers,
            "clip": CLIP,
            "normalisation": normalisation,
        }
        if self.max_epochs is not None:
            d["max_epochs"] = self.max_epochs
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObservationSpec:
        if (
            d.get("format", SPEC_FORMAT) != SPEC_FORMAT
            or d.get("version", SPEC_VERSION) != SPEC_VERSION
        ):
            raise SpaceError(
                f"observation spec format {d.get('format')!r} v{d.get('version')} is not "
                f"{SPEC_FORMAT!r} v{SPEC_VERSION}; was the policy exported by another acodm?"
            )
        if d.get("clip", CLIP) != CLIP:
            raise SpaceError(f"the spec clips at {d.get('clip')}, this acodm at {CLIP}")
        try:
            m = d.get("max_epochs")
            return cls(
                features=tuple(d["features"]),
                k=int(d["k"]),
                n_layers=int(d["n_layers"]),
                max_epochs=None if m is None else float(m),
            )
        except KeyError as e:
            raise SpaceError(f"observation spec lacks the key {e}") from None


def observation_size(k: int, n_layers: int, features: Sequence[str] = DEFAULT_FEATURES) -> int:
    """Length of the observation vector (default: ``5 k + 2 n_layers + 1``)."""
    return ObservationSpec(tuple(features), k, n_layers).size


def zscore_clip(x: np.ndarray, clip: float = CLIP) -> np.ndarray:
    """Z-score ``x`` within itself (population std) and clip to ``[-clip, clip]``, float64.

    :func:`acodm.dynamics.standardize.zscore` with the observation's settings: a constant
    group (std ~ 0, relative to its scale) carries no information and becomes zeros;
    non-finite entries are left out of the mean and std and map to 0.
    """
    return zscore(x, clip=clip)


def build_observation(dynamics: Dynamics, spec: ObservationSpec) -> np.ndarray:
    """The observation vector, float32 (spec.size,), from one interval's dynamics.

    Each per-domain / per-layer group is z-scored within itself and clipped to [-3, 3]
    (METHOD.md, "Observation"), so the vector does not depend on the model's loss scale or
    size; ``progress`` stays in [0, 1], and the raw groups (``log_epochs``, ``cap_left``)
    keep their absolute values, clipped to their bounds.
    """
    parts = []
    for name in spec.features:
        g = FEATURES[name]
        raw = np.atleast_1d(np.asarray(g.read(dynamics), dtype=np.float64))
        want = spec.group_size(name)
        if raw.shape != (want,):
            raise SpaceError(
                f"feature {name!r} has shape {raw.shape}, the spec expects ({want},) "
                f"(k={spec.k}, n_layers={spec.n_layers}); does the run match the policy?"
            )
        if g.transform is not None:
            raw = np.asarray(g.transform(raw, spec), dtype=np.float64)
        if g.raw:
            lo, hi = g.bounds()
            parts.append(np.clip(np.nan_to_num(raw, nan=lo), lo, hi))
        else:
            parts.append(zscore_clip(raw))
    return np.concatenate(parts).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Reward
# ---------------------------------------------------------------------------------------

#: Total weight of the extra reward terms, relative to the alignment term's weight 1
#: (METHOD.md, "Reward": "a small total weight (<= 0.3 of the alignment term)").
MAX_EXTRA_REWARD_WEIGHT = 0.3


def alignment_reward(weights: np.ndarray, scores: np.ndarray) -> float:
    """``r = sum_i w_i s_i`` (METHOD.md, "Reward: gradient alignment").

    One SGD step with mixture ``w`` changes the mean loss by about
    ``-lr * sum_i w_i <g_i, sum_j g_j>``, linear in ``w``; ``s`` is its z-scored, clipped
    per-domain proxy, so the reward is in [-3, 3].
    """
    w = np.asarray(weights, dtype=np.float64)  # a mixture: checked where it was made
    s = np.asarray(scores, dtype=np.float64)
    if w.ndim != 1 or w.shape != s.shape:
        raise SpaceError(f"weights {w.shape} and scores {s.shape} must be vectors of equal length")
    if not np.all(np.isfinite(s)):
        raise SpaceError(f"the alignment scores must be finite, got {s.tolist()}")
    return float(np.sum(w * s))  # not w @ s: BLAS's dot rounds differently across CPUs


#: The main reward terms the env offers: ``alignment`` (the paper's, acodm/DataMixing-v0's
#: default) and ``probe`` (the decrease of the probe loss on the reward split, issue 11).
REWARDS = ("alignment", "probe")
#: Probe windows per domain of the reward split (fixed, spread evenly over the split).
DEFAULT_PROBE_WINDOWS = 4
#: EMA rate of the probe reward's baseline: ``b_t = (1 - rate) b_{t-1} + rate d_t``. 0.3
#: follows the early-training trend of the decrease with a lag of about
#: ``(1 - rate) / rate`` ~ 2 intervals while averaging out much of one interval's noise
#: (the baseline's variance is ``rate / (2 - rate)`` ~ 0.18 of the decrease's).
PROBE_BASELINE_RATE = 0.3
#: The probe reward is in percent of the probe loss before the interval (an O(1) scale).
PROBE_SCALE = 100.0


@dataclass(frozen=True)
class ProbeStep:
    """One interval of the probe reward (:func:`probe_reward`); every value a float.

    ``loss``: ``L_t``, the mean over domains of the probe loss after the interval;
    ``decrease``: ``d_t = L_{t-1} - L_t``; ``baseline``: ``b_{t-1}``, the running baseline
    the reward subtracts; ``next_baseline``: ``b_t``; ``reward``: ``r_t``.
    """

    loss: float
    decrease: float
    baseline: float
    next_baseline: float
    reward: float


def probe_reward(
    previous: float,
    loss: float,
    baseline: float | None,
    rate: float = PROBE_BASELINE_RATE,
) -> ProbeStep:
    """The probe reward of one interval (issue 11: a reward that measures the objective).

    ``previous`` = ``L_{t-1}`` and ``loss`` = ``L_t``: the mean over domains of the loss on
    fixed probe windows of the reward split (held-out documents, disjoint from training and
    validation) before and after the interval. Then::

        d_t = L_{t-1} - L_t                        raw decrease
        r_t = 100 * (d_t - b_{t-1}) / L_{t-1}      in percent of the probe loss: O(1)
        b_t = (1 - rate) * b_{t-1} + rate * d_t    EMA baseline of d

    The baseline cancels the trend of early training (every mixture decreases the loss a lot
    then), so the reward says whether this interval's mixture did better than the recent
    ones. It starts at the first decrease (``baseline=None``: ``b_0 = d_1``, so ``r_1 = 0``):
    starting at 0 would reward the first few intervals for the trend alone. Ranking
    mixtures from one state does not depend on ``b`` (it is the same for all).
    """
    for name, v in (("previous", previous), ("loss", loss)):
        if not (math.isfinite(v) and v > 0):
            raise SpaceError(f"the probe loss ({name}) must be finite and > 0, got {v}")
    if not 0.0 < rate <= 1.0:
        raise SpaceError(f"the probe baseline rate must be in (0, 1], got {rate}")
    d = float(previous) - float(loss)
    b = d if baseline is None else float(baseline)
    return ProbeStep(
        loss=float(loss),
        decrease=d,
        baseline=b,
        next_baseline=(1.0 - rate) * b + rate * d,
        reward=PROBE_SCALE * (d - b) / float(previous),
    )


def mean_probe_loss(losses: np.ndarray | Sequence[float]) -> float:
    """``L``: the unweighted mean over domains of the per-domain probe losses (every domain
    counts alike, as in the mean validation loss a study reports)."""
    x = np.asarray(losses, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise SpaceError(f"probe losses must be a finite vector (one per domain), got {x}")
    return float(x.mean())


@dataclass
class ProbeTracker:
    """The probe reward's running state across an episode: ``losses`` (the per-domain probe
    losses of the last interval, ``L_{t-1}``'s parts) and ``baseline`` (``b_{t-1}``; None
    before the first decrease). The env and the online ``ddpg`` mixer each hold one;
    :meth:`to_dict` / :meth:`from_dict` keep it exactly (JSON floats round-trip)."""

    losses: np.ndarray | None = None
    baseline: float | None = None
    rate: float = PROBE_BASELINE_RATE

    def start(self, losses: np.ndarray) -> None:
        """A new episode: ``losses`` measured after its first interval (``L_0``)."""
        mean_probe_loss(losses)  # checks them
        self.losses = np.asarray(losses, dtype=np.float64).copy()
        self.baseline = None

    def step(self, losses: np.ndarray) -> ProbeStep:
        """The reward of the interval that ended with ``losses``; advances the state."""
        if self.losses is None:
            raise SpaceError("the probe tracker was not started (no L_0): call start() first")
        out = probe_reward(
            mean_probe_loss(self.losses), mean_probe_loss(losses), self.baseline, self.rate
        )
        self.losses = np.asarray(losses, dtype=np.float64).copy()
        self.baseline = out.next_baseline
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "losses": None if self.losses is None else [float(x) for x in self.losses],
            "baseline": self.baseline,
            "rate": self.rate,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeTracker:
        losses = d.get("losses")
        return cls(
            None if losses is None else np.asarray(losses, dtype=np.float64),
            None if d.get("baseline") is None else float(d["baseline"]),
            float(d.get("rate", PROBE_BASELINE_RATE)),
        )


def with_probe(dynamics: Dynamics, losses: np.ndarray, previous: np.ndarray | None) -> Dynamics:
    """``dynamics`` with the interval's probe measurement: ``probe_loss`` (per domain) and
    ``probe_delta`` (its decrease since ``previous``; zeros at an episode's first interval),
    which the observation features ``probe_loss`` / ``probe_delta`` read."""
    cur = np.asarray(losses, dtype=np.float64)
    delta = np.zeros_like(cur) if previous is None else np.asarray(previous, np.float64) - cur
    return dataclasses.replace(dynamics, probe_loss=cur, probe_delta=delta)


@dataclass(frozen=True)
class RewardTerm:
    """An extra reward term: ``weight * fn(weights, dynamics)``, added to the alignment term.

    ``fn`` should return a value on the alignment term's scale (about [-3, 3], e.g. a
    weighted mean of z-scored per-domain features) so that ``weight`` means what it says.
    """

    name: str
    weight: float
    fn: Callable[[np.ndarray, Dynamics], float]

    def __post_init__(self) -> None:
        if not self.name or self.name in REWARDS:
            raise SpaceError(f"reward term name {self.name!r} is empty or reserved")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise SpaceError(f"reward term {self.name!r}: weight must be >= 0, got {self.weight}")


def check_reward_terms(terms: Sequence[RewardTerm]) -> tuple[RewardTerm, ...]:
    """Validate extra terms: unique names, total weight <= 0.3 (METHOD.md, "Reward")."""
    terms = tuple(terms)
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise SpaceError(f"reward term names repeat: {names}")
    total = sum(t.weight for t in terms)
    if total > MAX_EXTRA_REWARD_WEIGHT + 1e-12:
        raise SpaceError(
            f"extra reward terms weigh {total:g} in total; at most {MAX_EXTRA_REWARD_WEIGHT} of "
            "the alignment term is allowed (METHOD.md, 'Reward'), so alignment stays the signal"
        )
    return terms


def total_reward(
    weights: np.ndarray,
    dynamics: Dynamics,
    terms: Sequence[RewardTerm] = (),
    probe: float | None = None,
) -> tuple[float, dict[str, float]]:
    """The scalar reward and its terms: the main term plus ``weight * term`` for each extra.

    The main term is ``alignment`` (:func:`alignment_reward`), or, given ``probe`` (the
    interval's :func:`probe_reward`), ``probe``. Returns ``(reward, {main: r_main, name:
    weight * value, ...})``; the reward is the sum of the dict's values.
    """
    if probe is None:
        parts = {"alignment": alignment_reward(weights, dynamics.alignment)}
    else:
        if not math.isfinite(probe):
            raise SpaceError(f"the probe reward must be finite, got {probe}")
        parts = {"probe": float(probe)}
    for t in check_reward_terms(terms):
        value = float(t.fn(np.asarray(weights, dtype=np.float64), dynamics))
        if not math.isfinite(value):
            raise SpaceError(f"reward term {t.name!r} returned {value}")
        parts[t.name] = t.weight * value
    return float(sum(parts.values())), parts


def transition(
    weights: np.ndarray,
    dynamics: Dynamics,
    spec: ObservationSpec,
    terms: Sequence[RewardTerm] = (),
    probe: float | None = None,
) -> tuple[np.ndarray, float, dict[str, float]]:
    """One MDP step after the interval that ran with ``weights`` and measured ``dynamics``.

    Returns ``(observation, reward, reward terms)``: :func:`build_observation` and
    :func:`total_reward` (``probe``: the probe reward of the interval, which then replaces
    the alignment term). The env's ``step`` and the online ``ddpg`` mixer's replay
    transitions both come from here, so the two cannot drift apart.
    """
    observation = build_observation(dynamics, spec)
    reward, parts = total_reward(weights, dynamics, terms, probe)
    return observation, reward, parts


#: Default total weight of the console's reward terms (METHOD.md: small, at most 0.3).
DEFAULT_CONSOLE_REWARD_WEIGHT = 0.2


def _console_term(feature: str, agent: str) -> Callable[[np.ndarray, Dynamics], float]:
    def value(weights: np.ndarray, d: Dynamics) -> float:
        if feature not in d.agents or agent not in d.console_alpha:
            raise SpaceError(
                f"reward term {feature!r} needs the agent console: train with --console "
                "(TrainConfig.console=True) on an annotated store"
            )
        alpha = d.console_alpha
        trust = float(alpha[agent]) / max(float(max(alpha.values())), 1e-12)  # in (0, 1]
        return trust * float(np.sum(np.asarray(weights) * zscore_clip(d.agents[feature])))

    return value


def console_reward_terms(
    total_weight: float = DEFAULT_CONSOLE_REWARD_WEIGHT,
) -> tuple[RewardTerm, RewardTerm]:
    """The console-weighted quality and diversity terms (METHOD.md, "As reward terms").

    ``quality = c_q * sum_i w_i z(mean_quality)_i`` and ``diversity = c_t * sum_i w_i
    z(topic_entropy)_i``, each with weight ``total_weight / 2``; ``z`` is the clipped
    z-score across domains (the alignment term's scale) and ``c_a = alpha_a / max(alpha)``
    in (0, 1] the console's current trust in the quality / topic agent, so an agent the
    feedback does not confirm fades from the reward. Needs a console run.
    """
    half = float(total_weight) / 2.0
    return (
        RewardTerm("quality", half, _console_term("mean_quality", "quality")),
        RewardTerm("diversity", half, _console_term("topic_entropy", "topic")),
    )
