"""Atomic file and folder writes, hashing.

Every artifact acodm writes goes to a temporary name first and is renamed into place only
when complete, so an interrupted run never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acodm.errors import AcodmError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read a JSON file, turning a parse error into a clear message."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AcodmError(
            f"{what} {path} is not valid JSON ({e}); it may be truncated or "
            "edited by hand: rebuild it"
        ) from e


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name; rename it to ``out`` only on success.

    On any exception the temporary folder is removed and an existing ``out`` is untouched.
    With ``overwrite`` an existing ``out`` is replaced only after the new one is complete.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise AcodmError(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def member_path(
    root: Path,
    name: object,
    *,
    what: str,
    error: type[AcodmError],
    fix: str,
    under: str | None = None,
) -> Path:
    """``root/under/name`` for a file name read from an artifact's JSON, checked to stay inside.

    A manifest, policy or annotation file names its member files; a crafted or damaged one
    must not make acodm read a file elsewhere. ``name`` must be a plain file name (a non-empty
    string without ``/``, ``\\`` or NUL, not ``.`` or ``..``) and, with symbolic links
    resolved, the path must lie inside ``root`` (a symlink to another file of the folder is
    fine). ``under`` is a subfolder chosen by the code (``"train"``), never by the JSON.
    ``what`` names the field in the message ("stem of domain 'books' in STORE/manifest.json"),
    ``fix`` says what to do ("rebuild it with `acodm prepare`"). The file need not exist.
    """
    plain = (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
    )
    if not plain:
        raise error(
            f"{what} is {name!r}, not a plain file name (names read from an artifact may not "
            f"be empty, '.' or '..', or hold '/', '\\' or NUL): {fix}"
        )
    assert isinstance(name, str)
    path = root / under / name if under is not None else root / name
    try:
        top, real = root.resolve(), path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise error(f"{what} is {name!r}, but {path} cannot be resolved ({e}): {fix}") from e
    if top not in real.parents:
        raise error(
            f"{what} is {name!r}, but {path} leads outside {root} (to {real}, through a "
            f"symbolic link): {fix}"
        )
    return path


def read_checked_manifest(
    folder: Path,
    *,
    name: str,
    fmt: str,
    version: int,
    what: str,
    create: str,
    rebuild: str,
    error: type[AcodmError],
    also: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Read ``folder/name`` and check its format and schema version, with clear errors.

    ``what`` names the artifact ("corpus", "token store"), ``create`` says how to make one,
    ``rebuild`` how to redo it with this version of acodm. ``also``: older schema versions
    that this acodm still reads (the caller handles their differences).
    """
    path = folder / name
    if not path.is_file():
        raise error(f"{folder} is not an acodm {what} (no {name}); {create}")
    try:
        m = read_json(path, f"{what} manifest")
    except AcodmError as e:
        raise error(f"{e}; {rebuild}") from e
    if not isinstance(m, dict) or m.get("format") != fmt:
        raise error(f"{path} is not an acodm {what} manifest; {create}")
    if m.get("schema_version") != version and m.get("schema_version") not in also:
        raise error(
            f"{folder} has {what} schema version {m.get('schema_version')!r}, but this acodm "
            f"reads version {version}{_older(also)}: {rebuild}"
        )
    return m


def _older(versions: tuple[int, ...]) -> str:
    return f" (and {', '.join(str(v) for v in versions)})" if versions else ""
