"""Mix a dict of Hugging Face datasets (one per domain, streaming allowed) by changing weights.

For users who keep their data as ``datasets`` rather than an acodm token store::

    from datasets import load_dataset
    parts = {name: load_dataset(path, split="train", streaming=True) for name, path in ...}
    ds = DatasetsMixture(parts, tokenizer=tok, seq_len=512, seed=0)
    # then as with MixtureDataset: MixingCallback(ds, probe, policy), SequenceLoss(probe)

Each domain's examples are read in order (shuffle them first if they are sorted:
``dataset.shuffle(seed=...)``), turned into token ids (an ``input_ids`` column as it is, or
the ``text`` column through ``tokenizer``), joined with EOS and cut into windows of
``seq_len + 1`` tokens that overlap by one (as acodm's store cuts them: the targets of one
window start where the next window's inputs start). A domain that runs out starts again
(its epoch counter goes up). Which domain each item comes from is drawn from the current
weights, keyed by ``(seed, item index)``, so the stream depends only on the seed and the
weight history, and it resumes exactly from :meth:`MixtureStream.stream_state` (each
domain's position is the number of its examples read and the tokens left over; a resume
skips that many examples: ``IterableDataset.skip`` for a streaming dataset, an index for a
map-style one).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from acodm.data.weights import normalize_weights
from acodm.policies.hf import HFMixingError, MixtureStream, window_item

__all__ = ["DatasetsMixture"]


class _Packer:
    """One domain's examples -> a stream of ``width``-token windows overlapping by one."""

    def __init__(self, name: str, source: Iterable[Mapping[str, Any]], mix: DatasetsMixture):
        self.name, self.source, self.mix = name, source, mix
        self.epoch = 0
        self.read = 0  # examples of this epoch read so far
        self.buffer: list[int] = []
        self._it: Iterator[Mapping[str, Any]] | None = None
        self.size = len(source) if hasattr(source, "__len__") else None  # type: ignore[arg-type]

    def _iterator(self) -> Iterator[Mapping[str, Any]]:
        if self._it is None:
            self._it = self._skipped(self.read)
        return self._it

    def _skipped(self, n: int) -> Iterator[Mapping[str, Any]]:
        src = self.source
        if n == 0:
            return iter(src)
        if hasattr(src, "skip") and not hasattr(src, "__getitem__"):  # a streaming dataset
            return iter(src.skip(n))
        if hasattr(src, "__getitem__") and self.size is not None:  # map-style: by index
            return (src[i] for i in range(n, self.size))
        return itertools.islice(iter(src), n, None)

    def window(self) -> list[int]:
        width = self.mix.seq_len + 1
        while len(self.buffer) < width:
            try:
                example = next(self._iterator())
            except StopIteration:
                if self.read == 0:  # a whole pass without one example
                    raise HFMixingError(
                        f"domain {self.name!r} has no examples: give it data or drop it"
                    ) from None
                self.epoch, self.read, self._it = self.epoch + 1, 0, None
                continue
            self.read += 1
            self.buffer.extend(self.mix.token_ids(self.name, example))
        out = self.buffer[:width]
        del self.buffer[: width - 1]  # the next window starts at this one's last token
        return out

    def epochs(self) -> float:
        frac = self.read / self.size if self.size else 0.0
        return self.epoch + frac

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "read": self.read, "buffer": list(self.buffer)}

    def load(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.read = int(state["epoch"]), int(state["read"])
        self.buffer = [int(t) for t in state["buffer"]]
        self._it = None  # re-opened at the saved example


class DatasetsMixture(MixtureStream):
    """A weighted, endless stream of windows over a dict of datasets, one per domain.

    Args:
        datasets: ``{domain: dataset}``; any iterable of example dicts (a ``datasets``
            ``Dataset`` or streaming ``IterableDataset``, a list of dicts). The dict's order
            is the domain order.
        seq_len: tokens a model reads per item (items hold ``seq_len + 1``).
        tokenizer: turns the ``text_column`` into ids (a ``transformers`` tokenizer or any
            callable returning ``{"input_ids": [...]}``); not needed when the examples hold
            ``input_ids``.
        eos_id: appended after each example (default: the tokenizer's ``eos_token_id``).
        domain_tokens: training tokens per domain, for the mixers and priors that weigh
            domains by size (natural, UniMax, a residual actor). Default: for datasets with a
            length, that length times the mean tokens of their first 64 examples (an
            estimate); a streaming dataset without a length needs it given.
    """

    def __init__(
        self,
        datasets: Mapping[str, Iterable[Mapping[str, Any]]],
        *,
        seq_len: int,
        tokenizer: Any = None,
        text_column: str = "text",
        eos_id: int | None = None,
        seed: int = 0,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        domain_tokens: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if not datasets:
            raise HFMixingError("give at least one domain: {name: dataset}")
        if seq_len < 1:
            raise HFMixingError(f"seq_len must be >= 1, got {seq_len}")
        self.domains = list(datasets)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.tokenizer, self.text_column = tokenizer, text_column
        self.eos_id = eos_id if eos_id is not None else getattr(tokenizer, "eos_token_id", None)
        if self.eos_id is None:
            raise HFMixingError(
                "no EOS id to join examples with: pass eos_id= or a tokenizer with eos_token_id"
            )
        self._packers = [_Packer(d, src, self) for d, src in datasets.items()]
        self._tokens = None if domain_tokens is None else dict(domain_tokens)
        if self._tokens is not None and set(self._tokens) != set(self.domains):
            raise HFMixingError(
                f"domain_tokens names {sorted(self._tokens)}, the datasets {sorted(self.domains)}"
            )
        k = len(self.domains)
        self._weights = np.full(k, 1.0 / k)
        if weights is not None:
            self._apply_weights(weights)

    # -- tokens ----------------------------------------------------------------------------
    def token_ids(self, domain: str, example: Mapping[str, Any]) -> list[int]:
        """An example's token ids followed by EOS."""
        if "input_ids" in example:
            ids = example["input_ids"]
        elif self.text_column in example:
            if self.tokenizer is None:
                raise HFMixingError(
                    f"domain {domain!r} has text but no tokenizer was given: pass tokenizer= "
                    "(or examples with input_ids)"
                )
            ids = self.tokenizer(example[self.text_column])["input_ids"]
        else:
            raise HFMixingError(
                f"an example of domain {domain!r} has neither 'input_ids' nor "
                f"{self.text_column!r} (its keys: {sorted(example)}); pass text_column="
            )
        return [int(t) for t in ids] + [int(self.eos_id)]  # type: ignore[arg-type]

    def domain_tokens(self) -> np.ndarray:
        if self._tokens is not None:
            return np.array([int(self._tokens[d]) for d in self.domains], dtype=np.int64)
        out = []
        for p in self._packers:
            if p.size is None:
                raise HFMixingError(
                    f"domain {p.name!r} is a stream of unknown length: give "
                    "DatasetsMixture(..., domain_tokens={domain: tokens}) for mixers and "
                    "priors that weigh domains by size"
                )
            head = list(itertools.islice(iter(p.source), 64))
            mean = np.mean([len(self.token_ids(p.name, ex)) for ex in head]) if head else 0.0
            out.append(round(float(mean) * p.size))
        self._tokens = dict(zip(self.domains, out, strict=True))
        return np.array(out, dtype=np.int64)

    # -- weights and draws ---------------------------------------------------------------------
    @property
    def weights(self) -> np.ndarray:
        return self._weights.copy()

    def _apply_weights(self, weights: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
        self._weights = normalize_weights(weights, what="weights", domains=self.domains)

    def _draw(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.drawn, 0x5A3])
        cdf = np.cumsum(self._weights)
        i = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)
        window = torch.tensor(self._packers[i].window(), dtype=torch.int64)
        return window_item(window, i)

    def epochs(self) -> np.ndarray:
        """Epochs per domain: completed passes plus, where the dataset has a length, the
        share of the current pass read (a stream without a length counts whole passes)."""
        return np.array([p.epochs() for p in self._packers], dtype=np.float64)

    def _position(self) -> dict[str, Any]:
        return {
            "domains": list(self.domains),
            "weights": self._weights.tolist(),
            "packers": [p.state() for p in self._packers],
        }

    def _load_position(self, state: Mapping[str, Any]) -> None:
        if list(state["domains"]) != self.domains:
            raise HFMixingError(
                f"the saved stream mixes {state['domains']}, this one {self.domains}"
            )
        self._apply_weights(state["weights"])
        for p, st in zip(self._packers, state["packers"], strict=True):
            p.load(st)
