"""Turn MediaWiki markup into plain text (our own stripper; gensim is never imported).

Follows the spirit of ``gensim.corpora.wikicorpus.filter_wiki``: keep the prose a reader
sees, drop what only renders as boxes, footnotes, images or navigation. Order matters:
comments may hide any markup; file captions nest links and brackets, so files go before
links; link labels may hold templates, so links resolve before templates are rendered;
tables are cut once their cells' templates are gone.
"""

from __future__ import annotations

import html
import re

_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.DOTALL)
# Elements dropped with their content: footnotes, formulas, galleries, timelines, ...
_DROPPED_ELEMENTS = ("ref", "math", "gallery", "timeline", "score", "imagemap", "graph", "chem")
_DROPPED = [
    re.compile(rf"<{tag}\b[^>]*?/>|<{tag}\b[^>]*>.*?(</{tag}\s*>|\Z)", re.DOTALL | re.IGNORECASE)
    for tag in _DROPPED_ELEMENTS
]
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]*?/?>")
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_INNER_TEMPLATE = re.compile(r"\{\{([^{}]*)\}\}")
_DROPPED_LINK_START = re.compile(r"\[\[\s*(file|image|media|category)\s*:", re.IGNORECASE)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_QUOTES = re.compile(r"'{2,5}")
_HEADING = re.compile(r"^(={2,6})\s*(.*?)\s*\1\s*$", re.MULTILINE)
_HEADING_MARK = "\x01"  # marks heading lines until empty sections are dropped
_MAGIC = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS = re.compile(r"\(\s*[,;:]?\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:!?])")
_MULTI_SPACE = re.compile(r"[ \t]{2,}")
_DROPPED_NAMESPACES = {"file", "image", "media", "category"}
_LANGUAGE_PREFIX = re.compile(r"^[a-z]{2,3}(-[a-z]+)*$|^simple$")
# Templates rendered as their first argument; all others render as nothing.
_KEEP_TEXT_TEMPLATES = {"nowrap", "nobr", "small", "smallcaps", "sc", "abbr", "linktext"}
# Sections that hold only citations and navigation once templates and refs are gone.
_TRAILING_SECTIONS = {
    "references", "notes", "footnotes", "citations", "sources", "bibliography",
    "external links", "see also", "further reading", "notes and references",
}  # fmt: skip


def remove_nested(text: str, opener: str, closer: str) -> str:
    """Remove every balanced ``opener ... closer`` span, nested ones included.

    A stray closer is kept; an opener never closed drops the rest of the text (a truncated
    template or table, as in shortened dumps, is never prose).
    """
    pieces: list[str] = []
    depth, start = 0, 0
    for m in re.finditer(re.escape(opener) + "|" + re.escape(closer), text):
        if m.group() == opener:
            if depth == 0:
                pieces.append(text[start : m.start()])
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                start = m.end()
    if depth == 0:
        pieces.append(text[start:])
    return "".join(pieces)


def _template_text(m: re.Match[str]) -> str:
    """Inline templates that render words keep them (``{{lang|grc|...}}``, ``{{convert|5|km}}``);
    every other template (infoboxes, citations, navigation) renders as nothing."""
    name, *params = m.group(1).split("|")
    name = name.strip().lower().replace("_", " ")
    positional = [p.strip() for p in params if "=" not in p]
    if not positional:
        return {"ndash": "–", "mdash": "—", "snd": " – "}.get(name, "")
    if name in ("lang", "transl", "transliteration") and len(positional) >= 2:
        return positional[-1]
    if name.startswith("lang-") or name in _KEEP_TEXT_TEMPLATES:
        return positional[0]
    if name in ("convert", "cvt") and len(positional) >= 2:
        return f"{positional[0]} {positional[1]}"
    return ""


def _replace_templates(text: str) -> str:
    """Render templates from the innermost out, then drop any unbalanced leftovers."""
    for _ in range(20):
        new = _INNER_TEMPLATE.sub(_template_text, text)
        if new == text:
            break
        text = new
    return remove_nested(text, "{{", "}}")


def _remove_dropped_links(text: str) -> str:
    """Drop ``[[File:...]]``/``[[Category:...]]`` whole: captions nest links and brackets."""
    pieces: list[str] = []
    pos = 0
    while (m := _DROPPED_LINK_START.search(text, pos)) is not None:
        pieces.append(text[pos : m.start()])
        pos = _link_end(text, m.start())
    pieces.append(text[pos:])
    return "".join(pieces)


def _link_end(text: str, start: int) -> int:
    """Index just past the ``]]`` closing the link opened at ``start`` (single ``[x]``
    brackets in a caption, as in ``[[File:a.png|Map [above]]]``, are matched on the way)."""
    depth, single, i = 0, 0, start
    while i < len(text):
        if text.startswith("[[", i):
            depth, i = depth + 1, i + 2
        elif text[i] == "[":
            single, i = single + 1, i + 1
        elif text[i] == "]" and single:
            single, i = single - 1, i + 1
        elif text.startswith("]]", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _link_text(m: re.Match[str]) -> str:
    """``[[target|label]]`` -> label; files, categories and interlanguage links -> nothing."""
    target, _, label = m.group(1).partition("|")
    target = target.strip()
    if ":" in target and not target.startswith(":"):
        prefix = target.split(":", 1)[0].strip().lower()
        if prefix in _DROPPED_NAMESPACES or _LANGUAGE_PREFIX.match(prefix):
            return ""
    if label:  # the last field is the label (file links have several); a template's bars aren't
        return label if "{{" in label else label.rsplit("|", 1)[-1]
    return target.lstrip(":").split("#", 1)[0] or target.split("#", 1)[-1]


def _replace_links(text: str) -> str:
    """Resolve links from the innermost out (file captions may contain links)."""
    for _ in range(8):
        new = _INNER_LINK.sub(_link_text, text)
        if new == text:
            break
        text = new
    return text


def _drop_trailing_sections(text: str) -> str:
    """Cut the article at its first reference/navigation section (they come last)."""
    for m in _HEADING.finditer(text):
        if m.group(2).strip().lower() in _TRAILING_SECTIONS:
            return text[: m.start()]
    return text


def _drop_empty_sections(lines: list[str]) -> list[str]:
    """Keep a heading only if prose follows before the next heading of its level or above.

    Sections that held only a table or a gallery would otherwise leave a bare heading.
    """
    kept: list[str] = []
    for i, line in enumerate(lines):
        if not line.startswith(_HEADING_MARK):
            kept.append(line)
            continue
        level = int(line[1])
        for nxt in lines[i + 1 :]:
            if nxt.startswith(_HEADING_MARK):
                if int(nxt[1]) <= level:
                    break
            elif nxt.strip():
                kept.extend(["", line[2:]])
                break
    return kept


def _clean_line(line: str) -> str:
    if line.startswith(_HEADING_MARK):
        return line
    stripped = line.lstrip()
    if stripped[:1] in ("*", "#"):
        return "- " + stripped.lstrip("*#:; ").strip()
    if stripped[:1] in (":", ";"):
        return stripped.lstrip(":; ").strip()
    if stripped.startswith("|") or stripped.startswith("!"):
        return ""  # table rows whose table markers were unbalanced
    return line.strip()


def strip_markup(wikitext: str) -> str:
    """Plain text of one article's wikitext: prose, headings and list items."""
    text = _COMMENT.sub("", wikitext)
    for pattern in _DROPPED:
        text = pattern.sub("", text)
    text = _remove_dropped_links(text)
    text = _replace_links(text)
    text = _replace_templates(text)
    text = remove_nested(text, "{|", "|}")
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _drop_trailing_sections(text)
    text = _HEADING.sub(lambda m: f"\n{_HEADING_MARK}{len(m.group(1))}{m.group(2)}\n", text)
    text = _BR.sub("\n", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = _MAGIC.sub("", text)
    text = html.unescape(text).replace("\xa0", " ")
    text = _EMPTY_PARENS.sub("", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _MULTI_SPACE.sub(" ", text)
    lines = [_clean_line(line) for line in text.split("\n")]
    lines = _drop_empty_sections([line for line in lines if line not in ("-",)])
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def is_redirect(wikitext: str) -> bool:
    return wikitext.lstrip().upper().startswith("#REDIRECT")
