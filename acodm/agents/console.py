"""Multi-agent document scores: agent memories, the agent console, scored within-domain order.

Implements ``docs/METHOD.md`` ("Multi-agent scores"), with the released code's bugs fixed:

* **Memory** (:class:`AgentMemory`): one weight per label of one agent (quality bin, domain,
  topic). Online update ``W <- 0.9 W + 0.1 exp(0.5 r)`` on the label groups that received
  feedback in the interval, then normalised. ``r`` is the *standardised decrease* of a reference
  loss per group (:func:`group_feedback`): the released code rewards loss *increase*, ignores its
  own z-scores and updates from the last document only; here the sign is "decrease is good", the
  z-scores are what enters ``exp(0.5 r)`` and every group trained on in the interval is updated.
* **Console** (:class:`AgentConsole`): ``score(doc) = sum_a alpha_a W_a[label_a(doc)] /
  (1 + 0.1 times_seen)``; ``alpha`` moves toward the agents whose scores track the feedback.
* **Within-domain order** (:func:`window_priorities`; the sampler that follows the scores,
  :class:`~acodm.data.scored_sampler.ScoredDomainSampler`, lives beside the sampler):
  METHOD.md samples inside a domain with a temperature instead of the paper's deterministic
  top-k, without replacement per epoch.
* **Features** (:func:`interval_features`): mean quality, topic entropy and coverage,
  repetition rate per domain and interval, for the env's state and reward terms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from acodm.data.scored_sampler import ScoredDomainSampler, weighted_order
from acodm.dynamics import standardize
from acodm.dynamics.interval import AGENT_FEATURES  # their home: the Dynamics that carry them

__all__ = [
    "AgentConsole",
    "AgentMemory",
    "ScoredDomainSampler",  # lives beside the sampler (acodm.data.scored_sampler)
    "group_feedback",
    "interval_features",
    "weighted_order",
    "window_priorities",
    "zscore",
]

CONSOLE_STATE_VERSION = 1
PAPER_INIT = 10.0  # the paper's initial memory weight
EMA_KEEP = 0.9  # W <- EMA_KEEP * W + (1 - EMA_KEEP) * exp(REWARD_GAIN * r)
REWARD_GAIN = 0.5
REPEAT_PENALTY = 0.1  # score / (1 + REPEAT_PENALTY * times_seen)


# -- feedback ------------------------------------------------------------------------------
def zscore(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` (population std); all zeros when ``x`` is constant or has < 2 items.

    :func:`acodm.dynamics.standardize.zscore` with an absolute spread threshold (1e-12):
    credits and memory weights are on a fixed scale.
    """
    return standardize.zscore(x, rtol=0.0)


def group_feedback(
    labels: np.ndarray, credit: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per label group trained on in an interval: ``(groups, r)``, ``r`` z-scored across groups.

    ``labels[j]``: the label of item ``j`` trained on (document or window) in the interval;
    ``credit[j]``: the *decrease* of the reference loss attributed to it (e.g. the reference-loss
    decrease of the step it was trained in, or its gradient's alignment with the reference
    gradient), so a larger credit is better. ``weights[j]`` (e.g. tokens) weights the per-group
    mean. Every group present gets feedback, not only the last item (METHOD.md: a bug of the
    released code); the mean credit per group is z-scored across groups (METHOD.md: the
    released code computes the z-scores and then ignores them).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    credit = np.asarray(credit, dtype=np.float64).reshape(-1)
    if labels.shape != credit.shape:
        raise ValueError(f"labels {labels.shape} and credit {credit.shape} differ in shape")
    w = np.ones_like(credit) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.shape != credit.shape:
        raise ValueError(f"weights {w.shape} and credit {credit.shape} differ in shape")
    keep = np.isfinite(credit) & (w > 0)
    groups, inv = np.unique(labels[keep], return_inverse=True)
    total = np.bincount(inv, weights=credit[keep] * w[keep], minlength=groups.size)
    mass = np.bincount(inv, weights=w[keep], minlength=groups.size)
    return groups, zscore(total / mass)


# -- one agent's memory ----------------------------------------------------------------------
class AgentMemory:
    """One weight per label of one agent (METHOD.md "Console" and "Online update").

    Normalisation: the weights are kept at mean ``init`` over labels (``init=10`` is the paper's
    start, ``init=1`` a unit-mean uniform start). The update is applied in units of ``init``:
    with ``u = W / init``, ``u_g <- 0.9 u_g + 0.1 exp(0.5 r_g)`` for the groups ``g`` with
    feedback, then ``u <- u / mean(u)``. For ``init=1`` this is exactly METHOD.md's rule followed
    by "normalise to mean 1"; for ``init=10`` it is the same rule on the rescaled weights, so
    the paper's large start does not make every updated group lose against the others.
    Labels without feedback keep ``u`` before the renormalisation.
    """

    def __init__(self, name: str, n_labels: int, *, init: float = PAPER_INIT) -> None:
        if n_labels < 1:
            raise ValueError(f"agent {name!r} needs at least one label, got {n_labels}")
        if not init > 0 or not math.isfinite(init):
            raise ValueError(f"init must be a positive finite number, got {init}")
        self.name = name
        self.init = float(init)
        self._u = np.ones(int(n_labels), dtype=np.float64)
        self.n_updates = 0

    @property
    def n_labels(self) -> int:
        return int(self._u.size)

    @property
    def weights(self) -> np.ndarray:
        """The label weights ``W`` (a copy), mean ``init`` over labels."""
        return self.init * self._u

    def lookup(self, labels: np.ndarray) -> np.ndarray:
        """``W[label]`` for each item; labels must lie in ``[0, n_labels)``."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_labels):
            raise ValueError(f"agent {self.name!r}: labels outside [0, {self.n_labels})")
        return self.init * self._u[labels]

    def update(self, groups: np.ndarray, r: np.ndarray) -> None:
        """Apply ``W <- 0.9 W + 0.1 exp(0.5 r)`` to ``groups`` (in units of ``init``), normalise.

        ``r`` is the standardised feedback of each group (:func:`group_feedback`); it is
        clipped to ``[-3, 3]`` like every z-score in acodm.
        """
        groups = np.asarray(groups, dtype=np.int64).reshape(-1)
        r = np.clip(np.asarray(r, dtype=np.float64).reshape(-1), -3.0, 3.0)
        if groups.shape != r.shape or np.unique(groups).size != groups.size:
            raise ValueError("groups must be distinct and match r in shape")
        if groups.size == 0:
            return
        if groups.min() < 0 or groups.max() >= self.n_labels:
            raise ValueError(f"agent {self.name!r}: groups outside [0, {self.n_labels})")
        self._u[groups] = EMA_KEEP * self._u[groups] + (1 - EMA_KEEP) * np.exp(REWARD_GAIN * r)
        self._u /= self._u.mean()
        self.n_updates += 1

    def update_from_credit(
        self, labels: np.ndarray, credit: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`group_feedback` then :meth:`update`; returns ``(groups, r)``."""
        groups, r = group_feedback(labels, credit, weights)
        self.update(groups, r)
        return groups, r

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "init": self.init,
            "u": self._u.tolist(),
            "n_updates": self.n_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        u = np.asarray(state["u"], dtype=np.float64)
        if u.shape != self._u.shape or not np.all(np.isfinite(u)) or np.any(u <= 0):
            raise ValueError(
                f"agent {self.name!r}: state has {u.size} labels, expected "
                f"{self.n_labels} positive finite weights"
            )
        self.init = float(state["init"])
        self._u = u
        self.n_updates = int(state["n_updates"])


# -- the console -----------------------------------------------------------------------------
def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (an uninformative agent)."""
    zx, zy = zscore(x), zscore(y)
    return float(np.mean(zx * zy)) if zx.size else 0.0


class AgentConsole:
    """Several agents combined by console weights ``alpha`` (METHOD.md "Console").

    ``alpha`` starts uniform. :meth:`update_alpha`: ``alpha <- softmax(log alpha + eta *
    corr(score_a, feedback))``, then mixed with a floor, ``alpha <- (1 - floor) alpha +
    floor / n_agents``, so an agent that stopped predicting can come back.
    """

    def __init__(
        self, agents: Sequence[AgentMemory], *, eta: float = 1.0, floor: float = 0.01
    ) -> None:
        names = [a.name for a in agents]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"agents need distinct names, got {names}")
        if not 0 <= floor < 1 or eta < 0:
            raise ValueError(f"need 0 <= floor < 1 and eta >= 0, got {floor}, {eta}")
        self.agents = list(agents)
        self.eta = float(eta)
        self.floor = float(floor)
        self.alpha = np.full(len(names), 1.0 / len(names))

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def agent_scores(self, labels: Mapping[str, np.ndarray]) -> np.ndarray:
        """``(n_agents, n_items)``: each agent's ``W_a[label_a(item)]``."""
        missing = [n for n in self.names if n not in labels]
        if missing:
            raise ValueError(f"labels for agents {missing} are missing")
        rows = [a.lookup(np.asarray(labels[a.name]).reshape(-1)) for a in self.agents]
        if len({r.size for r in rows}) > 1:
            raise ValueError("every agent needs one label per item")
        return np.stack(rows)

    def score(
        self, labels: Mapping[str, np.ndarray], times_seen: np.ndarray | None = None
    ) -> np.ndarray:
        """``sum_a alpha_a W_a[label_a] / (1 + 0.1 times_seen)`` per item."""
        # a sum of products, not alpha @ scores: BLAS's gemv rounds differently across CPUs
        s = np.sum(self.alpha[:, None] * self.agent_scores(labels), axis=0)
        if times_seen is not None:
            seen = np.asarray(times_seen, dtype=np.float64).reshape(-1)
            if seen.shape != s.shape or np.any(seen < 0):
                raise ValueError("times_seen must be non-negative, one per item")
            s = s / (1.0 + REPEAT_PENALTY * seen)
        return s

    def update_alpha(self, labels: Mapping[str, np.ndarray], feedback: np.ndarray) -> np.ndarray:
        """Move ``alpha`` toward the agents whose scores correlate with ``feedback``.

        ``labels``/``feedback``: one entry per document (or label group) trained on; feedback
        is "larger is better" (reference-loss decrease). Returns the correlations.
        """
        fb = np.asarray(feedback, dtype=np.float64).reshape(-1)
        scores = self.agent_scores(labels)
        if scores.shape[1] != fb.size:
            raise ValueError(f"{fb.size} feedback values for {scores.shape[1]} items")
        corr = np.array([_corr(row, fb) for row in scores])
        logits = np.log(np.maximum(self.alpha, 1e-300)) + self.eta * corr
        a = np.exp(logits - logits.max())
        a /= a.sum()
        self.alpha = (1 - self.floor) * a + self.floor / a.size
        return corr

    def update(
        self,
        labels: Mapping[str, np.ndarray],
        credit: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """One interval's feedback: :meth:`update_alpha` first, then every agent's memory.

        The console is judged on the memories *before* they learn from this interval, so an
        agent is rewarded for predicting the feedback, not for having fitted it in-sample.
        Returns the correlations.
        """
        corr = self.update_alpha(labels, credit)
        for a in self.agents:
            a.update_from_credit(np.asarray(labels[a.name]), credit, weights)
        return corr

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable (numbers, strings and lists only)."""
        return {
            "version": CONSOLE_STATE_VERSION,
            "alpha": self.alpha.tolist(),
            "eta": self.eta,
            "floor": self.floor,
            "agents": [a.state_dict() for a in self.agents],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != CONSOLE_STATE_VERSION:
            raise ValueError(
                f"console state version {state.get('version')!r} is not {CONSOLE_STATE_VERSION}"
            )
        names = [s["name"] for s in state["agents"]]
        if names != self.names:
            raise ValueError(f"console state has agents {names}, this console {self.names}")
        for a, s in zip(self.agents, state["agents"], strict=True):
            a.load_state_dict(s)
        self.alpha = np.asarray(state["alpha"], dtype=np.float64)
        self.eta = float(state["eta"])
        self.floor = float(state["floor"])


# -- within-domain order ---------------------------------------------------------------------
def window_priorities(
    doc_scores: np.ndarray, doc_offsets: np.ndarray, seq_len: int, n_windows: int
) -> np.ndarray:
    """Score of each sampler window: the token-weighted mean of the documents it overlaps.

    Window ``w`` covers tokens ``[w * seq_len, (w + 1) * seq_len)`` of the domain's EOS-joined
    stream (its extra target token belongs to the next window and is not counted).
    ``doc_offsets``: :meth:`TokenStore.doc_offsets` (starts plus the total length).
    """
    off = np.asarray(doc_offsets, dtype=np.int64).reshape(-1)
    s = np.asarray(doc_scores, dtype=np.float64).reshape(-1)
    if off.size != s.size + 1 or np.any(np.diff(off) < 0) or off[0] != 0:
        raise ValueError("doc_offsets must be non-decreasing, start at 0, one more than scores")
    if n_windows * seq_len > off[-1]:
        raise ValueError(f"{n_windows} windows of {seq_len} exceed the {off[-1]} tokens")
    cum = np.concatenate([[0.0], np.cumsum(s * np.diff(off))])  # integral at each offset

    def integral(t: np.ndarray) -> np.ndarray:
        j = np.clip(np.searchsorted(off, t, side="right") - 1, 0, s.size - 1)
        return cum[j] + s[j] * (t - off[j])

    edges = np.arange(n_windows + 1, dtype=np.int64) * seq_len
    val = integral(edges)
    return np.asarray((val[1:] - val[:-1]) / seq_len, dtype=np.float64)


# -- features --------------------------------------------------------------------------------
def _weighted_mean(x: np.ndarray, w: np.ndarray) -> float:
    return float(np.sum(x * w) / np.sum(w)) if x.size and np.sum(w) > 0 else 0.0


def mean_quality(quality: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted mean quality of the items drawn (0 when none)."""
    q = np.asarray(quality, dtype=np.float64).reshape(-1)
    return _weighted_mean(q, np.ones_like(q) if weights is None else np.asarray(weights, float))


def _topic_mass(topics: np.ndarray, n_topics: int, weights: np.ndarray | None) -> np.ndarray:
    t = np.asarray(topics, dtype=np.int64).reshape(-1)
    w = np.ones(t.size) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    return np.bincount(t, weights=w, minlength=n_topics)[:n_topics]


def topic_entropy(topics: np.ndarray, n_topics: int, weights: np.ndarray | None = None) -> float:
    """Entropy of the drawn topic distribution over ``log(n_topics)``: in ``[0, 1]``."""
    m = _topic_mass(topics, n_topics, weights)
    if n_topics < 2 or m.sum() <= 0:
        return 0.0
    p = m[m > 0] / m.sum()
    return max(0.0, float(-(p * np.log(p)).sum() / math.log(n_topics)))  # no -0.0


def topic_coverage(topics: np.ndarray, n_topics: int) -> float:
    """Fraction of the ``n_topics`` topics drawn at least once."""
    return float(np.count_nonzero(_topic_mass(topics, n_topics, None)) / n_topics)


def repetition_rate(times_seen: np.ndarray) -> float:
    """Fraction of drawn items already seen before they were drawn (``times_seen > 0``)."""
    t = np.asarray(times_seen).reshape(-1)
    return float(np.mean(t > 0)) if t.size else 0.0


def interval_features(
    domains: np.ndarray,
    quality: np.ndarray,
    topics: np.ndarray,
    times_seen: np.ndarray,
    *,
    n_domains: int,
    n_topics: int,
    weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-domain agent features of one interval from the items drawn (METHOD.md "As features").

    One entry per item drawn: its domain index, quality, topic and times seen before the draw;
    ``weights`` (e.g. tokens). Returns ``{feature: (n_domains,) array}``; a domain with nothing
    drawn gets 0 for every feature (the env z-scores features across domains).
    """
    d = np.asarray(domains, dtype=np.int64).reshape(-1)
    w = np.ones(d.size) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    q, t, seen = (np.asarray(x).reshape(-1) for x in (quality, topics, times_seen))
    if not d.size == q.size == t.size == seen.size == w.size:
        raise ValueError("domains, quality, topics, times_seen and weights need one per item")
    out = {f: np.zeros(n_domains) for f in AGENT_FEATURES}
    for i in range(n_domains):
        m = d == i
        out["mean_quality"][i] = mean_quality(q[m], w[m])
        out["topic_entropy"][i] = topic_entropy(t[m], n_topics, w[m])
        out["topic_coverage"][i] = topic_coverage(t[m], n_topics)
        out["repetition_rate"][i] = repetition_rate(seen[m])
    return out
