"""Data-constrained stores: documents cut into pieces, and capped training splits.

Two steps of ``acodm prepare`` that make small, repeating domains out of a large corpus, so
that mixtures can be told apart (a domain that repeats 14 epochs under uniform weights is
where UniMax and uniform differ). Neither touches the validation rule: pieces are cut
*before* tokenizing (the split then works on pieces), and the cap is applied to the training
mask *after* the split was decided on the uncapped domain, so capping never changes val.

**Pieces** (``--doc-chars N``): each document is cut into pieces of about ``N`` characters,
each ending at a line boundary when one falls in the last half of the piece, else at
whitespace, else exactly at ``N`` characters; a remainder of at most ``1.25 N`` stays whole.
Piece ``i`` of document ``d`` has the id ``d#i``. Pieces that hold only whitespace are dropped.
Validation then holds out whole pieces, so val and train are disjoint by pieces (two pieces of
one document may land on both sides: they share a source, never text).

**Training caps** (``--max-train-tokens``), in tokens with each document's EOS counted:

- ``N``: every domain keeps at most ``N`` training tokens;
- ``name=N,name=N,...``: those domains are capped, the others keep everything;
- ``geometric:MIN:MAX``: the domains in order of their natural size (characters in the corpus,
  ties by name) get caps ``MIN * (MAX / MIN) ** (j / (k - 1))`` for ``j = 0 .. k - 1``: very
  unequal sizes, the smallest ``MIN`` and the largest ``MAX`` (the CPU pilot of
  ``BENCHMARKS.md`` is about ``geometric:6000:789000``).

A capped domain keeps whole training documents in the seeded rank order of the validation
split (the same keyed hash), taking each one that still fits under the cap (if none fits, its
smallest document). A domain smaller than its cap keeps everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from acodm.data.corpus import Document
from acodm.errors import StoreError


def cut_text(text: str, doc_chars: int) -> list[str]:
    """``text`` cut into pieces of about ``doc_chars`` characters (see the module docstring)."""
    if doc_chars < 1:
        raise StoreError(f"--doc-chars must be >= 1, got {doc_chars}")
    pieces: list[str] = []
    pos, n = 0, len(text)
    while n - pos > 1.25 * doc_chars:
        lo, hi = pos + doc_chars // 2, pos + doc_chars
        cut = text.rfind("\n", lo, hi)
        if cut < 0:
            cut = max(text.rfind(c, lo, hi) for c in " \t\r\f\v")
        end = hi if cut < 0 else cut + 1  # the boundary character ends its piece
        pieces.append(text[pos:end])
        pos = end
    pieces.append(text[pos:])
    return [p for p in pieces if p.strip()]


def cut_documents(docs: Iterable[Document], doc_chars: int | None) -> Iterator[Document]:
    """Each document as its pieces ``doc_id#i`` (unchanged when ``doc_chars`` is None)."""
    for doc in docs:
        if doc_chars is None:
            yield doc
            continue
        for i, piece in enumerate(cut_text(doc.text, doc_chars)):
            yield replace(doc, text=piece, doc_id=f"{doc.doc_id}#{i}")


@dataclass(frozen=True)
class TrainCaps:
    """A parsed ``--max-train-tokens`` rule (see the module docstring)."""

    spec: str
    all_domains: int | None = None
    per_domain: tuple[tuple[str, int], ...] = ()
    geometric: tuple[int, int] | None = None

    def resolve(self, domains: Sequence[str], natural: Mapping[str, int]) -> dict[str, int]:
        """The cap of each capped domain; ``natural`` orders the domains for ``geometric``."""
        if self.all_domains is not None:
            return {d: self.all_domains for d in domains}
        if self.geometric is not None:
            lo, hi = self.geometric
            order = sorted(domains, key=lambda d: (natural[d], d))
            k = len(order)
            if k == 1:
                return {order[0]: hi}
            return {d: round(lo * (hi / lo) ** (j / (k - 1))) for j, d in enumerate(order)}
        caps = dict(self.per_domain)
        unknown = sorted(set(caps) - set(domains))
        if unknown:
            raise StoreError(
                f"--max-train-tokens names domains {unknown} that the corpus does not have "
                f"(it has {list(domains)}); fix the names"
            )
        return caps


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise StoreError(
            f"--max-train-tokens: {what} must be a positive integer of tokens, got {text!r}"
        )
    return value


def parse_train_caps(spec: str) -> TrainCaps:
    """Parse ``N``, ``name=N,...`` or ``geometric:MIN:MAX`` (a clear error otherwise)."""
    text = spec.strip()
    if text.startswith("geometric:"):
        parts = text.split(":")
        if len(parts) != 3:
            raise StoreError(
                f"--max-train-tokens {spec!r}: write geometric:MIN:MAX, e.g. geometric:6000:789000"
            )
        lo, hi = _positive_int(parts[1], "MIN"), _positive_int(parts[2], "MAX")
        if lo > hi:
            raise StoreError(f"--max-train-tokens {spec!r}: MIN {lo} is larger than MAX {hi}")
        return TrainCaps(spec=text, geometric=(lo, hi))
    if "=" in text:
        pairs: list[tuple[str, int]] = []
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise StoreError(
                    f"--max-train-tokens {spec!r}: {item!r} is not name=N; write e.g. "
                    "news=6000,web=9000"
                )
            pairs.append((name.strip(), _positive_int(value.strip(), f"the cap of {name!r}")))
        names = [n for n, _ in pairs]
        if len(set(names)) != len(names):
            raise StoreError(f"--max-train-tokens {spec!r} names a domain twice")
        return TrainCaps(spec=text, per_domain=tuple(pairs))
    return TrainCaps(spec=text, all_domains=_positive_int(text, "N"))


def cap_train_mask(
    train: np.ndarray, keys: np.ndarray, lengths: np.ndarray, cap: int
) -> tuple[np.ndarray, int]:
    """The training mask ``train`` cut to at most ``cap`` tokens (EOS counted) and the tokens kept.

    Documents are taken in the seeded rank order (ascending ``keys``), each one that still
    fits; if none fits, the smallest one, so a cap below every document still leaves a domain.
    """
    sizes = lengths.astype(np.int64) + 1
    out = np.zeros_like(train, dtype=bool)
    kept = 0
    for i in np.argsort(keys, kind="stable"):
        if train[i] and kept + sizes[i] <= cap:
            out[i] = True
            kept += int(sizes[i])
    if kept == 0 and train.any():
        i = int(np.flatnonzero(train)[np.argmin(sizes[train])])
        out[i] = True
        kept = int(sizes[i])
    return out, kept
