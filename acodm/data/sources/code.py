"""Code: the running interpreter's standard library, ``*.py`` (PSF licence).

Every Python installation has it, so tests can use real code without the network. Skipped:
third-party packages under ``site-packages``, generated files (codec tables, the pydoc topic
dump, ...), files over 512 KB or under 200 characters (empty ``__init__.py`` files, one-line
test fixtures), and undecodable files (some tests are invalid on purpose).
The stdlib's own tests are 60% of its bytes and very repetitive, so a deterministic share
(:attr:`SourceOptions.code_test_fraction`, chosen by a hash of the path, the same on every
machine) is kept.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path

from acodm.data.corpus import Document
from acodm.data.sources.base import Source, SourceOptions

LABEL = f"python-stdlib-{sys.version_info.major}.{sys.version_info.minor}"
MAX_BYTES = 512 * 1024
MIN_CHARS = 200
_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_TEST_DIRS = {"test", "tests", "idle_test"}
_GENERATED = re.compile(
    rb"(?i)auto-?generated|automatically generated|generated (from|by|on)\b|do not edit"
)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_test_file(rel: Path) -> bool:
    return bool(_TEST_DIRS.intersection(rel.parts[:-1])) or rel.name.startswith("test_")


def keep_test_file(rel: Path, fraction: float) -> bool:
    """A stable pseudo-random choice of test files: the same on every machine and run."""
    digest = hashlib.sha256(rel.as_posix().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def candidate_files(root: Path, test_fraction: float) -> list[Path]:
    """Relative paths of the ``*.py`` files to read, sorted."""
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _SKIPPED_DIRS.intersection(rel.parts) or rel.name.startswith("_sysconfigdata"):
            continue
        if is_test_file(rel) and not keep_test_file(rel, test_fraction):
            continue
        files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def read_source(path: Path) -> str | None:
    """The file's text in its declared encoding; None if it should not be in the corpus."""
    try:
        data = path.read_bytes()
        if len(data) > MAX_BYTES or _GENERATED.search(data[:400]):
            return None
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
        return None


def extract(
    archive: Path | None, options: SourceOptions, root: Path | None = None
) -> Iterator[Document]:
    """Standard-library files in path order; ``root`` lets tests point at a fake stdlib."""
    root = root or stdlib_root()
    count = 0
    for rel in candidate_files(root, options.code_test_fraction):
        if options.code_max_files is not None and count >= options.code_max_files:
            return
        text = read_source(root / rel)
        if text is not None and len(text.strip()) >= MIN_CHARS:
            count += 1
            yield Document(text, "code", LABEL, f"code/{LABEL}/{rel.as_posix()}")


STDLIB = Source("code", "python-stdlib", LABEL, extract)
SOURCES = (STDLIB,)
