"""The MDP's pure parts: action -> weights, observation vector, reward (METHOD.md, "The environment").

Everything here is a pure function of numpy arrays (or of a :class:`Dynamics`), so it is unit
tested on its own and shared by the environment (:mod:`acodm.envs.data_mixing`) and by an
exported actor that drives a target run: the target must compute *exactly* the same
observation, which is why the feature list lives in a serialisable :class:`ObservationSpec`.

Shapes: ``k`` domains (any ``k >= 2``), ``n_layers`` monitored layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from acodm.agents.console import AGENT_FEATURES
from acodm.dynamics.features import Dynamics
from acodm.dynamics.standardize import zscore
from acodm.errors import AcodmError

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
# Observation
# ---------------------------------------------------------------------------------------

#: Bound of every z-scored feature group (METHOD.md, "Observation").
CLIP = 3.0

Kind = Literal["domain", "layer", "scalar"]


@dataclass(frozen=True)
class FeatureGroup:
    """One named group of the observation: where it comes from and how long it is."""

    name: str
    kind: Kind  # "domain": length k; "layer": length n_layers; "scalar": length 1, in [0, 1]
    read: Callable[[Dynamics], np.ndarray | float]
    doc: str


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

SPEC_FORMAT = "acodm-observation"
SPEC_VERSION = 1


@dataclass(frozen=True)
class ObservationSpec:
    """Which feature groups, in which order, for ``k`` domains and ``n_layers`` layers.

    Goes into the exported policy's JSON so that a target run computes the same vector.
    The layout is the concatenation of the groups in ``features`` order.
    """

    features: tuple[str, ...]
    k: int
    n_layers: int

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
            scalar = FEATURES[f].kind == "scalar"
            low.append(np.full(n, 0.0 if scalar else -CLIP, dtype=np.float32))
            high.append(np.full(n, 1.0 if scalar else CLIP, dtype=np.float32))
        return np.concatenate(low), np.concatenate(high)

    def names(self) -> list[str]:
        """One label per entry of the vector, e.g. ``loss[0]`` (for logs and debugging)."""
        return [f"{f}[{i}]" for f in self.features for i in range(self.group_size(f))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "features": list(self.features),
            "k": self.k,
            "n_layers": self.n_layers,
            "clip": CLIP,
            "normalisation": "per-group z-score (population std), clipped; scalars raw",
        }

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
            return cls(features=tuple(d["features"]), k=int(d["k"]), n_layers=int(d["n_layers"]))
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
    size; ``progress`` stays in [0, 1].
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
        if g.kind == "scalar":
            parts.append(np.clip(np.nan_to_num(raw, nan=0.0), 0.0, 1.0))
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
    return float(w @ s)


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
        if not self.name or self.name == "alignment":
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
    weights: np.ndarray, dynamics: Dynamics, terms: Sequence[RewardTerm] = ()
) -> tuple[float, dict[str, float]]:
    """The scalar reward and its terms: ``alignment`` plus ``weight * term`` for each extra.

    Returns ``(reward, {"alignment": r_align, name: weight * value, ...})``; the reward is
    the sum of the dict's values.
    """
    parts = {"alignment": alignment_reward(weights, dynamics.alignment)}
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
) -> tuple[np.ndarray, float, dict[str, float]]:
    """One MDP step after the interval that ran with ``weights`` and measured ``dynamics``.

    Returns ``(observation, reward, reward terms)``: :func:`build_observation` and
    :func:`total_reward`. The env's ``step`` and the online ``ddpg`` mixer's replay
    transitions both come from here, so the two cannot drift apart.
    """
    observation = build_observation(dynamics, spec)
    reward, parts = total_reward(weights, dynamics, terms)
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
        return trust * float(np.asarray(weights) @ zscore_clip(d.agents[feature]))

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
