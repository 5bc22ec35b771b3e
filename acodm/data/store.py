"""The tokenized domain store: one flat, memory-mapped token array per domain and split.

Layout of a store folder (written by ``acodm prepare``)::

    STORE/
      manifest.json                 schema version, domains in order, token and document
                                    counts and the largest token id of each split, dtype,
                                    tokenizer hash and vocab size, source corpus hash
      tokenizer.json                the tokenizer that produced every token
      train/000-books.bin           uint16 (vocab <= 65536) or uint32 token ids, documents
                                    joined with EOS after each document
      train/000-books.idx.npy       int64 offsets of each document's first token, plus the end
      train/000-books.ids.json      the corpus doc_id of each document, in order
      val/...                       the same for the held-out validation documents
      reward/...                    the same for the reward split: held-out documents,
                                    disjoint from train and val, whose loss the env's probe
                                    reward measures (``acodm prepare --reward-fraction``)

The folder is built under a temporary name and renamed when complete. Opening a store
checks the manifest against the files (see :class:`TokenStore`): a truncated array, a
replaced tokenizer, ids outside the vocabulary, a file name leading out of the folder or an
unknown schema version is a clear :class:`~acodm.errors.StoreError`, not a crash later.

Schema versions: 3 adds the ``reward`` split. Stores of schema 2 (train and val only) still
open: their reward split reads as empty (no documents, no files), so everything but the probe
reward works on them; ``acodm prepare --reward-fraction F`` rebuilds one with a reward split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeGuard

import numpy as np

from acodm.data.corpus import RENAME_AND_REBUILD, domain_file_stem, validate_domain_name
from acodm.errors import CorpusError, StoreError
from acodm.io import (
    atomic_directory,
    atomic_write_json,
    member_path,
    read_checked_manifest,
    read_json,
    sha256_bytes,
)

STORE_FORMAT = "acodm-store"
#: 2: each split records ``max_id``, its largest token id (checked against the vocabulary).
#: 3: a third split, ``reward`` (held-out documents for the env's probe reward).
STORE_SCHEMA_VERSION = 3
#: Older schema versions that still open: 2 (no reward split; it reads as empty).
READABLE_SCHEMA_VERSIONS = (2,)
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val", "reward")
#: Splits a writer may leave out: each domain gets an empty one (a store without a reward
#: split is still a valid store; only the probe reward needs it).
OPTIONAL_SPLITS = ("reward",)


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    if vocab_size <= 0:
        raise StoreError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class StoreWriter:
    """Write a store folder atomically, one domain and split at a time.

    Documents are streamed to disk; nothing is held in memory beyond one document.
    If the ``with`` block raises, no store is left at ``out``.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        tokenizer_json: str,
        eos_id: int,
        corpus_hash: str,
        overwrite: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.out = Path(out)
        self.tokenizer_json = tokenizer_json
        vocab = json.loads(tokenizer_json)
        self.vocab_size = vocab_size_of(vocab)
        if not 0 <= eos_id < self.vocab_size:
            raise StoreError(f"eos_id {eos_id} is outside the vocabulary (size {self.vocab_size})")
        self.eos_id = eos_id
        self.corpus_hash = corpus_hash
        self.meta = dict(meta or {})
        self.dtype = token_dtype(self.vocab_size)
        self._ctx = atomic_directory(self.out, overwrite=overwrite)
        self._tmp: Path | None = None
        self._domains: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> StoreWriter:
        self._tmp = self._ctx.__enter__()
        for split in SPLITS:
            (self._tmp / split).mkdir()
        (self._tmp / TOKENIZER_FILE).write_bytes(self.tokenizer_json.encode("utf-8"))
        return self

    def write_split(
        self,
        domain: str,
        split: str,
        documents: Iterable[tuple[str, Sequence[int] | np.ndarray]],
    ) -> int:
        """Write one split of one domain from ``(doc_id, token_ids)`` pairs; returns tokens.

        Each document's tokens are followed by EOS. Ids are checked against the vocabulary.
        """
        if self._tmp is None:
            raise RuntimeError("StoreWriter.write_split() outside its `with` block")
        if split not in SPLITS:
            raise StoreError(f"unknown split {split!r}; expected one of {SPLITS}")
        entry = self._domains.setdefault(
            domain, {"name": domain, "stem": domain_file_stem(len(self._domains), domain)}
        )
        if split in entry:
            raise StoreError(f"split {split!r} of domain {domain!r} was already written")
        base = self._tmp / split / entry["stem"]
        offsets = [0]
        ids: list[str] = []
        eos = np.array([self.eos_id], dtype=self.dtype)
        max_id = self.eos_id  # EOS follows every document
        with open(f"{base}.bin", "wb") as f:
            for doc_id, toks in documents:
                arr = np.asarray(toks)
                if arr.size:
                    lo, hi = int(arr.min()), int(arr.max())
                    if lo < 0 or hi >= self.vocab_size:
                        raise StoreError(
                            f"document {doc_id!r} has token ids outside [0, {self.vocab_size}); "
                            "the tokenizer and the store's vocabulary disagree"
                        )
                    max_id = max(max_id, hi)
                f.write(arr.astype(self.dtype, copy=False).tobytes())
                f.write(eos.tobytes())
                offsets.append(offsets[-1] + arr.size + 1)
                ids.append(doc_id)
        np.save(f"{base}.idx.npy", np.asarray(offsets, dtype=np.int64))
        with open(f"{base}.ids.json", "w", encoding="utf-8") as g:
            json.dump(ids, g)
        entry[split] = {
            "tokens": offsets[-1],
            "documents": len(ids),
            "max_id": max_id if ids else None,  # checked against the vocabulary on open
        }
        return offsets[-1]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            assert self._tmp is not None
            for d in list(self._domains):
                for split in OPTIONAL_SPLITS:
                    if split not in self._domains[d]:
                        self.write_split(d, split, ())
            for d, entry in self._domains.items():
                missing = [s for s in SPLITS if s not in entry]
                if missing:
                    exc = StoreError(f"domain {d!r} has no {missing} split written")
                    self._ctx.__exit__(type(exc), exc, None)
                    raise exc
            atomic_write_json(self._tmp / MANIFEST, self._manifest())
        self._ctx.__exit__(exc_type, exc, tb)

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": STORE_FORMAT,
            "schema_version": STORE_SCHEMA_VERSION,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "tokenizer_sha256": sha256_bytes(self.tokenizer_json.encode("utf-8")),
            "corpus_hash": self.corpus_hash,
            "domains": list(self._domains.values()),
            "meta": self.meta,
        }


def vocab_size_of(tokenizer: dict[str, Any]) -> int:
    """Vocabulary size of a ``tokenizer.json`` document: model vocab plus added tokens."""
    vocab = tokenizer.get("model", {}).get("vocab", {})
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t["id"] for t in tokenizer.get("added_tokens", [])]
    if not ids:
        raise StoreError("tokenizer.json has an empty vocabulary")
    return int(max(ids)) + 1


REPREPARE = "re-run `acodm prepare` to rebuild the store"


class TokenStore:
    """A store folder opened for reading (arrays are memory-mapped, read-only).

    Opening checks, without reading the token arrays: the manifest's format, schema version
    and fields (domain names valid and unique, member file names plain names inside the
    folder, counts integers >= 0); the tokenizer file against its hash and the manifest's
    vocabulary size; every split's largest token id and ``eos_id`` against the vocabulary;
    and each token array's size against its token count.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        m = read_checked_manifest(
            self.path,
            name=MANIFEST,
            fmt=STORE_FORMAT,
            version=STORE_SCHEMA_VERSION,
            what="token store",
            create="create one with `acodm prepare CORPUS --out STORE`",
            rebuild="re-run `acodm prepare` with this version (stores of older versions do "
            "not record the largest token id that is checked against the vocabulary)",
            error=StoreError,
            also=READABLE_SCHEMA_VERSIONS,
        )
        self.manifest: dict[str, Any] = m
        #: (domain, split) pairs a schema-2 store does not have: read as empty, no files.
        self._absent: set[tuple[str, str]] = set()
        self.dtype = self._check_header()
        self._entries = self._check_domains()
        self._paths = {
            (e["name"], split, suffix): self._member(e, split, suffix)
            for e in self._entries.values()
            for split in SPLITS
            for suffix in _SUFFIXES
        }
        self._check_tokenizer()
        self._check_arrays()
        self._mmaps: dict[tuple[str, str], np.ndarray] = {}
        self._offsets: dict[tuple[str, str], np.ndarray] = {}

    # -- validation -------------------------------------------------------------------
    def _bad(self, problem: str) -> StoreError:
        return StoreError(f"{self.path / MANIFEST}: {problem}; {REPREPARE}")

    def _check_header(self) -> np.dtype[Any]:
        m = self.manifest
        vocab, eos = m.get("vocab_size"), m.get("eos_id")
        if not _is_count(vocab) or vocab < 1:
            raise self._bad(f"vocab_size is {vocab!r}, not a positive integer")
        if not _is_count(eos) or eos >= vocab:
            raise self._bad(f"eos_id {eos!r} is outside the vocabulary [0, {vocab})")
        if m.get("dtype") != token_dtype(vocab).name:
            raise self._bad(
                f"dtype is {m.get('dtype')!r}, but a vocabulary of {vocab} is stored as "
                f"{token_dtype(vocab).name}"
            )
        for key in ("tokenizer_sha256", "corpus_hash"):
            if not isinstance(m.get(key), str):
                raise self._bad(f"{key} is {m.get(key)!r}, not a string")
        return token_dtype(vocab)

    def _check_domains(self) -> dict[str, dict[str, Any]]:
        domains = self.manifest.get("domains")
        if not isinstance(domains, list) or not domains:
            raise self._bad("domains is not a non-empty list")
        entries: dict[str, dict[str, Any]] = {}
        stems: set[object] = set()
        for i, e in enumerate(domains):
            if not isinstance(e, dict):
                raise self._bad(f"domain entry {i} is not an object")
            try:
                name = validate_domain_name(e.get("name"), RENAME_AND_REBUILD)
            except CorpusError as err:
                raise StoreError(f"{self.path / MANIFEST}: {err}") from None
            if name in entries or e.get("stem") in stems:
                raise self._bad(f"domain {name!r} (or its stem {e.get('stem')!r}) appears twice")
            e = dict(e)
            if self.schema_version < 3 and "reward" not in e:
                e["reward"] = {"tokens": 0, "documents": 0, "max_id": None}
                self._absent.add((name, "reward"))
            for split in SPLITS:
                self._check_split(name, split, e.get(split))
            entries[name] = e
            stems.add(e.get("stem"))
        return entries

    def _check_split(self, name: str, split: str, st: object) -> None:
        where = f"split {split!r} of domain {name!r}"
        if not isinstance(st, dict):
            raise self._bad(f"{where} is missing")
        tokens, docs, max_id = st.get("tokens"), st.get("documents"), st.get("max_id")
        if not _is_count(tokens) or not _is_count(docs) or tokens < docs:
            raise self._bad(
                f"{where} has tokens={tokens!r}, documents={docs!r}: not counts >= 0 with at "
                "least one token (EOS) per document"
            )
        vocab = self.manifest["vocab_size"]
        if tokens == 0:
            if max_id is not None:
                raise self._bad(f"{where} is empty but has max_id={max_id!r} (expected null)")
        elif not _is_count(max_id) or max_id >= vocab:
            raise self._bad(
                f"{where} has token ids up to {max_id!r}, outside the vocabulary [0, {vocab}) "
                "(vocab_size and the token arrays disagree)"
            )

    def _member(self, entry: dict[str, Any], split: str, suffix: str) -> Path:
        stem = entry.get("stem")
        return member_path(
            self.path,
            f"{stem}{suffix}" if isinstance(stem, str) else stem,
            what=f"the file of domain {entry['name']!r} ({split}) in {self.path / MANIFEST}",
            error=StoreError,
            fix=REPREPARE,
            under=split,
        )

    def _check_tokenizer(self) -> None:
        tpath = member_path(
            self.path, TOKENIZER_FILE, what="the tokenizer", error=StoreError, fix=REPREPARE
        )
        if not tpath.is_file():
            raise StoreError(f"{self.path} has no {TOKENIZER_FILE}; re-run `acodm prepare`")
        data = tpath.read_bytes()
        if sha256_bytes(data) != self.manifest["tokenizer_sha256"]:
            raise StoreError(
                f"{tpath} differs from the tokenizer this store was built with (hash "
                "mismatch): the token ids would be decoded wrongly. Restore the original "
                "tokenizer.json or re-run `acodm prepare`"
            )
        try:
            size = vocab_size_of(json.loads(data))
        except (ValueError, TypeError, KeyError, AttributeError, StoreError) as e:
            raise StoreError(f"{tpath} is not a tokenizer.json ({e}); {REPREPARE}") from e
        if size != self.vocab_size:
            raise self._bad(
                f"vocab_size is {self.vocab_size}, but {TOKENIZER_FILE} has {size} tokens"
            )

    def _check_arrays(self) -> None:
        for name, entry in self._entries.items():
            for split in SPLITS:
                if (name, split) in self._absent:
                    continue
                want = int(entry[split]["tokens"]) * self.dtype.itemsize
                f = self._file(name, split, ".bin")
                have = f.stat().st_size if f.is_file() else -1
                if have != want:
                    state = "missing" if have < 0 else f"{have} bytes, expected {want}"
                    raise StoreError(
                        f"{f} is {'missing' if have < 0 else 'truncated or altered'} ({state}); "
                        "the store is incomplete: re-run `acodm prepare`"
                    )

    def _file(self, domain: str, split: str, suffix: str) -> Path:
        self._entry(domain)  # an unknown domain: a clear error
        return self._paths[(domain, _split(split), suffix)]

    def _entry(self, domain: str) -> dict[str, Any]:
        try:
            return dict(self._entries[domain])
        except KeyError:
            raise StoreError(
                f"domain {domain!r} is not in store {self.path}; it has {self.domains}"
            ) from None

    # -- metadata ---------------------------------------------------------------------
    @property
    def domains(self) -> list[str]:
        """Domain names in the store's fixed order (the order of every weight vector)."""
        return [e["name"] for e in self.manifest["domains"]]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def schema_version(self) -> int:
        """The store's schema version (3; 2 for an older store without a reward split)."""
        return int(self.manifest["schema_version"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eos_id"])

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.manifest["tokenizer_sha256"])

    @property
    def corpus_hash(self) -> str:
        return str(self.manifest["corpus_hash"])

    def num_tokens(self, domain: str, split: str = "train") -> int:
        return int(self._entry(domain)[_split(split)]["tokens"])

    def num_documents(self, domain: str, split: str = "train") -> int:
        return int(self._entry(domain)[_split(split)]["documents"])

    # -- data -------------------------------------------------------------------------
    def tokens(self, domain: str, split: str = "train") -> np.ndarray:
        """The flat token array of one domain and split, memory-mapped read-only."""
        key = (domain, _split(split))
        arr = self._mmaps.get(key)
        if arr is None:
            n = self.num_tokens(domain, split)
            if n == 0:
                arr = np.zeros(0, dtype=self.dtype)
            else:
                arr = np.memmap(self._file(domain, split, ".bin"), self.dtype, "r", shape=(n,))
            self._mmaps[key] = arr
        return arr

    def doc_offsets(self, domain: str, split: str = "train") -> np.ndarray:
        """int64 start offset of each document in :meth:`tokens`, plus the total length."""
        key = (domain, _split(split))
        off = self._offsets.get(key)
        if off is None and key in self._absent:
            off = np.zeros(1, dtype=np.int64)
        if off is None:
            off = np.load(self._file(domain, split, ".idx.npy"), allow_pickle=False)
            n_docs = self.num_documents(domain, split)
            if off.shape != (n_docs + 1,) or int(off[-1]) != self.num_tokens(domain, split):
                raise StoreError(
                    f"document index of {domain!r}/{split} does not match the manifest; "
                    "re-run `acodm prepare`"
                )
            self._offsets[key] = off
        return off

    def doc_ids(self, domain: str, split: str = "train") -> list[str]:
        if (domain, _split(split)) in self._absent:
            return []
        with open(self._file(domain, split, ".ids.json"), encoding="utf-8") as f:
            ids: list[str] = json.load(f)
        return ids

    def document(self, domain: str, index: int, split: str = "train") -> np.ndarray:
        """Token ids of one document, without its trailing EOS."""
        off = self.doc_offsets(domain, split)
        return np.asarray(self.tokens(domain, split)[off[index] : off[index + 1] - 1])

    def tokenizer(self) -> Any:
        """The store's tokenizer as a ``tokenizers.Tokenizer``."""
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.path / TOKENIZER_FILE))

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, domains={self.domains}, vocab={self.vocab_size})"


_SUFFIXES = (".bin", ".idx.npy", ".ids.json")


def _is_count(value: object) -> TypeGuard[int]:
    """An integer >= 0 read from JSON (``True`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _split(split: str) -> str:
    if split not in SPLITS:
        raise StoreError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def open_store(path: str | Path) -> TokenStore:
    return TokenStore(path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a store without opening its arrays (for quick inspection)."""
    m: dict[str, Any] = read_json(Path(path) / MANIFEST, "store manifest")
    return m
