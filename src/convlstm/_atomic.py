"""Atomic writing of files and folders: readers see either the old content or the new, never a
half-written one, and an existing path is only replaced when the caller says so.

Files are written to a hidden temporary sibling (``.NAME.XXXXXXXX.tmp``), flushed to disk and
renamed into place. Folders are built in a hidden temporary sibling directory and renamed into
place when the ``with`` block ends without an error; on an error the temporary folder is removed
and the target is left as it was.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_text(root / "a.txt", "hello").read_text()
'hello'
>>> with atomic_dir(root / "report") as tmp:
...     _ = (tmp / "x.txt").write_text("x")
>>> sorted(p.name for p in (root / "report").iterdir())
['x.txt']
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_parent",
    "is_temporary",
]

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.(?:tmp|old)")


def is_temporary(path: str | os.PathLike[str], name: str | None = None) -> bool:
    """Whether ``path`` is a hidden temporary sibling written by this module (what a crash
    leaves behind), optionally one for the target ``name``.

    >>> is_temporary("run/.config.yaml.1a2b3c4d.tmp", "config.yaml"), is_temporary("a.tmp")
    (True, False)
    """
    match = _TEMPORARY.fullmatch(Path(path).name)
    return match is not None and (name is None or match["name"] == name)


def check_parent(path: str | os.PathLike[str]) -> None:
    """Raise ``NotADirectoryError`` naming ``path`` and the culprit if one of its parent folders
    exists as something other than a folder (such as a regular file), so that ``path`` cannot be
    created; missing parents are fine (they are created).

    >>> import tempfile, pathlib
    >>> blocker = pathlib.Path(tempfile.mkdtemp()) / "file.txt"
    >>> _ = blocker.write_text("x")
    >>> check_parent(blocker / "out.npy")
    Traceback (most recent call last):
    ...
    NotADirectoryError: cannot write .../file.txt/out.npy: .../file.txt is a file, not a folder
    """
    path = Path(path)
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                kind = "a file" if parent.is_file() else "something else"
                raise NotADirectoryError(f"cannot write {path}: {parent} is {kind}, not a folder")
            return


def _sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to ``path``, e.g. ``.report.3f9a1c2e.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{tag}")


def _check_target(path: Path, overwrite: bool) -> Path:
    """Create ``path``'s parent folders and refuse an existing ``path`` unless ``overwrite``."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise ValueError(f"cannot write to {str(path)!r}: it names no file or folder")
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
        cwd = Path.cwd().resolve()
        resolved = path.resolve()
        if resolved == cwd or resolved in cwd.parents:
            raise ValueError(f"refusing to replace {path}: it contains the current directory")
    check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree, if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _install(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``path``; an existing ``path`` is moved aside first and only
    deleted once the new one is in place (and put back if the rename fails)."""
    if not os.path.lexists(path):
        if tmp.is_dir():
            os.rename(tmp, path)
            return
        try:  # a hard link fails if ``path`` appeared meanwhile: no silent overwrite
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(
                f"{path} already exists (pass overwrite=True to replace it)"
            ) from None
        except OSError:  # file systems without hard links
            os.replace(tmp, path)
        else:
            tmp.unlink()
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    if tmp.is_file() and not path.is_dir():
        os.replace(tmp, path)
        return
    old = _sibling(path, "old")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary binary file that becomes ``path`` when the block ends without an error.

    Suits writers that want a file object (``np.save``, ``torch.save``, Pillow with ``format=``).

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "b.bin"
    >>> with atomic_file(target) as f:
    ...     _ = f.write(b"abc")
    >>> target.read_bytes()
    b'abc'
    """
    target = _check_target(Path(path), overwrite)
    tmp = _sibling(target, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _install(tmp, target, overwrite)
    finally:
        _remove(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false.
    """
    with atomic_file(path, overwrite=overwrite) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, overwrite: bool = False, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically (``encoding``, default UTF-8) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite=overwrite)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` when the block ends without error.

    Fill the yielded folder inside the ``with`` block. ``FileExistsError`` is raised on entry
    (before any work) if ``path`` exists and ``overwrite`` is false. With ``overwrite=True`` an
    existing ``path`` is moved aside, the new folder renamed in, and only then the old one deleted.
    On an error inside the block the temporary folder is deleted and ``path`` is untouched.
    """
    target = _check_target(Path(path), overwrite)
    tmp = _sibling(target, "tmp")
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        _install(tmp, target, overwrite)
    finally:
        _remove(tmp)
