"""The on-disk corpus format shared by ``acodm corpus build`` and ``acodm corpus import``.

A corpus is a folder::

    CORPUS/
      manifest.json          format, schema version, per-domain counts and file hashes
      000-books.jsonl        one JSON record per line: text, domain, source, doc_id[, meta]
      001-wiki.jsonl
      ...

Domain names are free text (The Pile has ``"Wikipedia (en)"``); file names are derived from
them. The folder is written under a temporary name and renamed when complete, so a corpus
with a ``manifest.json`` is always whole. Documents are deduplicated by the SHA-256 of their
text across the whole corpus (the first occurrence wins); empty documents are dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from acodm.errors import CorpusError
from acodm.io import atomic_directory, atomic_write_json, read_checked_manifest

CORPUS_FORMAT = "acodm-corpus"
CORPUS_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    ``source`` says where the text came from (package and version, or the input file);
    ``doc_id`` is unique within the corpus and stable across rebuilds of the same input;
    ``meta`` holds optional JSON-able labels that ship with the text (e.g. the wiki topic).
    """

    text: str
    domain: str
    source: str
    doc_id: str
    meta: dict[str, Any] | None = None


def domain_file_stem(index: int, domain: str) -> str:
    """A file-system-safe, unique stem for a domain: ``003-wikipedia-en``."""
    slug = re.sub(r"[^a-z0-9]+", "-", domain.lower()).strip("-")[:48] or "domain"
    return f"{index:03d}-{slug}"


def validate_domain_name(domain: object) -> str:
    if not isinstance(domain, str) or not domain.strip():
        raise CorpusError(
            f"domain name {domain!r} is not a non-empty string; check --domain-field "
            "or the folder names of the input"
        )
    if domain != domain.strip() or "\n" in domain:
        raise CorpusError(f"domain name {domain!r} has leading/trailing white space or newlines")
    return domain


class CorpusWriter:
    """Write a corpus folder atomically.

    >>> with CorpusWriter("out/corpus", meta={"builder": "example"}) as w:  # doctest: +SKIP
    ...     w.add(Document("some text", "web", "example==1.0", "web/0"))

    Domains appear in the manifest in the order they are first added. If the ``with`` block
    raises, nothing is left at ``out`` (an existing corpus there stays as it was).
    """

    def __init__(
        self,
        out: str | Path,
        *,
        meta: dict[str, Any] | None = None,
        overwrite: bool = False,
        domain_order: list[str] | None = None,
    ) -> None:
        self.out = Path(out)
        self.meta = dict(meta or {})
        self.overwrite = overwrite
        self._ctx = atomic_directory(self.out, overwrite=overwrite)
        self._tmp: Path | None = None
        self._files: dict[str, IO[str]] = {}
        self._hashers: dict[str, Any] = {}
        self._stats: dict[str, dict[str, Any]] = {}
        self._seen_text: set[bytes] = set()
        self._seen_ids: set[str] = set()
        self.duplicates = 0
        self.empty = 0
        self._order = list(domain_order or [])

    def __enter__(self) -> CorpusWriter:
        self._tmp = self._ctx.__enter__()
        return self

    def add(self, doc: Document) -> bool:
        """Add a document; returns False if it was dropped (empty or an exact duplicate)."""
        if self._tmp is None:
            raise RuntimeError("CorpusWriter.add() outside its `with` block")
        if not isinstance(doc.text, str):
            raise CorpusError(
                f"document {doc.doc_id!r} of domain {doc.domain!r} has a non-text value "
                f"({type(doc.text).__name__}); point --text-field at a string column"
            )
        validate_domain_name(doc.domain)
        if not doc.text.strip():
            self.empty += 1
            return False
        digest = hashlib.sha256(doc.text.encode("utf-8")).digest()
        if digest in self._seen_text:
            self.duplicates += 1
            return False
        if doc.doc_id in self._seen_ids:
            raise CorpusError(f"duplicate doc_id {doc.doc_id!r}: document ids must be unique")
        self._seen_text.add(digest)
        self._seen_ids.add(doc.doc_id)
        f = self._files.get(doc.domain)
        if f is None:
            if doc.domain not in self._order:
                self._order.append(doc.domain)
            stem = domain_file_stem(len(self._files), doc.domain)
            f = open(self._tmp / f"{stem}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
            self._files[doc.domain] = f
            self._hashers[doc.domain] = hashlib.sha256()
            self._stats[doc.domain] = {"file": f"{stem}.jsonl", "documents": 0, "characters": 0}
        rec = asdict(doc)
        if rec["meta"] is None:
            del rec["meta"]
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        f.write(line)
        self._hashers[doc.domain].update(line.encode("utf-8"))
        st = self._stats[doc.domain]
        st["documents"] += 1
        st["characters"] += len(doc.text)
        return True

    def _manifest(self) -> dict[str, Any]:
        order = [d for d in self._order if d in self._stats]
        domains = {}
        for d in order:
            domains[d] = dict(self._stats[d], sha256=self._hashers[d].hexdigest())
        corpus_hash = hashlib.sha256(
            json.dumps([[d, domains[d]["sha256"]] for d in order]).encode()
        ).hexdigest()
        return {
            "format": CORPUS_FORMAT,
            "schema_version": CORPUS_SCHEMA_VERSION,
            "hash": corpus_hash,
            "domains": domains,
            "dropped": {"duplicates": self.duplicates, "empty": self.empty},
            "meta": self.meta,
        }

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for f in self._files.values():
            f.close()
        if exc is None:
            if not self._stats:
                exc = CorpusError(
                    f"no documents were written to {self.out}: every input was empty or a "
                    "duplicate; check the input path and --text-field"
                )
                self._ctx.__exit__(type(exc), exc, None)
                raise exc
            assert self._tmp is not None
            atomic_write_json(self._tmp / MANIFEST, self._manifest())
        self._ctx.__exit__(exc_type, exc, tb)


class Corpus:
    """A corpus folder opened for reading; the manifest is checked on open."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        m = read_checked_manifest(
            self.path,
            name=MANIFEST,
            fmt=CORPUS_FORMAT,
            version=CORPUS_SCHEMA_VERSION,
            what="corpus",
            create="build one with `acodm corpus build --out PATH` or "
            "`acodm corpus import INPUT --out PATH`",
            rebuild="rebuild the corpus",
            error=CorpusError,
        )
        for d, st in m["domains"].items():
            if not (self.path / st["file"]).is_file():
                raise CorpusError(f"{self.path}: file {st['file']} of domain {d!r} is missing")
        self.manifest: dict[str, Any] = m

    @property
    def domains(self) -> list[str]:
        return list(self.manifest["domains"])

    @property
    def hash(self) -> str:
        return str(self.manifest["hash"])

    def num_documents(self, domain: str) -> int:
        return int(self._domain(domain)["documents"])

    def num_characters(self, domain: str) -> int:
        return int(self._domain(domain)["characters"])

    def _domain(self, domain: str) -> dict[str, Any]:
        try:
            return dict(self.manifest["domains"][domain])
        except KeyError:
            raise CorpusError(
                f"domain {domain!r} is not in corpus {self.path}; it has {self.domains}"
            ) from None

    def iter_documents(self, domain: str) -> Iterator[Document]:
        path = self.path / self._domain(domain)["file"]
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                    yield Document(
                        rec["text"], rec["domain"], rec["source"], rec["doc_id"], rec.get("meta")
                    )
                except (json.JSONDecodeError, KeyError) as e:
                    raise CorpusError(
                        f"{path}:{lineno} is not a corpus record ({e}); the corpus is "
                        "corrupt: rebuild it"
                    ) from e

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, domains={self.domains})"


def open_corpus(path: str | Path) -> Corpus:
    return Corpus(path)
