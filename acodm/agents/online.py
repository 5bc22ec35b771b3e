"""The agent console inside a training run (METHOD.md, "Multi-agent scores": online update).

:class:`OnlineConsole` connects the offline annotations (:func:`acodm.agents.annotate_store`)
to a live run of :class:`acodm.trainer.Trainer` (``TrainConfig.console=True``):

* **Labels per sampling window.** The sampler draws windows of ``seq_len`` tokens from each
  domain's EOS-joined stream; a window takes the labels (quality bin and score, topic) of the
  document holding its middle token (:func:`window_documents`).
* **Feedback** (every interval, from the model): the credit of each sequence trained on is the
  length of its gradient along the *reference gradient* — the summed gradient of the
  reference-quality domains (default: those the quality agent was trained on) over the
  previous interval, captured by the trainer's alignment hooks on the monitored layers
  (:meth:`acodm.dynamics.GradientAlignment.set_reference`). To first order this is how much an
  SGD step on that sequence lowers the reference loss, so it is the issue's "alignment of each
  group's gradient with the reference gradient" and, summed over a label group, the group's
  share of the reference-loss decrease. No extra forward or backward pass. The credits update
  the console (as :meth:`AgentConsole.update`: the console weights first, then each agent's
  memory from the z-scored group means), judged *within* domains: the console orders
  documents inside a domain, the policy decides the domains (:meth:`OnlineConsole._update`).
* **Within-domain order.** After each update every window gets the console score
  ``sum_a alpha_a W_a[label_a] / (1 + 0.1 times_seen)`` and the sampler
  (:class:`ScoredDomainSampler`) re-orders the windows each rank has not drawn yet in the
  current epoch by it, with a temperature (which windows a rank draws per epoch is fixed by
  the base sampler, so epochs stay without replacement and shards disjoint).
* **Features** (:func:`interval_features`): mean quality, topic entropy and coverage and the
  repetition rate of what each domain contributed to the interval; the env's observation can
  include them and its reward can add console-weighted quality and diversity terms
  (:mod:`acodm.spaces`).

Everything here is deterministic host-side numpy; under DDP :meth:`OnlineConsole.end_interval`
gathers every rank's items and credits first, so all ranks hold the same console. A run talks
to the console through four calls (:meth:`OnlineConsole.for_run` lists them): the console is
one plug-in of :class:`acodm.trainer.Trainer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from acodm import distributed as dist
from acodm.agents.annotate import AnnotationError, Annotations, load_annotations
from acodm.agents.console import PAPER_INIT, AgentConsole, AgentMemory, interval_features
from acodm.checkpoint import Checkpoint, CheckpointError
from acodm.data.sampler import Batch
from acodm.data.scored_sampler import ScoredDomainSampler
from acodm.data.store import TokenStore
from acodm.dynamics.alignment import GradientAlignment
from acodm.errors import AcodmError

if TYPE_CHECKING:
    import torch

ONLINE_STATE_VERSION = 1
AGENTS = ("quality", "domain", "topic")


def window_documents(doc_offsets: np.ndarray, seq_len: int, n_windows: int) -> np.ndarray:
    """Index of the document holding the middle token of each of the first ``n_windows``
    windows (window ``w`` covers tokens ``[w * seq_len, (w + 1) * seq_len)``)."""
    off = np.asarray(doc_offsets, dtype=np.int64).reshape(-1)
    if off.size < 2:
        raise AnnotationError("a domain without training documents has no windows to label")
    mid = np.arange(n_windows, dtype=np.int64) * seq_len + seq_len // 2
    return np.clip(np.searchsorted(off, mid, side="right") - 1, 0, off.size - 2)


class OnlineConsole:
    """The quality, domain and topic agents and their console, fed by a training run.

    ``n_windows``: the sampler's training windows per domain (``sampler.num_windows()``).
    ``reference``: names of the reference-quality domains (default: the annotations').
    """

    def __init__(
        self,
        store: TokenStore,
        seq_len: int,
        n_windows: np.ndarray,
        *,
        annotations: Annotations | None = None,
        reference: Sequence[str] = (),
        init: float = PAPER_INIT,
    ) -> None:
        ann = annotations if annotations is not None else _load(store)
        self.domains = tuple(store.domains)
        if tuple(ann.domains) != self.domains:
            raise AnnotationError(
                f"the annotations cover domains {list(ann.domains)}, the store has "
                f"{list(self.domains)}; re-run `acodm annotate --overwrite`"
            )
        ref = tuple(reference) or ann.reference_domains
        unknown = [d for d in ref if d not in self.domains]
        if unknown or not ref:
            raise AnnotationError(
                f"reference domains {list(ref)} must be non-empty names of the store's domains "
                f"{list(self.domains)} (unknown: {unknown})"
            )
        self.reference = ref
        self.reference_ids = [self.domains.index(d) for d in ref]
        self.k = len(self.domains)
        self.n_topics = ann.n_topics
        self.quality: list[np.ndarray] = []  # per domain: quality score of each window
        self.quality_bin: list[np.ndarray] = []
        self.topic: list[np.ndarray] = []
        for i, d in enumerate(self.domains):
            docs = window_documents(store.doc_offsets(d), seq_len, int(n_windows[i]))
            self.quality.append(np.asarray(ann.quality_score[d], np.float64)[docs])
            self.quality_bin.append(np.asarray(ann.quality_bin[d], np.int64)[docs])
            self.topic.append(np.asarray(ann.topic[d], np.int64)[docs])
        self.console = AgentConsole(
            [
                AgentMemory("quality", ann.n_quality_bins, init=init),
                AgentMemory("domain", self.k, init=init),
                AgentMemory("topic", self.n_topics, init=init),
            ]
        )
        self.times_seen = [np.zeros(int(n), dtype=np.int64) for n in n_windows]
        self.last_correlation = np.zeros(len(AGENTS))
        self.updates = 0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.sampler: ScoredDomainSampler | None = None  # the run's (for_run)

    # -- the plug-in: what a training run calls -----------------------------------------
    @classmethod
    def for_run(
        cls,
        store: TokenStore,
        sampler: ScoredDomainSampler,
        seq_len: int,
        *,
        reference: Sequence[str] = (),
    ) -> OnlineConsole:
        """The console of a run that draws with ``sampler``; it orders the first epoch.

        A run calls four things: :meth:`on_batch` for every training batch,
        :meth:`end_interval` after each interval, :meth:`checkpoint` / :meth:`load` with its
        checkpoints (and reads :attr:`alpha` and :meth:`metrics`).
        """
        console = cls(store, seq_len, sampler.num_windows(), reference=reference)
        console.sampler = sampler
        console._push_scores()  # the first epoch is ordered by the initial memory
        return console

    def _run_sampler(self) -> ScoredDomainSampler:
        if self.sampler is None:
            raise AcodmError("this console is not attached to a run: build it with for_run()")
        return self.sampler

    def _push_scores(self, *, reorder: bool = True) -> None:
        sampler = self._run_sampler()
        for i in range(self.k):
            sampler.set_window_scores(i, self.window_scores(i), reorder=reorder)

    def on_batch(self, batch: Batch) -> None:
        """A training batch is about to be trained on (in training order)."""
        if batch.windows is None:
            raise AcodmError("the console needs training batches (with their windows)")
        self.record(batch.domains, batch.windows)

    def end_interval(self, alignment: GradientAlignment) -> dict[str, np.ndarray]:
        """The console's part of closing an interval (METHOD.md, "Online update").

        Takes every rank's (domain, window) items and the alignment hooks' credits for them
        (:meth:`GradientAlignment.hand_out_credits`, which also sets the reference gradient
        for the next interval), updates the console and re-scores the sampler's windows
        (which re-orders what each rank has not drawn yet). ``alignment`` must be reduced
        over ranks. Returns the per-domain agent features of the interval.
        """
        domains, windows = self.take_items()
        credits = alignment.hand_out_credits(self.reference_ids)
        if dist.active():
            parts = dist.all_gather_object((domains, windows, credits))
            domains = np.concatenate([p[0] for p in parts])
            windows = np.concatenate([p[1] for p in parts])
            credits = None if credits is None else np.concatenate([p[2] for p in parts])
        if credits is not None and credits.size != domains.size:
            raise AcodmError(
                f"the console recorded {domains.size} sequences but the alignment hooks credited "
                f"{credits.size}: every training micro-batch must run forward and backward once"
            )
        features = self.close_interval(domains, windows, credits)
        self._push_scores()
        return features

    def checkpoint(
        self, alignment: GradientAlignment
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(state, tensors)`` for the run's checkpoint (JSON state, named CPU tensors): the
        console, its window counters, every rank's current window orders and the reference
        gradient for the next interval. Call on every rank (it gathers the orders)."""
        import torch

        tensors = {k: torch.from_numpy(v) for k, v in self.tensors().items()}
        orders = dist.all_gather_object(self._run_sampler().order_arrays())
        for rank, arrays in enumerate(orders):
            for key, v in arrays.items():
                tensors[f"console/order/{rank}/{key}"] = torch.from_numpy(v)
        for i, ref in enumerate(alignment.reference()):
            tensors[f"console/reference/{i}"] = ref.detach().cpu()
        return self.state_dict(), tensors

    def load(self, ckpt: Checkpoint, alignment: GradientAlignment) -> None:
        """Restore :meth:`checkpoint` output from ``ckpt`` (this process's rank's orders)."""
        state = ckpt.state.get("console")
        if state is None:
            raise CheckpointError(
                f"checkpoint {ckpt.path} was written without --console; resume without it"
            )
        extra = {k: v.numpy() for k, v in ckpt.extra.items() if k.startswith("console/")}
        try:
            self.load_state_dict(state, extra)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: bad console state ({e})") from e
        sampler = self._run_sampler()
        self._push_scores(reorder=False)  # the saved orders already follow these scores
        mine = f"console/order/{sampler.rank}/"
        try:
            sampler.load_order_arrays(
                {k.removeprefix(mine): v for k, v in extra.items() if k.startswith(mine)}
            )
        except AcodmError as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: {e}") from e
        refs = [ckpt.extra.get(f"console/reference/{i}") for i in range(len(alignment.names))]
        if all(r is not None for r in refs):
            alignment.set_reference([r for r in refs if r is not None], normalized=True)
        else:
            alignment.set_reference(None)

    # -- one interval -----------------------------------------------------------------
    def record(self, domains: np.ndarray, windows: np.ndarray) -> None:
        """The (domain, window) of each sequence of a micro-batch, in training order."""
        d = np.asarray(domains, dtype=np.int64).reshape(-1)
        w = np.asarray(windows, dtype=np.int64).reshape(-1)
        if d.shape != w.shape:
            raise ValueError(f"domains {d.shape} and windows {w.shape} differ in shape")
        self._pending.append((d.copy(), w.copy()))

    def take_items(self) -> tuple[np.ndarray, np.ndarray]:
        """This process's recorded (domains, windows) of the interval; clears them."""
        if not self._pending:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty.copy()
        d = np.concatenate([p[0] for p in self._pending])
        w = np.concatenate([p[1] for p in self._pending])
        self._pending.clear()
        return d, w

    def _labels(
        self, domains: np.ndarray, windows: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each item's agent labels (by agent name) and its quality score."""
        qb = np.empty(domains.size, dtype=np.int64)
        tp = np.empty(domains.size, dtype=np.int64)
        quality = np.empty(domains.size, dtype=np.float64)
        for i in np.unique(domains).tolist():
            m = domains == i
            qb[m] = self.quality_bin[i][windows[m]]
            tp[m] = self.topic[i][windows[m]]
            quality[m] = self.quality[i][windows[m]]
        return {"quality": qb, "domain": domains, "topic": tp}, quality

    def _seen_before(self, domains: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Times each item's window was drawn before this draw (earlier intervals and earlier
        in this interval); updates the counters."""
        seen = np.empty(domains.size, dtype=np.int64)
        for i in np.unique(domains).tolist():
            idx = np.flatnonzero(domains == i)
            w = windows[idx]
            # occurrences of the same window earlier in this interval
            order = np.argsort(w, kind="stable")
            sw = w[order]
            first = np.r_[True, sw[1:] != sw[:-1]]
            run_start = np.maximum.accumulate(np.where(first, np.arange(sw.size), 0))
            earlier = np.empty(sw.size, dtype=np.int64)
            earlier[order] = np.arange(sw.size) - run_start
            seen[idx] = self.times_seen[i][w] + earlier
            np.add.at(self.times_seen[i], w, 1)
        return seen

    def close_interval(
        self, domains: np.ndarray, windows: np.ndarray, credits: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """Close an interval with *all ranks'* items in training order and their credits.

        ``credits`` (one per item, NaN for dropped ones) is None before the first reference
        gradient exists (the first interval). Returns the per-domain features
        (:func:`interval_features`, keys ``mean_quality``, ``topic_entropy``,
        ``topic_coverage``, ``repetition_rate``).
        """
        d = np.asarray(domains, dtype=np.int64).reshape(-1)
        w = np.asarray(windows, dtype=np.int64).reshape(-1)
        labels, quality = self._labels(d, w)
        seen = self._seen_before(d, w)
        features = interval_features(
            d, quality, labels["topic"], seen, n_domains=self.k, n_topics=self.n_topics
        )
        if credits is not None:
            c = np.asarray(credits, dtype=np.float64).reshape(-1)
            if c.shape != d.shape:
                raise ValueError(f"{c.size} credits for {d.size} items")
            keep = np.isfinite(c)
            if keep.sum() >= 2:
                self._update({a: v[keep] for a, v in labels.items()}, c[keep])
        return features

    def _update(self, labels: dict[str, np.ndarray], credit: np.ndarray) -> None:
        """The console decides *inside* domains, so it is judged there: the console weights
        and the quality/topic memories learn from credits minus their domain's mean in the
        interval; the domain memory learns from the raw credits (which domains help the
        reference). A domain-constant score cannot predict within-domain credit, so the domain
        agent's console weight decays to the floor and does not flatten the order."""
        d = labels["domain"]
        mean = np.bincount(d, weights=credit, minlength=self.k) / np.maximum(
            np.bincount(d, minlength=self.k), 1
        )
        within = credit - mean[d]
        self.last_correlation = self.console.update_alpha(labels, within)
        for agent in self.console.agents:
            raw = agent.name == "domain"
            agent.update_from_credit(labels[agent.name], credit if raw else within)
        self.updates += 1

    def window_scores(self, i: int) -> np.ndarray:
        """Console score of every training window of domain ``i`` (repetition penalty included)."""
        labels = {
            "quality": self.quality_bin[i],
            "domain": np.full(self.quality_bin[i].size, i, dtype=np.int64),
            "topic": self.topic[i],
        }
        return self.console.score(labels, self.times_seen[i])

    @property
    def alpha(self) -> dict[str, float]:
        """The console weight of each agent."""
        return {n: float(a) for n, a in zip(self.console.names, self.console.alpha, strict=True)}

    def metrics(self) -> dict[str, float]:
        out = {f"console/alpha/{n}": a for n, a in self.alpha.items()}
        for n, c in zip(self.console.names, self.last_correlation, strict=True):
            out[f"console/corr/{n}"] = float(c)
        out["console/updates"] = float(self.updates)
        return out

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON part of the state (the window counters are :meth:`tensors`)."""
        return {
            "version": ONLINE_STATE_VERSION,
            "domains": list(self.domains),
            "reference": list(self.reference),
            "console": self.console.state_dict(),
            "last_correlation": self.last_correlation.tolist(),
            "updates": self.updates,
        }

    def tensors(self) -> dict[str, np.ndarray]:
        return {f"console/times_seen/{i}": t.copy() for i, t in enumerate(self.times_seen)}

    def load_state_dict(self, state: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
        if state.get("version") != ONLINE_STATE_VERSION:
            raise AnnotationError(
                f"console state version {state.get('version')!r} is not {ONLINE_STATE_VERSION}"
            )
        if tuple(state["domains"]) != self.domains or tuple(state["reference"]) != self.reference:
            raise AnnotationError(
                "the checkpoint's console has other domains or reference domains "
                f"({state['domains']}, {state['reference']}) than this run"
            )
        seen = []
        for i, t in enumerate(self.times_seen):
            a = np.asarray(tensors[f"console/times_seen/{i}"], dtype=np.int64).reshape(-1)
            if a.shape != t.shape:
                raise AnnotationError(
                    f"the checkpoint counts {a.size} windows for domain {self.domains[i]!r}, "
                    f"this store has {t.size}: was the store rebuilt?"
                )
            seen.append(a.copy())
        self.console.load_state_dict(state["console"])
        self.times_seen = seen
        self.last_correlation = np.asarray(state["last_correlation"], dtype=np.float64)
        self.updates = int(state["updates"])


def _load(store: TokenStore) -> Annotations:
    try:
        return load_annotations(store)
    except AnnotationError as e:
        raise AnnotationError(
            f"the console needs the store's annotations ({e}); run `acodm annotate "
            f"{store.path}` first, or train without --console"
        ) from e
