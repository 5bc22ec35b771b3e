"""``acodm prepare``: tokenize a corpus into a token store with a held-out validation split.

Validation split, by documents (never by cutting a document):
  documents of a domain are ranked by ``blake2b(seed, doc_id)`` (a seeded shuffle); in rank
  order they go to validation until it holds ``need = max(val_fraction * T, min_val_tokens)``
  tokens (``T``: the domain's tokens, EOS included). Training keeps at least half of every
  domain: a document that would take validation past ``T / 2`` is skipped (it stays in
  training), so one huge document cannot swallow a domain, and the last document taken may
  overshoot ``need`` (documents are never cut). If ``need`` cannot be reached that way the
  domain is too small for the requested split, and a :class:`StoreError` names it and the
  largest ``--min-val-tokens`` that works. (``val_fraction = 0.5`` therefore needs an exact
  half; useful values are far below.) The split depends only on the seed, the doc ids and the
  token counts: the same inputs give the same split, and one domain never moves another.

Data-constrained stores (:mod:`acodm.data.constrain`): ``doc_chars`` cuts documents into
pieces before tokenizing, so the split above works on pieces; ``max_train_tokens`` then cuts
each domain's *training* mask to a cap, so the validation split is the uncapped domain's.

``min_val_tokens`` defaults to 16384: 15 validation windows of 1024 + 1 tokens per domain, so
even a rare domain gets a per-domain loss that is not one window's noise. ``val_fraction = 0``
turns validation off (every val split is empty).

Reward split, by documents too (the env's probe reward, issue 11): the same rule with its own
seeded ranking (``blake2b`` keyed by the seed, personalised ``acodm-reward``, so it is
independent of the validation ranking) over the documents validation did *not* take, until
it holds ``need = max(reward_fraction * T, min_reward_tokens)`` tokens; a document that would
leave training with less than half of the domain (``T / 2``, validation included in what is
held out) is skipped. So the three splits are disjoint by construction, and the validation
split is exactly what it would be without a reward split. Too small a domain: a
:class:`StoreError` that names it and the largest ``--min-reward-tokens`` that works.
Defaults: ``reward_fraction = 0.01``, ``min_reward_tokens = 4096`` (4 probe windows of
1024 + 1 tokens per domain); ``reward_fraction = 0`` turns the reward split off.

Tokenization uses ``encode_batch_fast``. By default (``num_proc=None``) one feeder thread
hands it batches and the tokenizers' own Rayon pool spreads each batch over all cores (unless
the user set ``TOKENIZERS_PARALLELISM=false``) while the main thread reads and writes. With
``num_proc=k`` the Rayon pool is switched off for the run (``TOKENIZERS_PARALLELISM=false``,
restored afterwards; Rayon's pool size cannot change once built) and ``k`` Python threads encode
(the Rust encoder releases the GIL), so exactly ``k`` cores work. Measured on 2 busy cores,
50 MB of Python source: both are 1.5-2x faster than ``datasets.map(num_proc=2)``, which pays
for Arrow round trips and pickling and needs twice the memory. Tokens of one domain are
spilled to a temporary file next to ``out`` while its split is decided, so memory holds a few
batches of text and a few numbers per document, never a domain's tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import acodm
from acodm.data.constrain import cap_train_mask, cut_documents, parse_train_caps
from acodm.data.corpus import Corpus, Document
from acodm.data.store import StoreWriter, token_dtype
from acodm.data.tokenizer import TokenizerSpec, check_vocab_size, load_tokenizer, train_bpe
from acodm.errors import StoreError

DEFAULT_MIN_VAL_TOKENS = 16384
DEFAULT_REWARD_FRACTION = 0.01
DEFAULT_MIN_REWARD_TOKENS = 4096
MAX_VAL_FRACTION = 0.5
_BATCH_CHARS = 2 << 20  # text per encode call: enough documents for Rayon to spread
_BATCH_DOCS = 512

T = TypeVar("T")
R = TypeVar("R")


def prepare_store(
    corpus: str | Path,
    out: str | Path,
    *,
    tokenizer: str | Path | None = None,
    vocab_size: int = 32768,
    val_fraction: float = 0.01,
    min_val_tokens: int = DEFAULT_MIN_VAL_TOKENS,
    reward_fraction: float = DEFAULT_REWARD_FRACTION,
    min_reward_tokens: int = DEFAULT_MIN_REWARD_TOKENS,
    seed: int = 0,
    num_proc: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    eos_token: str | None = None,
    doc_chars: int | None = None,
    max_train_tokens: str | None = None,
) -> Path:
    """Tokenize ``corpus`` into a store at ``out``; returns ``out``.

    With ``tokenizer`` (a ``tokenizer.json`` or a Hugging Face tokenizer folder) that
    tokenizer is used and ``vocab_size`` is ignored; otherwise a byte-level BPE of
    ``vocab_size`` is trained on the corpus (cached). The store is written atomically: an
    interrupted run leaves nothing at ``out``. ``reward_fraction`` / ``min_reward_tokens``:
    the reward split (module docstring; ``reward_fraction=0``: none).

    Data-constrained stores (:mod:`acodm.data.constrain`): ``doc_chars`` cuts each document
    into pieces of about that many characters before tokenizing (ids ``doc_id#i``);
    ``max_train_tokens`` (``N``, ``name=N,...`` or ``geometric:MIN:MAX``) caps each domain's
    training split after the validation and reward splits were decided. Both are recorded in
    the meta.
    """
    _check_args(val_fraction, min_val_tokens, num_proc, tokenizer, eos_token)
    _check_reward_args(reward_fraction, min_reward_tokens)
    if doc_chars is not None and doc_chars < 1:
        raise StoreError(f"--doc-chars must be >= 1, got {doc_chars}")
    caps_rule = parse_train_caps(max_train_tokens) if max_train_tokens is not None else None
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; choose another --out or pass --overwrite")
    src = Corpus(corpus)
    src.verify()  # one read of the files: a modified corpus fails before any tokenizing
    caps: dict[str, int] = {}
    if caps_rule is not None:
        natural = {d: src.num_characters(d) for d in src.domains}
        caps = caps_rule.resolve(src.domains, natural)
    if tokenizer is None:
        check_vocab_size(vocab_size)
        spec = train_bpe(src, vocab_size, progress=progress)
        vocab_source = f"trained byte-level BPE, vocab_size={vocab_size}"
    else:
        spec = load_tokenizer(tokenizer, eos_token=eos_token)
        vocab_source = str(Path(tokenizer).expanduser().resolve())
    meta = {
        "vocab_source": vocab_source,
        "val_fraction": val_fraction,
        "min_val_tokens": min_val_tokens,
        "reward_fraction": reward_fraction,
        "min_reward_tokens": min_reward_tokens,
        "seed": seed,
        "acodm_version": acodm.__version__,
        "doc_chars": doc_chars,
        "max_train_tokens": None if caps_rule is None else caps_rule.spec,
        "train_caps": {},  # per capped domain: cap, uncapped and kept training tokens
    }
    split = _SplitRule(val_fraction, min_val_tokens, seed, reward_fraction, min_reward_tokens)
    with (
        StoreWriter(
            out,
            tokenizer_json=spec.json,
            eos_id=spec.eos_id,
            corpus_hash=src.hash,
            overwrite=overwrite,
            meta=meta,
        ) as writer,
        _Progress(src, progress) as bar,
        _rayon_off() if num_proc is not None else contextlib.nullcontext(),
        tempfile.TemporaryDirectory(
            prefix=f".{out.name}.", suffix=".spill", dir=out.parent
        ) as spill_dir,
    ):
        encoder = _Encoder(spec)
        for domain in src.domains:
            bar.set_domain(domain)
            spill = _tokenize_domain(
                src, domain, encoder, split, num_proc or 1, Path(spill_dir), bar.update, doc_chars
            )
            capped = _write_domain(writer, domain, spill, split, caps.get(domain))
            if capped is not None:
                writer.meta["train_caps"][domain] = capped
    return out


def _check_args(
    val_fraction: float,
    min_val_tokens: int,
    num_proc: int | None,
    tokenizer: str | Path | None,
    eos_token: str | None,
) -> None:
    if not 0.0 <= val_fraction <= MAX_VAL_FRACTION:
        raise StoreError(f"val_fraction must be in [0, {MAX_VAL_FRACTION}], got {val_fraction}")
    if min_val_tokens < 0:
        raise StoreError(f"min_val_tokens must be >= 0, got {min_val_tokens}")
    if num_proc is not None and num_proc < 1:
        raise StoreError(f"num_proc must be >= 1 (or None for all cores), got {num_proc}")
    if eos_token is not None and tokenizer is None:
        raise StoreError(
            "--eos-token applies to a tokenizer given with --tokenizer; the trained BPE "
            "always uses <|endoftext|>"
        )


def _check_reward_args(reward_fraction: float, min_reward_tokens: int) -> None:
    if not 0.0 <= reward_fraction <= MAX_VAL_FRACTION:
        raise StoreError(
            f"reward_fraction must be in [0, {MAX_VAL_FRACTION}], got {reward_fraction}"
        )
    if min_reward_tokens < 0:
        raise StoreError(f"min_reward_tokens must be >= 0, got {min_reward_tokens}")


# -- tokenization ---------------------------------------------------------------------------


class _Encoder:
    """Thread-safe batch encoder: one ``tokenizers.Tokenizer`` per worker thread.

    Special-token text inside a document (a literal ``<|endoftext|>``) is encoded as plain
    text, so only the store's own separators are EOS; no BOS/EOS template is added.
    """

    def __init__(self, spec: TokenizerSpec) -> None:
        self.spec = spec
        self.dtype = token_dtype(spec.vocab_size)
        self._local = threading.local()

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        tok = getattr(self._local, "tok", None)
        if tok is None:
            tok = self.spec.tokenizer()
            tok.encode_special_tokens = True
            self._local.tok = tok
        encs = tok.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=self.dtype) for e in encs]


@contextlib.contextmanager
def _rayon_off() -> Iterator[None]:
    """Disable the tokenizers' Rayon pool while ``num_proc`` threads encode (then restore).

    Nested parallelism would oversubscribe the cores and ignore ``num_proc``.
    """
    key = "TOKENIZERS_PARALLELISM"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int | None = None
) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, in order, with at most ``ahead`` items in flight.

    Unlike ``Executor.map`` it does not read the whole input first (memory stays bounded).
    """
    ahead = ahead or 2 * workers
    with ThreadPoolExecutor(workers) as ex:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _batches(docs: Iterable[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


@dataclass
class _Spill:
    """One domain's tokens on disk (no EOS), with per-document lengths, rank keys and ids."""

    tokens: Path
    ids: Path
    lengths: np.ndarray  # (n_docs,) int64: tokens per document, EOS not included
    keys: np.ndarray  # (n_docs,) uint64: the document's validation rank key
    reward_keys: np.ndarray  # (n_docs,) uint64: its reward rank key (independent of keys)
    dtype: np.dtype[Any]

    def documents(self, keep: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """``(doc_id, tokens)`` of the documents where ``keep`` is true, in corpus order."""
        starts = np.concatenate([[0], np.cumsum(self.lengths)])
        n = int(starts[-1])
        flat = np.memmap(self.tokens, self.dtype, "r", shape=(n,)) if n else np.zeros(0, self.dtype)
        with open(self.ids, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if keep[i]:
                    yield json.loads(line), np.asarray(flat[starts[i] : starts[i + 1]])


def _tokenize_domain(
    corpus: Corpus,
    domain: str,
    encoder: _Encoder,
    rule: _SplitRule,
    workers: int,
    spill_dir: Path,
    advance: Callable[[int], None],
    doc_chars: int | None = None,
) -> _Spill:
    base = spill_dir / hashlib.sha256(domain.encode()).hexdigest()[:16]
    tok_path, ids_path = base.with_suffix(".bin"), base.with_suffix(".ids")
    lengths = array("q")  # 8 bytes per document, not a Python int object each
    keys = array("Q")
    reward_keys = array("Q")

    def encode(batch: list[Document]) -> tuple[list[Document], list[np.ndarray]]:
        return batch, encoder([d.text for d in batch])

    with open(tok_path, "wb") as ftok, open(ids_path, "w", encoding="utf-8") as fids:
        for docs, arrays in ordered_map(
            encode, _batches(cut_documents(corpus.iter_documents(domain), doc_chars)), workers
        ):
            for doc, arr in zip(docs, arrays, strict=True):
                ftok.write(arr.tobytes())
                fids.write(json.dumps(doc.doc_id, ensure_ascii=False) + "\n")
                lengths.append(arr.size)
                keys.append(rule.key(doc.doc_id))
                reward_keys.append(rule.reward_key(doc.doc_id))
            advance(sum(len(d.text) for d in docs))
    return _Spill(
        tok_path,
        ids_path,
        np.frombuffer(lengths, np.int64),
        np.frombuffer(keys, np.uint64),
        np.frombuffer(reward_keys, np.uint64),
        encoder.dtype,
    )


# -- validation split -----------------------------------------------------------------------


@dataclass(frozen=True)
class _SplitRule:
    val_fraction: float
    min_val_tokens: int
    seed: int
    reward_fraction: float = 0.0
    min_reward_tokens: int = 0

    def key(self, doc_id: str) -> int:
        """Rank key of a document: a keyed hash of (seed, doc_id), i.e. a seeded shuffle."""
        return self._hash(doc_id, b"acodm-val")

    def reward_key(self, doc_id: str) -> int:
        """The reward split's rank key: the same hash with another person, so the reward
        ranking is independent of the validation one."""
        return self._hash(doc_id, b"acodm-reward")

    def _hash(self, doc_id: str, person: bytes) -> int:
        h = hashlib.blake2b(
            doc_id.encode(),
            digest_size=8,
            key=self.seed.to_bytes(16, "little", signed=True),
            person=person,
        )
        return int.from_bytes(h.digest(), "little")

    def reward_mask(
        self, domain: str, keys: np.ndarray, lengths: np.ndarray, val: np.ndarray
    ) -> np.ndarray:
        """Boolean mask of the reward documents: from those outside ``val`` (the validation
        mask), in reward-key order, until ``max(reward_fraction * T, min_reward_tokens)``
        tokens, training keeping at least half of the domain (module docstring)."""
        sizes = lengths + 1
        total = int(sizes.sum())
        if self.reward_fraction == 0.0:
            return np.zeros(len(sizes), dtype=bool)
        need = max(self.reward_fraction * total, float(self.min_reward_tokens))
        held = int(sizes[val].sum())  # validation's share of what training gives up
        mask, got = _hold_out(keys, sizes, need, held=held, exclude=val)
        if got < need:
            raise StoreError(_reward_too_small(domain, total, held, need, got, self))
        return mask

    def val_mask(self, domain: str, keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Boolean mask of the documents held out for validation (see the module docstring)."""
        sizes = lengths + 1  # each document is followed by EOS in the store
        total = int(sizes.sum())
        if self.val_fraction == 0.0:
            return np.zeros(len(sizes), dtype=bool)
        need = max(self.val_fraction * total, float(self.min_val_tokens))
        mask, val = _hold_out(keys, sizes, need)
        if val < need:
            raise StoreError(_too_small(domain, total, len(sizes), need, val, self))
        return mask


def _hold_out(
    keys: np.ndarray,
    sizes: np.ndarray,
    need: float,
    *,
    held: int = 0,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """The greedy hold-out of both splits: documents in key order (ties, never seen, fall
    back to corpus order), skipping ``exclude``d ones and any that would leave training less
    than half of the domain (``held`` tokens are already out), until ``need`` tokens; returns
    the mask and the tokens it holds (below ``need`` when the domain is too small)."""
    total = int(sizes.sum())
    mask = np.zeros(len(sizes), dtype=bool)
    got = 0
    for i in np.argsort(keys, kind="stable"):
        if got >= need:
            break
        if (exclude is None or not exclude[i]) and 2 * (held + got + sizes[i]) <= total:
            mask[i] = True
            got += int(sizes[i])
    return mask, got


def _too_small(domain: str, total: int, docs: int, need: float, got: int, rule: _SplitRule) -> str:
    return (
        f"domain {domain!r} is too small to hold out {int(need)} validation tokens "
        f"(max(val_fraction={rule.val_fraction} x {total} tokens, min_val_tokens="
        f"{rule.min_val_tokens})) while training keeps at least half of it: it has {total} "
        f"tokens in {docs} documents, and whole documents make at most {got} tokens. Lower "
        f"--min-val-tokens to {got} or less (and --val-fraction to at most {got / total:.4f}), "
        "or add text to the domain"
    )


def _reward_too_small(
    domain: str, total: int, held: int, need: float, got: int, rule: _SplitRule
) -> str:
    return (
        f"domain {domain!r} is too small to hold out {int(need)} reward tokens "
        f"(max(reward_fraction={rule.reward_fraction} x {total} tokens, min_reward_tokens="
        f"{rule.min_reward_tokens})) besides its {held} validation tokens while training keeps "
        f"at least half of it: whole documents make at most {got} tokens. Lower "
        f"--min-reward-tokens to {got} or less (and --reward-fraction to at most "
        f"{got / total:.4f}), pass --reward-fraction 0 for no reward split, or add text to "
        "the domain"
    )


def _write_domain(
    writer: StoreWriter, domain: str, spill: _Spill, rule: _SplitRule, cap: int | None = None
) -> dict[str, int] | None:
    """Write the three splits; with ``cap``, the training mask cut to it (val and reward
    decided first, on the uncapped domain)."""
    val = rule.val_mask(domain, spill.keys, spill.lengths)
    reward = rule.reward_mask(domain, spill.reward_keys, spill.lengths, val)
    train = ~(val | reward)
    capped = None
    if cap is not None:
        uncapped = int((spill.lengths[train] + 1).sum())
        train, kept = cap_train_mask(train, spill.keys, spill.lengths, cap)
        capped = {"cap": int(cap), "uncapped_tokens": uncapped, "tokens": kept}
    writer.write_split(domain, "train", spill.documents(train))
    writer.write_split(domain, "val", spill.documents(val))
    writer.write_split(domain, "reward", spill.documents(reward))
    spill.tokens.unlink()
    spill.ids.unlink()
    return capped


# -- progress -------------------------------------------------------------------------------


class _Progress:
    """One progress bar over the corpus's characters, labelled with the current domain."""

    def __init__(self, corpus: Corpus, enabled: bool) -> None:
        from acodm.progress import progress_bar

        total = sum(corpus.num_characters(d) for d in corpus.domains)
        self._bar = progress_bar(
            total=total, unit="char", unit_scale=True, desc="tokenize", disable=not enabled
        )

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def set_domain(self, domain: str) -> None:
        self._bar.set_postfix_str(domain)

    def update(self, chars: int) -> None:
        self._bar.update(chars)
