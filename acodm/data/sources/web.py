"""Web: the README (long description) of every installed distribution, via ``importlib.metadata``.

Markdown and reStructuredText prose written for the web, present on every machine that runs
acodm, so tests can use it offline. Badge and image lines are dropped (they are URLs, not
prose), as are READMEs that are empty or tiny after that. The documents depend on what is
installed, so this domain differs between machines; each records name and version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

from acodm.data.corpus import Document
from acodm.data.sources.base import Source, SourceOptions

LABEL = "installed-distributions"
MIN_CHARS = 500
_SKIPPED = {"acodm"}  # our own README is not web text
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_MD_IMAGE = r"!\[[^\]\n]*\]\(\s*[^)\s]*\s*\)"
# Markdown images, also wrapped in a link (badges), whose URL may sit on the next line.
_MD_IMAGES = re.compile(rf"\[\s*{_MD_IMAGE}\s*\](?:\(\s*[^)\s]*\s*\)|\[[^\]\n]*\])|{_MD_IMAGE}")
# Lines left with only HTML layout tags or rST substitutions (``|pypi-badge| |ci|``).
_LAYOUT_LINE = re.compile(
    r"^\s*(?:</?(?:img|a|p|div|picture|source|br|h1|span)\b[^>]*>\s*|\|[\w.-]+\|\s*)+$",
    re.IGNORECASE,
)
_RST_IMAGE = re.compile(r"^\.\. (?:\|[^|]+\| )?(?:image|figure)\s*::")
_RST_MARKER_COMMENT = re.compile(r"^\.\.\s+[\w-]+\s*$")  # ``.. start-badges``


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _field(dist: metadata.Distribution, name: str) -> str:
    values = dist.metadata.get_all(name)
    return str(values[0]) if values else ""


def long_description(dist: metadata.Distribution) -> str:
    """The README: the metadata's body, or the old-style ``Description`` header unfolded."""
    get_payload = getattr(dist.metadata, "get_payload", None)  # an email.message.Message
    body = get_payload() if get_payload is not None else None
    if isinstance(body, str) and body.strip():
        return body
    header = _field(dist, "Description")
    first, _, rest = header.partition("\n")
    lines = [re.sub(r"^(?: {8}|       \|)", "", line) for line in rest.split("\n")]
    return "\n".join([first, *lines]) if header.strip() != "UNKNOWN" else ""


def drop_images(text: str) -> str:
    """Remove HTML comments, badge/image lines and rST image directives with their options."""
    kept: list[str] = []
    in_directive = False
    text = _MD_IMAGES.sub("", _COMMENT.sub("", text))
    for line in text.split("\n"):
        if _RST_IMAGE.match(line):
            in_directive = True
            continue
        if in_directive and (line.startswith((" ", "\t")) and line.strip()):
            continue
        in_directive = False
        if not (_LAYOUT_LINE.match(line) or _RST_MARKER_COMMENT.match(line)):
            kept.append(line)
    return "\n".join(kept)


def readme_documents(dists: Iterable[metadata.Distribution]) -> Iterator[Document]:
    """One document per distribution (first of each name, as import would pick it)."""
    seen: set[str] = set()
    for dist in dists:
        try:
            name = _field(dist, "Name")
            text = drop_images(long_description(dist))
        except (AttributeError, TypeError, OSError, UnicodeDecodeError):
            continue  # a broken install (dist-info without METADATA) is not worth failing on
        key = _normalized(name)
        if not key or key in seen or key in _SKIPPED:
            continue
        seen.add(key)
        if len(text.strip()) >= MIN_CHARS:
            ident = f"{name}=={dist.version}"
            yield Document(text, "web", LABEL, f"web/{LABEL}/{ident}", {"distribution": ident})


def extract(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    yield from readme_documents(metadata.distributions())


READMES = Source("web", "installed-readmes", LABEL, extract)
SOURCES = (READMES,)
