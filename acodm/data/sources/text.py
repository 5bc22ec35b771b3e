"""Text clean-up shared by every source: decoding and white-space normalisation.

Every document of the default corpus passes through :func:`normalize_text`, so that the
domains differ by what they say, not by line endings or trailing blanks (a tokenizer would
otherwise learn ``"\\r\\n"`` as a marker of the licence domain).
"""

from __future__ import annotations

import re

_TRAILING_WS = re.compile(r"[ \t\f\v\xa0]+$", re.MULTILINE)
_MANY_BLANK_LINES = re.compile(r"\n{4,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\ufeff]")


def decode_bytes(data: bytes) -> str:
    """Decode UTF-8 (with or without BOM), falling back to Windows-1252 then Latin-1.

    A few licence texts and old e-texts are not UTF-8; a strict decode would drop them.
    """
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def normalize_text(text: str) -> str:
    """Unix newlines, no trailing white space, at most two blank lines in a row, no NULs.

    Form feeds inside lines and tabs are kept (code uses them); leading/trailing blank
    lines are dropped. Returns ``""`` for a text with nothing but white space.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_WS.sub("", text)
    text = _MANY_BLANK_LINES.sub("\n\n\n", text)
    return text.strip("\n") if text.strip() else ""
