"""What an ``overwrite`` may replace: only an output of the same kind that convlstm wrote.

A command's ``--overwrite`` (and :func:`convlstm.evaluation.evaluate_checkpoint`'s
``overwrite=True``) replaces an existing path only when it is what the command itself writes:

========== ================================================================================
kind       replaceable when the path is
========== ================================================================================
report     a folder holding the marker file :data:`REPORT_MARKER` (written into every report
           folder by :func:`~convlstm.evaluation.evaluate_checkpoint`), or only report files
           (``metrics.json``, ``summary.md``, ...: a report written before the marker existed)
export     a folder holding ``export.json`` and only the files ``convlstm export`` writes
pngs       a folder holding only ``sequence_NNNN_lead_KK.png`` files (``convlstm predict --png``)
forecast   a regular ``.npy`` file or ``.npz`` archive (``convlstm predict --out``)
gif        a regular GIF file (``convlstm predict --gif``)
========== ================================================================================

Anything else -- a training run, a folder of other files, an unrelated file, a symbolic link
(to anything) -- raises :class:`OutputConflict` (a ``FileExistsError``) naming what is there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["REPORT_MARKER", "OutputConflict", "check_output", "describe"]

REPORT_MARKER = ".convlstm-report"
_REPORT_ENTRIES = {"metrics.json", "summary.md", "summary.html", "curves", "samples", REPORT_MARKER}
_EXPORT_ENTRIES = {"export.json", "model.torchscript.pt", "model.onnx", "model.onnx.data"}
_PNG = re.compile(r"sequence_\d{4,}_lead_\d{2,}\.png")
_RUN_FILES = ("config.yaml", "best.pt", "last.pt", "metrics.jsonl")
_WHAT = {
    "report": "a report folder written by convlstm evaluate",
    "export": "a folder written by convlstm export",
    "pngs": "a folder of forecast PNGs written by convlstm predict --png",
    "forecast": "a forecast .npy/.npz file",
    "gif": "a GIF file",
}


class OutputConflict(FileExistsError):
    """An existing path that an ``overwrite`` must not replace (see the module docstring)."""


def _names(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def describe(path: str | os.PathLike[str]) -> str:
    """What is at ``path``, in words, for error messages.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "notes.txt").write_text("mine")
    >>> describe(folder)
    'a folder holding notes.txt'
    """
    path = Path(path)
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)}"
    if path.is_dir():
        run = [name for name in _RUN_FILES if (path / name).exists()]
        if run:
            return f"a training run folder (it holds {', '.join(run)})"
        if not any(path.iterdir()):
            return "an empty folder"
        return f"a folder holding {_names(path)}"
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes"
    return "something that is neither a file nor a folder"


def _is_kind(path: Path, kind: str) -> bool:
    """Whether the existing, non-link ``path`` is an output of ``kind``."""
    if kind in ("report", "export", "pngs"):
        if not path.is_dir():
            return False
        names = {p.name for p in path.iterdir()}
        if kind == "report":
            return REPORT_MARKER in names or (
                {"metrics.json", "summary.md"} <= names and names <= _REPORT_ENTRIES
            )
        if kind == "export":
            return "export.json" in names and names <= _EXPORT_ENTRIES
        return bool(names) and all(_PNG.fullmatch(name) for name in names)
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(6)
    if kind == "gif":
        return head.startswith(b"GIF8")
    if kind == "forecast":
        return (path.suffix == ".npy" and head == b"\x93NUMPY") or (
            path.suffix == ".npz" and head.startswith(b"PK\x03\x04")
        )
    raise ValueError(f"kind must be one of {', '.join(_WHAT)}, got {kind!r}")


def check_output(
    path: str | os.PathLike[str] | None,
    kind: str,
    overwrite: bool,
    option: str = "out",
    flag: str = "overwrite=True",
) -> None:
    """Raise before any work unless ``path`` may be written: it does not exist, or ``overwrite``
    is set and it is an output of ``kind`` (see the module docstring). ``option`` and ``flag``
    name the argument and the overwrite switch in messages (``--out``, ``--overwrite`` on the
    command line).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OutputConflict: ``path`` exists and is not an output of ``kind``.
    """
    if path is None or not os.path.lexists(path):
        return
    path = Path(path)
    if kind not in _WHAT:
        raise ValueError(f"kind must be one of {', '.join(_WHAT)}, got {kind!r}")
    if not overwrite:
        raise FileExistsError(f"{option} {path} already exists (pass {flag} to replace it)")
    if path.is_symlink() or not _is_kind(path, kind):
        raise OutputConflict(
            f"{option} {path} is {describe(path)}, not {_WHAT[kind]}: refusing to replace it "
            f"(choose another {option})"
        )
