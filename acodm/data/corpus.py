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
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from acodm.errors import CorpusError
from acodm.io import atomic_directory, atomic_write_json, member_path, read_checked_manifest

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


#: How to fix a bad domain name in the input of ``acodm corpus import``.
RENAME_IN_INPUT = "rename the domain in the input, or pass --domain NAME for a single domain"
#: How to fix a bad domain name in a corpus or store written before names were checked.
RENAME_AND_REBUILD = (
    "rename the domain and rebuild: re-import with `acodm corpus import ... --domain NAME` "
    "(one domain per import) or rename it in the input, then re-run `acodm prepare`"
)


def validate_domain_name(domain: object, fix: str = RENAME_IN_INPUT) -> str:
    """Check a domain name and return it; ``fix`` ends the error message.

    Domain names are free text (``"Wikipedia (en)"``, ``"Gutenberg (PG-19)"``) except that a
    name must be a non-empty string without leading or trailing white space, ``/`` (metric
    keys are ``train/loss/<domain>``: ``a/b`` would be ambiguous), control characters (tabs,
    newlines, ...) or unpaired surrogates (text that is not valid Unicode).
    """
    if not isinstance(domain, str) or not domain.strip():
        raise CorpusError(
            f"domain name {domain!r} is not a non-empty string; check --domain-field "
            "or the folder names of the input"
        )
    problem = _domain_name_problem(domain)
    if problem:
        raise CorpusError(f"domain name {domain!r} {problem}; {fix}")
    return domain


def _domain_name_problem(domain: str) -> str | None:
    if domain != domain.strip():
        return "has leading or trailing white space"
    if "/" in domain:
        return "contains '/', which would make metric keys such as train/loss/<domain> ambiguous"
    bad = next((c for c in domain if unicodedata.category(c) in _BAD_CATEGORIES), None)
    if bad is not None:
        if unicodedata.category(bad) == "Cs":
            return (
                f"contains an unpaired surrogate ({bad!r}: a byte that is not UTF-8 in a file "
                "name, or a lone \\ud800-style escape in JSON)"
            )
        return f"contains a control character ({bad!r})"
    return None


# Cc: control characters (newline, tab, NUL, ...); Zl/Zp: line and paragraph separators;
# Cs: unpaired surrogates (undecodable bytes of a file name, or a "\ud800" JSON escape).
_BAD_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def unicode_problem(text: str) -> str | None:
    """None for valid Unicode text; else where its first unpaired surrogate is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"an unpaired surrogate {text[e.start]!r} at character {e.start}"
    return None


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
        _check_unicode(doc)
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
        return {
            "format": CORPUS_FORMAT,
            "schema_version": CORPUS_SCHEMA_VERSION,
            "hash": corpus_hash(domains),
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


def _check_unicode(doc: Document) -> None:
    """Every string of a document must be valid Unicode (it is written as UTF-8)."""
    renamed = "`acodm corpus import` takes it from the input's path: rename the file or folder"
    fixes = {
        "text": "fix or drop the record",
        "doc_id": f"give it a valid UTF-8 id ({renamed})",
        "source": f"give it a valid UTF-8 source ({renamed})",
    }
    for name, fix in fixes.items():
        value = getattr(doc, name)
        problem = unicode_problem(value) if isinstance(value, str) else None
        if problem:
            raise CorpusError(
                f"document {doc.doc_id!r} has {problem} in its {name}, which is not valid "
                f"Unicode; {fix}"
            )
    if doc.meta is not None:
        problem = unicode_problem(json.dumps(doc.meta, ensure_ascii=False))
        if problem:
            raise CorpusError(
                f"document {doc.doc_id!r} has an unpaired surrogate in its meta, which is not "
                "valid Unicode; fix or drop the record"
            )


#: How to fix a corpus whose files or manifest no longer match.
REBUILD_CORPUS = "rebuild it with `acodm corpus build` or `acodm corpus import`"
MODIFIED = f"the corpus was modified after it was built: {REBUILD_CORPUS}"


class Corpus:
    """A corpus folder opened for reading.

    Opening checks the manifest: every domain name is valid (:func:`validate_domain_name`),
    every ``file`` is a plain file name inside the folder and exists, counts are integers
    >= 0, and the corpus hash matches the files' hashes. :meth:`verify` (run by ``acodm
    prepare`` before any work) also hashes the files and counts their records;
    :meth:`iter_documents` checks the counts of a domain it reads to the end.
    """

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
        self.manifest: dict[str, Any] = m
        self._files = self._check_manifest()

    def _check_manifest(self) -> dict[str, Path]:
        """The file of each domain, after checking every manifest entry (see the class)."""
        where = self.path / MANIFEST
        domains = self.manifest.get("domains")
        if not isinstance(domains, dict) or not domains:
            raise CorpusError(f"{where} lists no domains (a non-empty object); {MODIFIED}")
        files: dict[str, Path] = {}
        for d, st in domains.items():
            validate_domain_name(d, RENAME_AND_REBUILD)
            if not isinstance(st, dict):
                raise CorpusError(
                    f"{where}: the entry of domain {d!r} is not an object; {MODIFIED}"
                )
            path = member_path(
                self.path,
                st.get("file"),
                what=f"the file of domain {d!r} in {where}",
                error=CorpusError,
                fix=REBUILD_CORPUS,
            )
            for key in ("documents", "characters"):
                value = st.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise CorpusError(
                        f"{where}: {key} of domain {d!r} is {value!r}, not a count >= 0; {MODIFIED}"
                    )
            if not isinstance(st.get("sha256"), str):
                raise CorpusError(f"{where}: domain {d!r} has no sha256; {MODIFIED}")
            if path in files.values():
                raise CorpusError(f"{where}: two domains share the file {path.name}; {MODIFIED}")
            if not path.is_file():
                raise CorpusError(f"{self.path}: file {path.name} of domain {d!r} is missing")
            files[d] = path
        if self.manifest.get("hash") != corpus_hash(domains):
            raise CorpusError(
                f"{where}: the corpus hash does not match its files' hashes; {MODIFIED}"
            )
        return files

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

    def verify(self, domains: list[str] | None = None) -> None:
        """Hash each domain file and count its records against the manifest (one read each).

        A file cut at a line boundary, edited, or counts edited in the manifest: a
        :class:`CorpusError` naming the file, before any work is spent on it.
        """
        for d in self.domains if domains is None else domains:
            st, path = self._domain(d), self._files[d]
            digest, lines = _hash_and_count_lines(path)
            if digest != st["sha256"]:
                raise CorpusError(f"{path} does not match its sha256 in the manifest; {MODIFIED}")
            if lines != st["documents"]:
                raise CorpusError(
                    f"{path} holds {lines} records, but the manifest says {st['documents']}; "
                    f"{MODIFIED}"
                )

    def iter_documents(self, domain: str) -> Iterator[Document]:
        """The documents of a domain in corpus order; reading to the end checks the counts."""
        st, path = self._domain(domain), self._files[domain]
        docs = chars = 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in _numbered_lines(f, path):
                try:
                    rec = json.loads(line)
                    doc = Document(
                        rec["text"], rec["domain"], rec["source"], rec["doc_id"], rec.get("meta")
                    )
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise CorpusError(
                        f"{path}:{lineno} is not a corpus record ({e}); the corpus is "
                        f"corrupt: {REBUILD_CORPUS}"
                    ) from e
                docs += 1
                chars += len(doc.text) if isinstance(doc.text, str) else 0
                yield doc
        if (docs, chars) != (st["documents"], st["characters"]):
            raise CorpusError(
                f"{path} holds {docs} documents and {chars} characters, but the manifest says "
                f"{st['documents']} and {st['characters']}; {MODIFIED}"
            )

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, domains={self.domains})"


def corpus_hash(domains: dict[str, Any]) -> str:
    """The corpus hash: SHA-256 of the domains' names and file hashes, in manifest order."""
    pairs = [[d, st.get("sha256") if isinstance(st, dict) else None] for d, st in domains.items()]
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def _hash_and_count_lines(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """Streaming SHA-256 of a file and its number of newline characters."""
    h, lines = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            lines += block.count(b"\n")
    return h.hexdigest(), lines


def _numbered_lines(f: IO[str], path: Path) -> Iterator[tuple[int, str]]:
    """``enumerate(f, 1)``, with a decoding error as a :class:`CorpusError`."""
    lineno = 0
    try:
        for lineno, line in enumerate(f, 1):
            yield lineno, line
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{path}: the line after line {lineno} is not UTF-8 ({e}); {MODIFIED}"
        ) from e


def open_corpus(path: str | Path) -> Corpus:
    return Corpus(path)
