"""News: the 300 Australian news stories of the Lee corpus, one per line of
``gensim/test/test_data/lee_background.cor`` in the ``gensim==4.4.0`` wheel (research use).

Tiny on purpose: a rare domain, where mixing weights matter most.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from acodm.data.corpus import Document
from acodm.data.sources.archive import read_member
from acodm.data.sources.base import Source, SourceOptions
from acodm.data.sources.text import decode_bytes
from acodm.data.sources.wiki import GENSIM, GENSIM_PIP_ARGS

STORIES = "gensim/test/test_data/lee_background.cor"


def extract(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    assert archive is not None
    lines = decode_bytes(read_member(archive, STORIES)).splitlines()
    for i, line in enumerate(lines):
        yield Document(line.strip(), "news", GENSIM, f"news/{GENSIM}/lee_background/{i:04d}")


LEE = Source("news", "gensim-lee", GENSIM, extract, package=GENSIM, pip_args=GENSIM_PIP_ARGS)
SOURCES = (LEE,)
