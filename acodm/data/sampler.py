"""The weighted domain sampler: batches of token windows drawn by domain weights.

Each training sequence is a window of ``seq_len + 1`` tokens (inputs plus the shifted
target) cut from one domain's flat token array at a multiple of ``seq_len``; windows cross
document boundaries (documents are joined with EOS), as in standard packed pretraining.

How a batch is drawn (deterministic from ``(seed, rank, step)`` and the sampler's state):

1. The domain of each of the ``batch_size`` sequences is drawn i.i.d. from the current
   weights (which may change before any batch: :meth:`DomainSampler.set_weights`).
2. Inside a domain, windows are taken **without replacement** in the order of a seeded
   permutation per ``(seed, domain name, epoch)``; when a domain's windows run out its epoch
   counter increases and a new permutation starts. Small domains therefore repeat, and how
   often is reported (:meth:`DomainSampler.epochs`): information the mixer needs.
3. Data parallel: rank ``r`` of ``world_size`` takes every ``world_size``-th window of each
   epoch's permutation, so ranks read disjoint windows with the same weights.

``state_dict()`` / ``load_state_dict()`` hold the step and each domain's (epoch, cursor), so a
restarted run continues with exactly the same stream. A run resumed on another number of ranks
(or another micro-batch size) gets each new rank's state from all old ranks' states through
:func:`reshard_states`: the windows of each domain's current epoch that no old rank drew are
dealt out again over the new ranks, so the epoch still draws no window twice (rule below). Validation windows are fixed: ``n``
non-overlapping windows at evenly spaced starts over the whole of each domain's held-out
split (so they cover many documents, not the first few), the same at every evaluation.
Reward windows (the env's probe reward) are chosen the same way from the reward split.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from acodm.data.store import TokenStore
from acodm.data.weights import normalize_weights
from acodm.errors import SamplerError, StoreError

SAMPLER_STATE_VERSION = 1


#: How messages name a held-out split.
_SPLIT_WORDS = {"val": "validation", "reward": "reward"}


@dataclass(frozen=True)
class Batch:
    """A batch of training or validation sequences.

    ``tokens``: ``(batch, seq_len + 1)`` int64 token ids; inputs are ``tokens[:, :-1]``,
    targets ``tokens[:, 1:]``. ``domains``: ``(batch,)`` int64 index into the store's domains.
    ``step``: the sampler step that produced it (``-1`` for validation batches).
    ``windows``: ``(batch,)`` int64 index of each sequence's window within its domain's
    training windows (window ``w`` starts at token ``w * seq_len``); None for validation.
    """

    tokens: np.ndarray
    domains: np.ndarray
    step: int
    windows: np.ndarray | None = None


def _domain_key(name: str) -> int:
    """A stable 32-bit key per domain name, so adding a domain never shifts another's stream."""
    return zlib.crc32(name.encode("utf-8"))


class DomainSampler:
    """Draw batches of token windows from a :class:`TokenStore` by domain weights.

    >>> s = DomainSampler(store, seq_len=512, batch_size=8, seed=0)  # doctest: +SKIP
    >>> s.set_weights({"code": 0.5, "wiki": 0.5})                    # doctest: +SKIP
    >>> batch = s.next_batch()                                       # doctest: +SKIP
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise SamplerError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise SamplerError(f"rank {rank} is not in [0, world_size={world_size})")
        self.store = store
        self.domains: list[str] = store.domains
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._arrays = [store.tokens(d, "train") for d in self.domains]
        self._n_windows = np.array([(a.size - 1) // self.seq_len for a in self._arrays])
        for d, n in zip(self.domains, self._n_windows, strict=True):
            if n < self.world_size:
                raise SamplerError(
                    f"domain {d!r} has {store.num_tokens(d)} training tokens: fewer than one "
                    f"window of seq_len+1={self.seq_len + 1} tokens per rank "
                    f"({self.world_size} ranks). Lower seq_len, add data, or drop the domain"
                )
        k = len(self.domains)
        self.step = 0
        self._epoch = np.zeros(k, dtype=np.int64)
        self._cursor = np.zeros(k, dtype=np.int64)
        self._order: list[tuple[int, np.ndarray] | None] = [None] * k
        # Per domain, None or the re-dealing of one epoch after a change of world size:
        # {"epoch": E, "layers": [[world_size, [cursor of each old rank]], ...]}
        self._splits: list[dict[str, Any] | None] = [None] * k
        self._weights = np.full(k, 1.0 / k)
        if weights is not None:
            self.set_weights(weights)

    # -- weights ----------------------------------------------------------------------
    @property
    def weights(self) -> np.ndarray:
        """The current domain weights (a copy), in the store's domain order."""
        return self._weights.copy()

    def set_weights(self, weights: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
        """Set the weights used from the next batch on; normalised to sum to 1.

        A mapping must name every domain (give 0 to skip one). Invalid weights are a
        :class:`~acodm.errors.WeightsError` (:func:`acodm.data.weights.normalize_weights`,
        the one check) and leave the current weights in place.
        """
        self._weights = normalize_weights(weights, what="weights", domains=self.domains)

    # -- drawing ----------------------------------------------------------------------
    def _epoch_order(self, i: int, epoch: int) -> np.ndarray:
        """This rank's window order for epoch ``epoch`` of domain ``i``.

        The extension point for within-domain priorities (document scores): any order of
        this rank's windows keeps the without-replacement and disjoint-shard guarantees.
        """
        rng = np.random.default_rng([self.seed, _domain_key(self.domains[i]), epoch])
        perm = rng.permutation(int(self._n_windows[i]))
        split = self._splits[i]
        if split is not None and split["epoch"] == epoch:
            perm = undrawn(perm, split["layers"])
        return perm[self.rank :: self.world_size]

    def _shard_size(self, i: int) -> int:
        """How many windows of domain ``i``'s current epoch this rank draws."""
        split = self._splits[i]
        n = int(self._n_windows[i])
        if split is not None and split["epoch"] == int(self._epoch[i]):
            n = undrawn_count(n, split["layers"])
        return len(range(self.rank, n, self.world_size))

    def _take(self, i: int) -> int:
        """Next window index of domain ``i`` for this rank (advancing epochs as needed)."""
        cached = self._order[i]
        epoch = int(self._epoch[i])
        if cached is None or cached[0] != epoch:
            cached = (epoch, self._epoch_order(i, epoch))
            self._order[i] = cached
        order = cached[1]
        window = int(order[self._cursor[i]])
        self._cursor[i] += 1
        if self._cursor[i] == order.size:
            self._next_epoch(i)
        return window

    def _next_epoch(self, i: int) -> None:
        self._epoch[i] += 1
        self._cursor[i] = 0
        self._splits[i] = None  # a re-dealt epoch is over; the next is a plain permutation

    def draw_domains(self) -> np.ndarray:
        """The domain of each sequence of the next batch (does not advance the sampler)."""
        rng = np.random.default_rng([self.seed, self.rank, self.step, 0x5A3])
        cdf = np.cumsum(self._weights)
        u = rng.random(self.batch_size) * cdf[-1]
        idx = np.searchsorted(cdf, u, side="right")
        return np.minimum(idx, len(self.domains) - 1).astype(np.int64)

    def next_batch(self) -> Batch:
        """Draw the next batch with the current weights and advance the sampler."""
        domains = self.draw_domains()
        width = self.seq_len + 1
        tokens = np.empty((self.batch_size, width), dtype=np.int64)
        windows = np.empty(self.batch_size, dtype=np.int64)
        for row, i in enumerate(domains.tolist()):
            windows[row] = w = self._take(i)
            start = w * self.seq_len
            tokens[row] = self._arrays[i][start : start + width]
        self._check_ids(tokens, domains, "train")
        batch = Batch(tokens=tokens, domains=domains, step=self.step, windows=windows)
        self.step += 1
        return batch

    def _check_ids(self, tokens: np.ndarray, domains: np.ndarray, split: str) -> None:
        """Every id inside the vocabulary, or a clear error instead of an IndexError later.

        The store checked each split's recorded largest id on open; this catches arrays that
        disagree with their manifest, at the cost of one max over the batch.
        """
        vocab = self.store.vocab_size
        if tokens.size and int(tokens.max()) >= vocab:
            row = int(np.argmax(tokens.max(axis=1) >= vocab))
            raise StoreError(
                f"domain {self.domains[int(domains[row])]!r} ({split}) of store "
                f"{self.store.path} holds token id {int(tokens[row].max())}, outside the "
                f"vocabulary [0, {vocab}): its token arrays do not match the manifest; re-run "
                "`acodm prepare`"
            )

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def epochs(self) -> np.ndarray:
        """Epochs of each domain consumed so far by this rank (fractional).

        In an epoch re-dealt after a change of world size the fraction counts the windows the
        old ranks drew as well (``(drawn before + world_size * cursor) / windows``), so the
        mean over ranks goes on from where the old ranks' mean was.
        """
        out = self._epoch + self._cursor / np.maximum(self._plain_sizes(), 1)
        for i, split in enumerate(self._splits):
            if split is not None and split["epoch"] == int(self._epoch[i]):
                n = int(self._n_windows[i])
                drawn = n - undrawn_count(n, split["layers"])
                out[i] = self._epoch[i] + min(
                    (drawn + self.world_size * int(self._cursor[i])) / n, 1.0
                )
        return out

    def _plain_sizes(self) -> np.ndarray:
        return np.array(
            [len(range(self.rank, int(n), self.world_size)) for n in self._n_windows],
            dtype=np.float64,
        )

    def num_windows(self) -> np.ndarray:
        """Training windows per domain (all ranks together)."""
        return self._n_windows.copy()

    # -- resumption -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; with the same store, restores the exact stream."""
        return {
            "version": SAMPLER_STATE_VERSION,
            "domains": list(self.domains),
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "step": self.step,
            "epoch": self._epoch.tolist(),
            "cursor": self._cursor.tolist(),
            "splits": [None if sp is None else dict(sp) for sp in self._splits],
            "weights": self._weights.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != SAMPLER_STATE_VERSION:
            raise SamplerError(
                f"sampler state version {state.get('version')!r} is not "
                f"{SAMPLER_STATE_VERSION}; the checkpoint comes from another acodm version"
            )
        for key in ("domains", "seed", "seq_len", "batch_size", "rank", "world_size"):
            if state[key] != getattr(self, key):
                raise SamplerError(
                    f"sampler state has {key}={state[key]!r} but this sampler has "
                    f"{getattr(self, key)!r}; resume with the same store and settings"
                )
        epoch = np.asarray(state["epoch"], dtype=np.int64)
        cursor = np.asarray(state["cursor"], dtype=np.int64)
        splits = _checked_splits(state.get("splits"), len(self.domains))
        if epoch.shape != self._epoch.shape:
            raise SamplerError("sampler state does not fit this store's windows (was it rebuilt?)")
        old = (self._epoch, self._cursor, self._splits)
        self._epoch, self._splits = epoch.copy(), splits
        for i in range(len(self.domains)):
            # a re-dealt epoch can leave this rank nothing to draw: it starts the next one
            if self._splits[i] is not None and cursor[i] == 0 and self._shard_size(i) == 0:
                self._epoch[i] += 1
                self._splits[i] = None
        sizes = np.array([self._shard_size(i) for i in range(len(self.domains))])
        if np.any(cursor < 0) or np.any(cursor >= sizes):
            self._epoch, self._cursor, self._splits = old
            raise SamplerError("sampler state does not fit this store's windows (was it rebuilt?)")
        self.step = int(state["step"])
        self._cursor = cursor
        self._order = [None] * len(self.domains)
        self.set_weights(state["weights"])

    # -- validation -------------------------------------------------------------------
    def validation_windows(self, domain: str | int, max_windows: int | None = None) -> np.ndarray:
        """Fixed validation windows ``(n, seq_len + 1)`` of one domain (this rank's share).

        The held-out split holds ``N = (tokens - 1) // seq_len`` non-overlapping windows (window
        ``w`` starts at token ``w * seq_len``). With ``max_windows = n < N`` the windows taken are
        ``floor(j * N / n)`` for ``j = 0 .. n - 1``: evenly spaced over the whole split, so they
        cover many documents rather than the first few, and every evaluation sees exactly the
        same tokens. Ranks take every ``world_size``-th of them.
        """
        return self._spread_windows(
            domain, "val", max_windows, "re-run `acodm prepare` with a larger --min-val-tokens"
        )

    def reward_windows(self, domain: str | int, n: int) -> np.ndarray:
        """``n`` fixed probe windows ``(m, seq_len + 1)`` of one domain's reward split (this
        rank's share), spread evenly over the split as :meth:`validation_windows` spreads its
        windows; fewer where it holds fewer than ``n``.
        """
        if n < 1:
            raise SamplerError(f"reward windows per domain must be >= 1, got {n}")
        return self._spread_windows(
            domain,
            "reward",
            n,
            "re-run `acodm prepare` with --reward-fraction (and a large enough "
            "--min-reward-tokens) to hold out a reward split",
        )

    def _spread_windows(
        self, domain: str | int, split: str, max_windows: int | None, fix: str
    ) -> np.ndarray:
        """Windows ``floor(j * N / n)``, ``j < n``, of the ``N`` non-overlapping windows of a
        held-out split (all of them without ``max_windows``), this rank's share."""
        name = self.domains[domain] if isinstance(domain, int) else domain
        arr = self.store.tokens(name, split)
        n_all = (arr.size - 1) // self.seq_len
        if n_all < 1:
            raise SamplerError(
                f"domain {name!r} has {arr.size} {_SPLIT_WORDS[split]} tokens, fewer than one "
                f"window of "
                f"{self.seq_len + 1}; {fix}"
            )
        n = n_all if max_windows is None else min(n_all, int(max_windows))
        chosen = (np.arange(n, dtype=np.int64) * n_all) // n  # distinct, evenly spread
        width = self.seq_len + 1
        starts = chosen[self.rank :: self.world_size] * self.seq_len
        out = np.empty((starts.size, width), dtype=np.int64)
        for row, s in enumerate(starts.tolist()):
            out[row] = arr[s : s + width]
        self._check_ids(out, np.full(len(out), self.domains.index(name)), split)
        return out

    def validation_batches(self, max_windows_per_domain: int | None = None) -> list[Batch]:
        """Validation batches of at most ``batch_size`` windows, domain by domain."""
        out: list[Batch] = []
        for i, d in enumerate(self.domains):
            win = self.validation_windows(d, max_windows_per_domain)
            for s in range(0, win.shape[0], self.batch_size):
                chunk = win[s : s + self.batch_size]
                out.append(Batch(chunk, np.full(chunk.shape[0], i, dtype=np.int64), step=-1))
        return out


# -- a change of world size --------------------------------------------------------------


def undrawn(perm: np.ndarray, layers: Sequence[Sequence[Any]]) -> np.ndarray:
    """The windows of an epoch's permutation ``perm`` that no earlier layout drew, in order.

    ``layers`` are the epoch's earlier layouts, oldest first: ``[world_size, cursors]``, where
    rank ``r`` of that layout drew the first ``cursors[r]`` of ``remaining[r::world_size]``
    (``remaining``: what the layouts before it left). What is left is dealt out again.
    """
    left = np.asarray(perm)
    for world, cursors in layers:
        pos = np.arange(left.size)
        taken = pos // int(world) < np.asarray(cursors, dtype=np.int64)[pos % int(world)]
        left = left[~taken]
    return left


def undrawn_count(n: int, layers: Sequence[Sequence[Any]]) -> int:
    """``undrawn(perm, layers).size`` for a permutation of ``n`` windows, without building it."""
    for world, cursors in layers:
        n -= sum(min(int(c), len(range(r, n, int(world)))) for r, c in enumerate(cursors))
    return n


def _checked_splits(raw: Any, k: int) -> list[dict[str, Any] | None]:
    if raw is None:
        return [None] * k
    if not isinstance(raw, list) or len(raw) != k:
        raise SamplerError(
            "sampler state has a damaged 'splits' entry; resume from another checkpoint"
        )
    out: list[dict[str, Any] | None] = []
    for sp in raw:
        if sp is None:
            out.append(None)
            continue
        ok = (
            isinstance(sp, dict)
            and isinstance(sp.get("epoch"), int)
            and isinstance(sp.get("layers"), list)
            and all(
                isinstance(w, int) and w >= 1 and isinstance(c, list) and len(c) == w
                for w, c in sp["layers"]
            )
        )
        if not ok:
            raise SamplerError(
                "sampler state has a damaged 'splits' entry; resume from another checkpoint"
            )
        out.append({"epoch": sp["epoch"], "layers": [[w, list(c)] for w, c in sp["layers"]]})
    return out


def reshard_states(
    states: Sequence[Mapping[str, Any]], *, world_size: int, batch_size: int
) -> list[dict[str, Any]]:
    """The sampler states of ``world_size`` new ranks from those of all old ranks.

    For the resume of a run on another number of ranks (or with another micro-batch size:
    the domains of a batch are drawn per rank and step, so any change of layout is one).
    The rule, per domain (deterministic from the old states alone):

    - the current epoch is the latest one any old rank had reached, ``E``;
    - the windows of epoch ``E`` the old ranks drew are known from their cursors (the first
      ``cursor[r]`` of rank ``r``'s share); the rest, in the order of ``E``'s permutation, are
      dealt out again to the new ranks (new rank ``r`` takes every ``world_size``-th), so no
      window is drawn twice within ``E`` and the new ranks' shards stay disjoint;
    - an old rank still in an earlier epoch leaves the rest of that epoch undrawn (ranks draw
      domains independently, so they drift by a few windows at most);
    - later epochs are plain permutations, dealt out over the new ranks as usual.

    The step counter (which keys each rank's draw of domains), the weights and the epoch
    counts carry over; repeated changes within one epoch stack (``splits`` keeps each layout).
    """
    if not states:
        raise SamplerError("no sampler states to re-shard")
    first = states[0]
    old_world = len(states)
    for r, st in enumerate(states):
        if st.get("version") != SAMPLER_STATE_VERSION:
            raise SamplerError(
                f"sampler state version {st.get('version')!r} is not {SAMPLER_STATE_VERSION}"
            )
        if st.get("rank") != r or st.get("world_size") != old_world:
            raise SamplerError(
                f"sampler states do not come from ranks 0..{old_world - 1} of one run "
                f"(state {r} says rank {st.get('rank')} of {st.get('world_size')})"
            )
        for key in ("domains", "seed", "seq_len", "step"):
            if st[key] != first[key]:
                raise SamplerError(f"sampler states of one run disagree on {key!r}")
    if world_size < 1 or batch_size < 1:
        raise SamplerError(
            f"world_size and batch_size must be >= 1, got {world_size}, {batch_size}"
        )
    k = len(first["domains"])
    epochs = np.array([st["epoch"] for st in states], dtype=np.int64)  # (old_world, k)
    cursors = np.array([st["cursor"] for st in states], dtype=np.int64)
    old_splits = [_checked_splits(st.get("splits"), k) for st in states]
    new_epoch = epochs.max(axis=0)
    splits: list[dict[str, Any] | None] = []
    for i in range(k):
        e = int(new_epoch[i])
        at = [r for r in range(old_world) if epochs[r, i] == e]
        prior = next(
            (sp for r in at if (sp := old_splits[r][i]) is not None and sp["epoch"] == e), None
        )
        layer = [
            old_world,
            [int(cursors[r, i]) if epochs[r, i] == e else 0 for r in range(old_world)],
        ]
        layers = [*(prior["layers"] if prior else []), layer]
        splits.append({"epoch": e, "layers": layers})
    out = []
    for rank in range(world_size):
        out.append(
            {
                "version": SAMPLER_STATE_VERSION,
                "domains": list(first["domains"]),
                "seed": first["seed"],
                "seq_len": first["seq_len"],
                "batch_size": int(batch_size),
                "rank": rank,
                "world_size": int(world_size),
                "step": first["step"],
                "epoch": new_epoch.tolist(),
                "cursor": [0] * k,
                "splits": [dict(sp) if sp is not None else None for sp in splits],
                "weights": list(first["weights"]),
            }
        )
    return out
