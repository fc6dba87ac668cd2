"""Two gloo CPU processes under ``torchrun``: a rank that dies (SIGKILL) makes the other stop with
a clear error long before the collective timeout (no silent hang), and only rank 0 writes files.

A rank that hangs instead of dying is bounded by ``run.dist_timeout_s`` plus torchrun's 30 s grace;
that case takes over a minute and is in ``scripts/soak.py distributed``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from convlstm.checkpoint import load_checkpoint
from test_reliability_support import TINY, fault_env, log_lines, steps_done

TIMEOUT_S = 300  # run.dist_timeout_s: the survivor must stop far sooner than this


@pytest.mark.slow
def test_a_dead_rank_stops_the_other_quickly_and_only_rank_0_writes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    fault = {"log": str(log), "kill": {"at": "step", "step": 3, "rank": 1}}
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "convlstm.cli",
        "train",
        "--out",
        str(out),
        *TINY,
        "optim.epochs=4",
        f"run.dist_timeout_s={TIMEOUT_S}",
    ]
    started = time.monotonic()
    done = subprocess.run(
        argv,
        env=fault_env(tmp_path, fault),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S - 60,  # a hang until the collective timeout fails here
    )
    seconds = time.monotonic() - started
    assert done.returncode != 0
    assert "killed before step 4" in log_lines(log, 1)
    assert seconds < 120, seconds  # start-up included; the survivor itself stops within seconds
    # the survivor's own report: one line naming the lost connection, no traceback from it
    ours = [line for line in done.stderr.splitlines() if line.startswith("convlstm train")]
    assert len(ours) == 1, done.stderr[-3000:]
    assert ours[0].startswith("convlstm train: error: "), ours
    assert any(word in ours[0] for word in ("Connection", "connection", "peer")), ours
    assert steps_done(log, 0) <= 4  # it did not train on alone
    # rank 1 went through an epoch end (steps 1-2) and the start, and wrote nothing at all
    assert steps_done(log, 1) == 3
    assert [line for line in log_lines(log, 1) if line.startswith("wrote")] == []
    written = {Path(line.split(" ", 1)[1]).name for line in log_lines(log, 0) if "wrote" in line}
    assert written == {"config.yaml", "best.pt", "last.pt", "metrics.jsonl"}
    assert sorted(p.name for p in out.iterdir()) == sorted(written)
    assert load_checkpoint(out / "last.pt")["step"] == 2  # the complete epoch-1 checkpoint
