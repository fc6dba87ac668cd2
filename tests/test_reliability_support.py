"""Shared helpers of the fault-injection tests (``test_reliability_*.py``); no tests here.

Faults are injected into real ``python -m convlstm.cli train`` processes without test-only code
in the package: :func:`fault_env` writes a ``sitecustomize.py`` into a folder put first on
``PYTHONPATH``, which Python imports at start-up. Driven by the ``CONVLSTM_FAULT`` variable (JSON),
it wraps a few functions of the package:

* ``convlstm.training.loop.Trainer._step``: logs ``step N`` after each optimiser step (to
  ``<log>.<rank>``) and can SIGKILL the process before step ``N`` (``{"at": "step"}``);
* ``convlstm._atomic.atomic_file`` (also as imported by ``convlstm.checkpoint``): can write half
  of a file's bytes to its temporary file, fsync it and SIGKILL the process there
  (``{"at": "save-mid"}``: a crash in the middle of a checkpoint write);
* ``convlstm._atomic._install``: logs every file put in place, and can SIGKILL the process just
  before (``"save-before-install"``: the complete temporary file is on disk, not yet renamed) or
  just after (``"save-after-install"``) the ``nth`` install of a file named ``name``;
* the ``open`` used by ``convlstm.training.rundir`` (``metrics.jsonl``): logs writes.

``{"step_delay": S}`` sleeps ``S`` seconds after every step (a slower run, so that signals sent
from outside land mid-run). ``{"rank": R}`` limits a kill to one rank under ``torchrun``; ``{"hang": true}`` sleeps forever
instead of dying (a stuck rank).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

#: A model and data small enough that one epoch (2 steps of 4 sequences) takes ~0.1 s on a CPU.
TINY = [
    "model.hidden_channels=[4]",
    "model.patch_size=4",
    "data.options.size=32",
    "data.input_len=3",
    "data.horizon=2",
    "data.train_samples=8",
    "data.val_samples=4",
    "optim.batch_size=4",
    "optim.warmup_steps=1",
    "run.progress=false",
    "run.eval_samples=0",
    "run.precision=fp32",
    "run.device=cpu",
    "run.max_minutes=none",
    "run.seed=3",
]
STEPS_PER_EPOCH = 2

HOOK = r"""
import json, os, signal, sys, time

_spec = os.environ.get("CONVLSTM_FAULT")
if _spec:
    _spec = json.loads(_spec)
    import contextlib, io
    import convlstm._atomic as _atomic
    import convlstm.checkpoint as _checkpoint
    import convlstm.training.loop as _loop
    import convlstm.training.rundir as _rundir

    _rank = int(os.environ.get("RANK", "0"))
    _kill = _spec.get("kill") or {}
    _acting = bool(_kill) and _kill.get("rank", _rank) == _rank
    _counts = {}

    def _log(line):
        path = _spec.get("log")
        if path:
            with open(f"{path}.{_rank}", "a", encoding="utf-8") as log:
                log.write(line + "\n")

    def _die(what):
        _log(f"killed {what}")
        if _kill.get("hang"):
            while True:
                time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)

    def _matches(at, name):
        if not _acting or _kill.get("at") != at or name != _kill.get("name"):
            return False
        key = (at, name)
        _counts[key] = _counts.get(key, 0) + 1
        return _counts[key] == _kill.get("nth", 1)

    _real_step = _loop.Trainer._step

    def _step(self, inputs, targets):
        if _acting and _kill.get("at") == "step" and self.state.step == _kill["step"]:
            _die(f"before step {self.state.step + 1}")
        value = _real_step(self, inputs, targets)
        _log(f"step {self.state.step}")
        if _spec.get("step_delay"):
            time.sleep(_spec["step_delay"])
        return value

    _loop.Trainer._step = _step

    _real_atomic_file = _atomic.atomic_file

    @contextlib.contextmanager
    def _atomic_file(path, overwrite=False):
        name = os.path.basename(str(path))
        with _real_atomic_file(path, overwrite) as handle:
            if not _matches("save-mid", name):
                yield handle
                return
            buffer = io.BytesIO()  # the writer's bytes, of which only half reach the disk
            yield buffer
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            _die(f"in the middle of writing {name} ({len(data) // 2} of {len(data)} bytes)")

    _atomic.atomic_file = _atomic_file
    _checkpoint.atomic_file = _atomic_file

    _real_install = _atomic._install

    def _install(tmp, path, overwrite):
        name = os.path.basename(str(path))
        if _matches("save-before-install", name):
            _die(f"before installing {name}")
        _real_install(tmp, path, overwrite)
        _log(f"wrote {path}")
        if _matches("save-after-install", name):
            _die(f"after installing {name}")

    _atomic._install = _install

    def _open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            _log(f"wrote {file}")
        return open(file, mode, *args, **kwargs)

    _rundir.open = _open
"""


def fault_env(folder: Path, fault: dict | None = None, **extra: str) -> dict[str, str]:
    """Environment for a subprocess with the fault hook installed (see the module docstring)."""
    import json

    hooks = folder / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOK)
    path = [str(hooks), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    if fault is not None:
        env["CONVLSTM_FAULT"] = json.dumps(fault)
    return env


def cli(*args: str) -> list[str]:
    """The command line ``python -m convlstm.cli ARGS``."""
    return [sys.executable, "-m", "convlstm.cli", *args]


def start(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def log_lines(log: Path, rank: int = 0) -> list[str]:
    path = Path(f"{log}.{rank}")
    return path.read_text().splitlines() if path.exists() else []


def steps_done(log: Path, rank: int = 0) -> int:
    """The last optimiser step a hooked process logged (0 if none)."""
    steps = [
        int(line.split()[1])
        for line in log_lines(log, rank)
        if line.startswith("step ") and line.split()[1:2] != [] and line.split()[1].isdigit()
    ]  # (a line being written while it is read may be incomplete)
    return max(steps, default=0)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rss_mb() -> float:
    """Resident set size of this process in MiB (``VmRSS`` of ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
