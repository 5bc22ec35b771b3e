"""Recognise the pickle files that this user's acodm wrote, before anything unpickles them.

SB3's checkpoint files (``agent.zip``, ``replay_buffer.pkl``) are pickle: loading one runs any
code it was made to run. acodm loads them only to resume (or, on request, re-export) a run
that it wrote itself. The rule for "wrote itself":

* Each user has a secret key, 32 random bytes in ``<config dir>/checkpoint.key``, created on
  first use with mode 0600 (its folder 0700). The config dir is ``$ACODM_CONFIG``, else
  ``$XDG_CONFIG_HOME/acodm``, else ``~/.config/acodm``: **outside** any run folder.
* Writing a checkpoint records the sha256 of each pickle file and an HMAC-SHA256 of those
  hashes under that key (:func:`sign`, stored in ``checkpoint.json``).
* Before loading, the files are read once, hashed, and the record is checked against this
  user's key (:func:`verify`); only those same bytes are then unpickled, so a file swapped
  after the check is never read.

Why a key outside the folder: whoever hands over a folder controls every file in it, so any
marker inside it can be forged; without the key one cannot compute a matching HMAC. A folder
from another user or machine (another key), one written by an acodm older than this check
(no record), and one whose pickle files changed (a crafted ``agent.zip``) all fail, with a
:class:`TrustError` that names ``--trust-pickle`` (``trust_pickle=True``): the explicit "I
trust whoever made this folder" that skips the check. Limits: anyone who can read the key
file (the same OS user, root) can forge a record; a copied config dir carries the trust
with it. Moving or renaming a run folder keeps it trusted (the record names files, not paths).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acodm.errors import AcodmError

ENV_VAR = "ACODM_CONFIG"
KEY_FILE = "checkpoint.key"
SCHEME = "hmac-sha256"
TRUST_HINT = (
    "if you trust whoever made this folder, pass --trust-pickle (trust_pickle=True in Python)"
)


class TrustError(AcodmError):
    """Pickle files acodm did not write for this user, or an unusable key."""


def config_dir() -> Path:
    """acodm's per-user config folder: ``$ACODM_CONFIG``, ``$XDG_CONFIG_HOME/acodm`` or
    ``~/.config/acodm`` (not created here)."""
    root = os.environ.get(ENV_VAR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "acodm"


def _read_key(path: Path) -> bytes:
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:  # others could read (and forge with) it, or replace it
            raise TrustError(
                f"{path} is accessible by other users (mode {mode:o}); run `chmod 600 {path}` "
                "(or delete it: checkpoints signed with it will then need --trust-pickle)"
            )
    text = path.read_bytes().decode("ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise TrustError(f"{path} is not an acodm key (64 hex digits); delete it to make a new one")
    return key


def _create_key(path: Path) -> None:
    """Write a fresh key with mode 0600; never replaces one another process made meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.key.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the key exists
        except FileExistsError:  # a concurrent first use won: keep its key
            pass
        except OSError:  # no hard links on this filesystem: exclusive create instead
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="ascii") as f:
                    f.write(Path(tmp).read_text(encoding="ascii"))
    finally:
        os.unlink(tmp)


def user_key(*, create: bool = True) -> bytes | None:
    """This user's checkpoint key; created on first use (``create``), else None if absent."""
    path = config_dir() / KEY_FILE
    try:
        if not path.exists():
            if not create:
                return None
            _create_key(path)
        return _read_key(path)
    except OSError as e:  # a read-only or missing home, a key made by another OS user
        raise TrustError(
            f"cannot read or create the checkpoint key {path} ({e}); set {ENV_VAR} to a "
            "private folder you can write"
        ) from e


def _key_id(key: bytes) -> str:
    """Names the key in a record (to tell "another key" from "tampered"); reveals nothing."""
    return hashlib.sha256(b"acodm key id\0" + key).hexdigest()[:16]


def _mac(key: bytes, hashes: Mapping[str, str]) -> str:
    message = json.dumps({"scheme": SCHEME, "files": dict(hashes)}, sort_keys=True)
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(hashes: Mapping[str, str]) -> dict[str, Any]:
    """A record for ``checkpoint.json``: file name -> sha256 hex, and their HMAC."""
    key = user_key()
    assert key is not None
    return {
        "scheme": SCHEME,
        "key_id": _key_id(key),
        "files": dict(hashes),
        "hmac": _mac(key, hashes),
    }


def verify(record: Any, hashes: Mapping[str, str], where: Path) -> None:
    """Raise :class:`TrustError` unless ``record`` is this user's signature of ``hashes``
    (the sha256 of the bytes about to be unpickled)."""
    names = sorted(hashes)
    risk = f"loading it would unpickle {names} (SB3's format, which can run any code); {TRUST_HINT}"
    if not isinstance(record, dict) or record.get("scheme") != SCHEME:
        raise TrustError(
            f"{where} has no acodm signature (written by someone else, or by an acodm older "
            f"than this check), so acodm cannot tell it was written by you; {risk}"
        )
    key = user_key(create=False)
    if key is None or record.get("key_id") != _key_id(key):
        raise TrustError(
            f"{where} was signed with another acodm key (another user or machine, or your key "
            f"in {config_dir()} was replaced); {risk}"
        )
    signed = record.get("files")
    if not isinstance(signed, dict) or set(signed) != set(hashes):
        raise TrustError(f"{where}: the signature covers other files than {names}; {risk}")
    changed = [n for n in names if not hmac.compare_digest(str(signed[n]), hashes[n])]
    if changed:
        raise TrustError(f"{where}: {changed} changed after acodm wrote them; {risk}")
    if not hmac.compare_digest(str(record.get("hmac", "")), _mac(key, hashes)):
        raise TrustError(f"{where}: the signature does not match its file hashes; {risk}")
