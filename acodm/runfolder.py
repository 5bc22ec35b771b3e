"""One writer per run folder, and nothing left behind by a killed or failed run.

A run command (``acodm pretrain``, ``acodm train-policy``, the quickstart's stages, which call
them) holds a :class:`RunFolder` for its whole duration:

* **Lock.** An exclusive ``fcntl.flock`` on ``RUN/.lock``, which also names the holder (pid,
  host, command). The kernel drops the lock when the holder exits or is killed, so a lock is
  never stale; a second writer stops at once with :class:`RunInUseError` instead of
  interleaving its logs with the first. Without ``fcntl`` (Windows), or on a file system that
  refuses locks, the run goes on unlocked (with a warning in the second case).
* **Leftovers.** With the lock held, the temporaries of acodm's atomic writes that a killed
  run left (``.NAME.XXXXXXXX.partial`` and ``.old`` folders, ``.NAME.XXXXXXXX.tmp`` files, see
  :mod:`acodm.io`) are removed, only for the NAMEs the command itself writes and only in its
  folders. A folder that a kill caught in the middle of its replacement (the previous version
  parked in ``.old``, the final name missing) gets its previous version back first.
* **A failed start leaves nothing.** When the command raises before it logged anything after
  step 0, the entries it created (``config.json``, ``metrics.jsonl``, ...) are removed, and the
  folder too if the command created it: a corrected retry then needs neither ``--resume`` nor
  a clean-up by hand. Entries that existed before are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from acodm.errors import AcodmError
from acodm.metrics import read_metrics

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no advisory locks, runs go unlocked)
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
# acodm.io's temporaries: tempfile's 8 random characters between the final name and the kind.
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>partial|old|tmp)$")


class RunInUseError(AcodmError):
    """Another process holds the run folder."""


@dataclass(frozen=True)
class RunLayout:
    """What a run command writes in its run folder."""

    command: str  # names the holder in the in-use message, e.g. "acodm pretrain"
    owned: tuple[str, ...]  # entries a failed start removes if it created them (dirs if empty)
    # sub-folder ("" = the run folder) -> regex of the final names whose temporaries are ours
    written: dict[str, str] = field(default_factory=dict)


PRETRAIN = RunLayout(
    "acodm pretrain",
    owned=("config.json", METRICS_FILE, "checkpoints"),
    written={"": r"config\.json|metrics\.jsonl|summary\.json", "checkpoints": r"step-\d{8}"},
)
TRAIN_POLICY = RunLayout(
    "acodm train-policy",
    owned=("config.json", METRICS_FILE),
    written={"": r"config\.json|metrics\.jsonl|agent|policy"},
)


class RunFolder:
    """Exclusive use of ``path`` for one run (see the module docstring); a context manager.

    ``create=False``: the folder must exist (a resume). ``enabled=False``: a no-op, for the
    ranks of a data-parallel run other than rank 0, which never write the run folder.
    """

    def __init__(
        self, path: str | Path, layout: RunLayout, *, create: bool = True, enabled: bool = True
    ) -> None:
        self.path, self.layout, self.create, self.enabled = Path(path), layout, create, enabled
        self._fd: int | None = None
        self._held = False
        self._made: Path | None = None  # the topmost folder this run created
        self._existed: set[str] = set()

    def __enter__(self) -> RunFolder:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(failed=exc is not None)

    def acquire(self) -> RunFolder:
        """Create the folder if needed, lock it, remove leftovers; raises if it is in use."""
        if not self.enabled or self._held:
            return self
        if not self.path.is_dir():
            if not self.create:
                raise AcodmError(f"no run at {self.path}: start it without --resume")
            self._made = _first_missing(self.path)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise AcodmError(
                    f"cannot create the run folder {self.path} ({e}); choose another --out"
                ) from e
        try:
            self._fd = _lock(self.path, self.layout.command)
        except BaseException:
            self._remove_made()
            raise
        self._held = True
        self._existed = {n for n in self.layout.owned if _exists(self.path / n)}
        try:
            remove_leftovers(self.path, self.layout)
        except BaseException:  # __exit__ does not run when __enter__ raises: unlock here
            self.release()
            raise
        return self

    def release(self, *, failed: bool = False) -> None:
        """Unlock; after a failure before any progress, remove what this run created."""
        if not self._held:
            return
        undo = failed and not _progressed(self.path / METRICS_FILE)
        try:
            if undo:
                for name in self.layout.owned:
                    if name not in self._existed:
                        _remove_created(self.path / name)
        finally:
            self._held = False
            if self._fd is not None:
                # Unlink while still holding the lock: a waiter that opened the old file sees
                # that it is gone and locks a new one (see _lock).
                with contextlib.suppress(FileNotFoundError):
                    (self.path / LOCK_FILE).unlink()
                os.close(self._fd)
                self._fd = None
            if undo:
                self._remove_made()

    def _remove_made(self) -> None:
        """Remove the folders this run created, innermost first, while they are empty."""
        if self._made is None:
            return
        folder = self.path
        while True:
            try:
                folder.rmdir()
            except OSError:  # not empty (someone else's files) or already gone
                return
            if folder == self._made:
                return
            folder = folder.parent


def has_entries(path: Path) -> bool:
    """Whether ``path`` holds anything besides the run lock (False if it does not exist)."""
    return path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())


def absolute_store(section: Any) -> Any:
    """A config section (dict) with its ``store`` path made absolute, for comparisons: runs of
    earlier acodm versions saved it relative to the working directory of their start."""
    if not isinstance(section, dict) or not isinstance(section.get("store"), str):
        return section
    return {**section, "store": str(Path(section["store"]).resolve())}


def remove_leftovers(run_dir: Path, layout: RunLayout) -> list[Path]:
    """Remove the temporaries of acodm's atomic writes that a killed run left in ``run_dir``
    (only for the names ``layout`` writes); returns what was removed. Call it holding the lock.
    """
    removed = []
    for sub, names in layout.written.items():
        folder = run_dir / sub if sub else run_dir
        if not folder.is_dir() or (sub and folder.is_symlink()):  # never follow a link out
            continue
        final = re.compile(names)
        for entry in sorted(folder.iterdir()):
            m = _TEMP.match(entry.name)
            if m is None or not final.fullmatch(m["name"]):
                continue
            if m["kind"] == "old":
                _restore(entry, folder / m["name"])
            _remove(entry)
            removed.append(entry)
    return removed


# ----------------------------------------------------------------------------- helpers


def _lock(run_dir: Path, command: str) -> int | None:
    """Take the exclusive lock of ``run_dir``; return the lock file's descriptor."""
    if fcntl is None:  # pragma: no cover
        return None
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunInUseError(
                f"{run_dir} is in use by {holder}; wait for it or choose another --out"
            ) from None
        except OSError as e:  # a file system without locks (e.g. NFS without lockd)
            os.close(fd)
            warnings.warn(
                f"cannot lock {run_dir} ({e}); a second run writing into it would not be detected",
                stacklevel=3,
            )
            return None
        if _same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed that file as it released it: lock anew
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    info["since"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    return fd


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"process {int(info['pid'])} on {info['host']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "another process"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _first_missing(path: Path) -> Path:
    """The topmost folder of ``path`` (itself included) that does not exist yet."""
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _progressed(metrics: Path) -> bool:
    """Whether the run logged anything after step 0 (then its files are worth keeping)."""
    try:
        return any(int(r.get("step", 0)) > 0 for r in read_metrics(metrics))
    except FileNotFoundError:
        return False
    except (OSError, ValueError, TypeError, AttributeError):  # unreadable: keep it
        return True


def _remove_created(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            path.rmdir()  # only when empty: never delete a tree on a failed start
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _restore(trash: Path, out: Path) -> None:
    """``atomic_directory`` parks the previous ``out`` in ``trash`` just before renaming the
    new one into place; a kill in between leaves no ``out``: put the previous one back."""
    parked = trash / out.name
    if trash.is_dir() and not trash.is_symlink() and parked.is_dir() and not _exists(out):
        os.replace(parked, out)
        warnings.warn(
            f"restored {out} from {trash.name}: a run was killed while replacing it",
            stacklevel=4,
        )
