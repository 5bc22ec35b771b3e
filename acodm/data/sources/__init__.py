"""The sources of the default corpus, by domain (see ``shared/docs/DATA.md``).

``REGISTRY`` maps each domain to its sources, in the order the corpus lists them;
``DEFAULT_DOMAINS`` is that order. Each source module documents what it reads and why.
"""

from __future__ import annotations

from acodm.data.sources import (
    books,
    code,
    dialogue,
    dictionary,
    legal,
    math,
    news,
    speeches,
    web,
    wiki,
)
from acodm.data.sources.base import Source, SourceOptions

REGISTRY: dict[str, tuple[Source, ...]] = {
    "books": books.SOURCES,
    "wiki": wiki.SOURCES,
    "dictionary": dictionary.SOURCES,
    "dialogue": dialogue.SOURCES,
    "code": code.SOURCES,
    "legal": legal.SOURCES,
    "speeches": speeches.SOURCES,
    "news": news.SOURCES,
    "math": math.SOURCES,
    "web": web.SOURCES,
}
DEFAULT_DOMAINS: tuple[str, ...] = tuple(REGISTRY)

__all__ = ["DEFAULT_DOMAINS", "REGISTRY", "Source", "SourceOptions"]
