"""``acodm.io.member_path``: a name read from an artifact's JSON stays inside its folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acodm.errors import AcodmError
from acodm.io import member_path


class _Err(AcodmError):
    pass


def _member(root: Path, name: object, under: str | None = None) -> Path:
    return member_path(root, name, what="the file of X", error=_Err, fix="rebuild it", under=under)


def test_plain_names_and_symlinks_inside_the_folder_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.bin").write_bytes(b"x")
    os.symlink("a.bin", tmp_path / "train" / "b.bin")  # to another member: fine
    assert _member(tmp_path, "a.bin", "train") == tmp_path / "train" / "a.bin"
    assert _member(tmp_path, "b.bin", "train") == tmp_path / "train" / "b.bin"
    assert _member(tmp_path, "..hidden-but-plain") == tmp_path / "..hidden-but-plain"
    assert _member(tmp_path, "missing.bin") == tmp_path / "missing.bin"  # existence is not checked


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../x", "a/b", "..", ".", "", "a\\b", "a\0b", None, 3, ["a"]]
)
def test_anything_but_a_plain_file_name_is_refused(tmp_path: Path, name: object) -> None:
    with pytest.raises(_Err, match=r"the file of X is .*not a plain file name.*: rebuild it"):
        _member(tmp_path, name)


def test_symlinks_that_leave_the_folder_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("x")
    os.symlink(outside / "secret", root / "link")
    with pytest.raises(_Err, match=r"leads outside .*root.*symbolic link.*: rebuild it"):
        _member(root, "link")
    os.symlink(outside, root / "train")  # the code's own subfolder pointing away
    with pytest.raises(_Err, match="leads outside"):
        _member(root, "secret", under="train")
    os.symlink(root / "loop", root / "loop")
    with pytest.raises(_Err, match="rebuild it"):
        _member(root, "loop")


def test_a_symlinked_root_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a").write_text("x")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert _member(tmp_path / "alias", "a") == tmp_path / "alias" / "a"
