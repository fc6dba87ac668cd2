"""Atomic file and folder writing: all-or-nothing, and no overwrite without the flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from convlstm._atomic import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_write_bytes_and_text(tmp_path: Path) -> None:
    assert atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write_text(tmp_path / "sub" / "b.txt", "é").read_text("utf-8") == "é"
    assert _listing(tmp_path) == ["a.bin", "sub", "sub/b.txt"]


def test_file_permissions_follow_umask(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_no_overwrite_without_flag(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(FileExistsError, match="overwrite"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    atomic_write_text(path, "new", overwrite=True)
    assert path.read_text() == "new"
    assert _listing(tmp_path) == ["a.txt"]


def test_failed_file_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("injected")
    assert _listing(tmp_path) == []


def test_dir_is_renamed_into_place(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.")
        (tmp / "x.txt").write_text("x")
        assert not (tmp_path / "out").exists()
    assert _listing(tmp_path) == ["out", "out/x.txt"]


def test_failed_dir_leaves_nothing_and_keeps_old(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x.txt").write_text("x")
        raise RuntimeError("injected")
    assert _listing(tmp_path) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "x.txt").write_text("x")
        raise RuntimeError("injected")
    assert _listing(tmp_path) == ["out", "out/keep.txt"]


def test_dir_overwrite(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"), atomic_dir(tmp_path / "out"):
        pytest.fail("the body must not run")
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _listing(tmp_path) == ["out", "out/new.txt"]
    (tmp_path / "f").write_text("a file")
    with atomic_dir(tmp_path / "f", overwrite=True) as tmp:
        (tmp / "y").write_text("y")
    assert (tmp_path / "f").is_dir()


def test_refuses_to_replace_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for target in (tmp_path / "work", tmp_path):
        with pytest.raises(ValueError, match="current directory"), atomic_dir(target, True):
            pass
    assert (tmp_path / "work").is_dir()


def test_a_parent_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    for target in (blocker / "a.txt", blocker / "sub" / "a.txt"):
        with pytest.raises(NotADirectoryError, match=r"is a file, not a folder") as error:
            atomic_write_text(target, "x")
        assert str(target) in str(error.value) and str(blocker) in str(error.value)
        with pytest.raises(NotADirectoryError, match=str(blocker)), atomic_dir(target):
            pass
    assert blocker.read_text() == "mine" and _listing(tmp_path) == ["file.txt"]


def test_stale_temporaries_are_recognised() -> None:
    from convlstm._atomic import is_temporary

    assert is_temporary(".last.pt.0123abcd.tmp", "last.pt")
    assert is_temporary(".report.0123abcd.old")
    assert not is_temporary(".last.pt.0123abcd.tmp", "best.pt")
    assert not is_temporary("last.pt") and not is_temporary(".last.pt.xyz.tmp")
