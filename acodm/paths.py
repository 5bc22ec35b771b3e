"""Where acodm keeps its cache (downloaded archives, trained tokenizers).

Order of precedence: ``ACODM_CACHE``, then ``$XDG_CACHE_HOME/acodm``, then ``~/.cache/acodm``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder inside acodm's cache."""
    root = os.environ.get("ACODM_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "acodm"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
