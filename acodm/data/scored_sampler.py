"""A :class:`DomainSampler` whose order inside each domain follows window scores.

The agent console (:mod:`acodm.agents.online`) scores every sampling window; this sampler
draws each rank's windows of an epoch in a score-weighted order with a temperature
(:func:`weighted_order`) instead of the base sampler's uniform one. Which windows a rank
draws per epoch stays the base sampler's, so epochs stay without replacement and shards
disjoint whatever the scores.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from acodm.data.sampler import DomainSampler, _domain_key
from acodm.errors import SamplerError

__all__ = ["ScoredDomainSampler", "weighted_order"]


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
