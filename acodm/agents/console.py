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
* **Within-domain order** (:func:`window_priorities`, :func:`weighted_order`,
  :class:`ScoredDomainSampler`): METHOD.md samples inside a domain with a temperature instead of
  the paper's deterministic top-k, without replacement per epoch.
* **Features** (:func:`interval_features`): mean quality, topic entropy and coverage,
  repetition rate per domain and interval, for the env's state and reward terms.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from acodm.data.sampler import DomainSampler, _domain_key
from acodm.dynamics import standardize
from acodm.errors import SamplerError

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
        s = self.alpha @ self.agent_scores(labels)
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


def weighted_order(
    scores: np.ndarray, rng: np.random.Generator, temperature: float, *, top: int | None = None
) -> np.ndarray:
    """A permutation drawn without replacement with probabilities ``∝ exp(score / T)``.

    Efraimidis–Spirakis keys ``u^(1/p)`` in log space (equivalently Gumbel-top-k: sort
    ``score / T + Gumbel`` descending), so large scores never overflow. ``T = inf`` gives a
    uniform permutation. ``top=m``: only the first ``m`` entries of that permutation (a
    partial sort, linear in the number of scores).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    gumbel = -np.log(-np.log(rng.random(s.size)))
    keys = (s / temperature if math.isfinite(temperature) else 0.0 * s) + gumbel
    if top is not None and top < s.size:
        first = np.argpartition(-keys, top - 1)[:top]
        return first[np.argsort(-keys[first], kind="stable")]
    return np.argsort(-keys, kind="stable")


def _order_sha(order: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]


class ScoredDomainSampler(DomainSampler):
    """A :class:`DomainSampler` whose within-domain window order follows window scores.

    Which windows a rank draws in an epoch is the base sampler's: its shard of the seeded
    uniform permutation of ``(seed, domain, epoch)``, so the guarantees hold whatever the
    scores (without replacement per epoch, disjoint rank shards, no coordination between
    ranks). The *order* inside the shard follows the scores: at the epoch's start one
    :func:`weighted_order` of the shard, and every :meth:`set_window_scores` re-draws the
    order of the windows not yet drawn in the current epoch, so new scores act at once.
    ``lookahead``: how many of the remaining windows a re-draw orders by the new scores (the
    rest keep their order behind them); set it to at least the draws between two updates to
    keep a re-draw linear in the domain's size. Domains without scores keep the base order.

    Exact resume: :meth:`state_dict` records a hash of each started epoch's current order;
    :meth:`order_arrays` / :meth:`load_order_arrays` carry the orders themselves (e.g. as
    checkpoint tensors). Without them, a resumed epoch is rebuilt from the current scores,
    which is exact only if the scores did not change since the epoch began; otherwise the
    next draw is a :class:`SamplerError`, never a silently different stream.
    """

    def __init__(
        self, *args: Any, temperature: float = 1.0, lookahead: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if not temperature > 0:
            raise SamplerError(f"temperature must be > 0, got {temperature}")
        if lookahead is not None and lookahead < 1:
            raise SamplerError(f"lookahead must be >= 1 or None, got {lookahead}")
        self.temperature = float(temperature)
        self.lookahead = lookahead
        k = len(self.domains)
        self._scores: list[np.ndarray | None] = [None] * k
        self._sha: list[str | None] = [None] * k  # of the resumed epochs' orders
        self._verify = [False] * k

    def _index(self, domain: str | int) -> int:
        return domain if isinstance(domain, int) else self.domains.index(domain)

    def _started(self, i: int) -> np.ndarray | None:
        """The current epoch's order of domain ``i`` if that epoch has begun, else None."""
        cached = self._order[i]
        if cached is None or cached[0] != int(self._epoch[i]) or self._cursor[i] == 0:
            return None
        return cached[1]

    def window_scores(self, domain: str | int) -> np.ndarray | None:
        """The scores in use for a domain (a copy), or None."""
        s = self._scores[self._index(domain)]
        return None if s is None else s.copy()

    def set_window_scores(
        self, domain: str | int, scores: np.ndarray | None, *, reorder: bool = True
    ) -> None:
        """Scores of every window of a domain (``num_windows()[i]`` values); ``None`` clears.

        They order the domain's next epochs and, with ``reorder`` (default), the windows not
        yet drawn in its current epoch. ``reorder=False`` only sets them (resuming a run
        whose orders are restored by :meth:`load_order_arrays`).
        """
        i = self._index(domain)
        s = None
        if scores is not None:
            s = np.array(scores, dtype=np.float64).reshape(-1)
            if s.size != int(self._n_windows[i]) or not np.all(np.isfinite(s)):
                raise SamplerError(
                    f"domain {self.domains[i]!r} needs {int(self._n_windows[i])} finite window "
                    f"scores, got {s.size}"
                )
        self._scores[i] = s
        order = self._started(i)
        if not reorder or s is None or order is None:
            return
        c = int(self._cursor[i])
        rest = order[c:]
        if rest.size < 2:
            return
        rng = np.random.default_rng(
            [self.seed, _domain_key(self.domains[i]), int(self._epoch[i]), self.rank, c, 0x5C1]
        )
        m = rest.size if self.lookahead is None else min(self.lookahead, rest.size)
        first = weighted_order(s[rest], rng, self.temperature, top=m)
        keep = np.ones(rest.size, dtype=bool)
        keep[first] = False
        new = np.concatenate([order[:c], rest[first], rest[keep]])
        self._order[i] = (int(self._epoch[i]), new)

    def _epoch_order(self, i: int, epoch: int) -> np.ndarray:
        shard = super()._epoch_order(i, epoch)  # which windows: the base sampler's
        scores = self._scores[i]
        order = shard
        if scores is not None:
            rng = np.random.default_rng(
                [self.seed, _domain_key(self.domains[i]), epoch, self.rank, 0x5C0]
            )
            order = shard[weighted_order(scores[shard], rng, self.temperature)]
        if self._verify[i] and self._cursor[i] > 0 and _order_sha(order) != self._sha[i]:
            raise SamplerError(
                f"domain {self.domains[i]!r} resumes mid-epoch, but its order cannot be rebuilt "
                "from the current window scores (they changed during the epoch); restore the "
                "saved orders with load_order_arrays()"
            )
        self._verify[i] = False
        return order

    def order_arrays(self) -> dict[str, np.ndarray]:
        """The current order of every started epoch, ``{"<domain index>": order}``, for a
        checkpoint's tensors (restore with :meth:`load_order_arrays`)."""
        out = {}
        for i in range(len(self.domains)):
            order = self._started(i)
            if order is not None:
                out[str(i)] = order.astype(np.int64, copy=True)
        return out

    def load_order_arrays(self, orders: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`order_arrays` (after :meth:`load_state_dict`)."""
        for key, value in orders.items():
            try:
                i = int(key)
                ok = 0 <= i < len(self.domains)
            except ValueError:
                ok = False
            a = np.asarray(value, dtype=np.int64).reshape(-1)
            if ok:
                size = len(range(self.rank, int(self._n_windows[i]), self.world_size))
                ok = a.size == size and self._cursor[i] > 0 and _order_sha(a) == self._sha[i]
            if not ok:
                raise SamplerError(
                    f"saved window order {key!r} does not fit this sampler's state (another "
                    "store, rank or checkpoint?)"
                )
            self._order[i] = (int(self._epoch[i]), a.copy())
            self._verify[i] = False

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["temperature"] = self.temperature
        state["order_sha"] = [
            None if (o := self._started(i)) is None else _order_sha(o)
            for i in range(len(self.domains))
        ]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        # a plain DomainSampler state (no scores yet) resumes too
        if float(state.get("temperature", self.temperature)) != self.temperature:
            raise SamplerError(
                f"sampler state has temperature {state['temperature']}, this "
                f"sampler {self.temperature}"
            )
        self._sha = list(state.get("order_sha", [None] * len(self.domains)))
        self._verify = [True] * len(self.domains)


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


FEATURES = ("mean_quality", "topic_entropy", "topic_coverage", "repetition_rate")


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
    out = {f: np.zeros(n_domains) for f in FEATURES}
    for i in range(n_domains):
        m = d == i
        out["mean_quality"][i] = mean_quality(q[m], w[m])
        out["topic_entropy"][i] = topic_entropy(t[m], n_topics, w[m])
        out["topic_coverage"][i] = topic_coverage(t[m], n_topics)
        out["repetition_rate"][i] = repetition_rate(seen[m])
    return out
