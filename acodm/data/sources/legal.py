"""Legal: the licence texts of the SPDX licence list shipped by ``spdx==2.5.1`` (CC0).

One document per licence; ``meta["name"]`` is the licence's full name from the package's
``db.json`` when it has one. Some texts are SPDX matching templates
(``<<var;name=copyright;original=<year> <owner>;match=.+>>``): the placeholders are replaced by
their original text, as a licence reads in the wild. A few texts are Windows-1252, not UTF-8
(see :func:`~acodm.data.sources.text.decode_bytes`). ``deprecated_GPL-2.0+`` and the like are
skipped when the current text (``GPL-2.0``) is there: they are near-copies of it.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path

from acodm.data.corpus import Document
from acodm.data.sources.archive import iter_members, read_member
from acodm.data.sources.base import Source, SourceOptions
from acodm.data.sources.text import decode_bytes

PACKAGE = "spdx==2.5.1"
TEXTS = "spdx/data/*.txt"
DB = "spdx/data/db.json"
_VAR = re.compile(r"<<var;(?:[^;>]*;)*?original=(.*?);match=.*?>>", re.DOTALL)
_OPTIONAL = re.compile(r"<<(?:beginOptional(?:;[^>]*)?|endOptional)>>")


def fill_template(text: str) -> str:
    """SPDX template markup -> plain licence text (placeholders keep their original text)."""
    return _OPTIONAL.sub("", _VAR.sub(lambda m: m.group(1).strip(), text))


def licence_names(archive: Path) -> dict[str, str]:
    """Licence file name -> full licence name (empty if ``db.json`` is not as expected)."""
    db = json.loads(read_member(archive, DB))
    licences = db.get("licenses", []) if isinstance(db, dict) else []
    return {str(x.get("template")): str(x.get("name")) for x in licences if x.get("name")}


def extract(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    assert archive is not None
    names = licence_names(archive)
    members = dict(iter_members(archive, TEXTS))
    present = {posixpath.basename(m) for m in members}
    for name, data in members.items():
        filename = posixpath.basename(name)
        spdx_id = filename.removesuffix(".txt")
        current = spdx_id.removeprefix("deprecated_").replace("+", "") + ".txt"
        if spdx_id.startswith("deprecated_") and current in present:
            continue
        meta = {"spdx_id": spdx_id, **({"name": names[filename]} if filename in names else {})}
        text = fill_template(decode_bytes(data))
        yield Document(text, "legal", PACKAGE, f"legal/{PACKAGE}/{spdx_id}", meta)


SPDX = Source("legal", "spdx", PACKAGE, extract, package=PACKAGE, version=3)
SOURCES = (SPDX,)
