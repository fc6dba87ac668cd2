"""The run folder: what may be written where, ``--resume`` / ``--overwrite`` rules, leftovers of
interrupted writes, and the metrics log.

Only a folder that holds a training run (one of :data:`RUN_MARKERS`, or only the hidden temporary
files that a crash left while writing them) is ever replaced, and only with ``overwrite``.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path
from typing import Any

from convlstm._atomic import atomic_write_text, check_parent, is_temporary
from convlstm.config import Config, save_config

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "RUN_MARKERS",
    "append_row",
    "check_out_dir",
    "leftovers",
    "prepare",
    "resume_command",
    "tidy",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, "last.pt", "best.pt")
"""Files whose presence marks a folder as a training run."""


def resume_command(out_dir: str | Path, world_size: int = 1) -> str:
    """The shell command that continues the run in ``out_dir`` (under ``torchrun`` with as many
    processes when ``world_size`` > 1).

    >>> resume_command("runs/my run")
    "convlstm train --out 'runs/my run' --resume"
    """
    program = (
        f"torchrun --nproc_per_node={world_size} -m convlstm.cli" if world_size > 1 else "convlstm"
    )
    return f"{program} train --out {shlex.quote(str(out_dir))} --resume"


def leftovers(out_dir: Path) -> list[Path]:
    """Hidden temporary files and folders that a crash during one of the run's atomic writes
    left in ``out_dir`` (``.last.pt.1a2b3c4d.tmp``, ``.report.1a2b3c4d.tmp``, ...)."""
    if not out_dir.is_dir():
        return []
    names = (*RUN_MARKERS, "report")
    return [
        entry for entry in out_dir.iterdir() if any(is_temporary(entry, name) for name in names)
    ]


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless asked; read-only (every rank runs it).

    Temporary files that a crash left behind while writing the run's files count as the run's
    (a folder that holds nothing else is treated as empty; they are removed when it starts).

    Raises:
        FileExistsError: ``out_dir`` is a file, or holds a run (without ``resume`` or
            ``overwrite``), or is not a run folder (with ``overwrite``).
        FileNotFoundError: ``resume`` without a ``last.pt`` to continue from.
    """
    check_parent(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not a run folder")
    if resume:
        if not (out_dir / "last.pt").is_file():
            raise FileNotFoundError(
                f"cannot resume: {out_dir / 'last.pt'} does not exist (the run saved no "
                "checkpoint yet; start it again with --overwrite)"
            )
        return
    stale = leftovers(out_dir)
    if not out_dir.exists() or all(entry in stale for entry in out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"output directory {out_dir} already exists; pass --resume to continue that run or "
            "--overwrite to replace it"
        )
    if not (stale or any((out_dir / name).exists() for name in RUN_MARKERS)):
        raise FileExistsError(
            f"refusing to overwrite {out_dir}: it does not look like a training run folder "
            f"(none of {', '.join(RUN_MARKERS)} in it)"
        )
    here = Path.cwd().resolve()
    if out_dir.resolve() == here or out_dir.resolve() in here.parents:
        raise FileExistsError(f"refusing to overwrite {out_dir}: it contains the current directory")


def prepare(out_dir: Path, config: Config, *, epoch: int, replace: bool) -> None:
    """Make ``out_dir`` ready for training from ``epoch`` (rank 0 only, after
    :func:`check_out_dir`): delete the old run first if ``replace``, tidy what an interrupted run
    left (:func:`tidy`) and write the resolved configuration."""
    if replace and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tidy(out_dir, epoch)
    save_config(config, out_dir / CONFIG_FILE, overwrite=True)


def tidy(out_dir: Path, epoch: int) -> None:
    """Remove temporary files of interrupted writes, and the metrics rows (and any partial line)
    past ``epoch``, the epoch of the checkpoint a run resumes from."""
    for stale in leftovers(out_dir):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    log = out_dir / METRICS_FILE
    if not log.exists():
        return
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if line.endswith("\n") and isinstance(row, dict) and row.get("epoch", math.inf) <= epoch:
            kept.append(line)
    if kept != lines:
        atomic_write_text(log, "".join(kept), overwrite=True)


def append_row(out_dir: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the metrics log as one line of strict JSON (NaN and infinities, which
    JSON lacks, become ``null``). A resumed run drops the rows past its checkpoint (:func:`tidy`),
    so a row may be written before the epoch's checkpoint."""
    strict = {key: _finite_or_none(value) for key, value in row.items()}
    with open(out_dir / METRICS_FILE, "a", encoding="utf-8") as log:
        log.write(json.dumps(strict, allow_nan=False) + "\n")


def _finite_or_none(value: Any) -> Any:
    """``None`` for NaN and infinities (invalid in JSON), other values as they are."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
