"""Two CPU processes (gloo) under torchrun train the same model as one process on the same
global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convlstm.config import Config, apply_overrides, save_config
from convlstm.distributed import init_distributed
from convlstm.training import train

OVERRIDES = [
    "model.hidden_channels=[4]",
    "data.options.size=32",
    "data.input_len=3",
    "data.horizon=2",
    "data.train_samples=16",
    "data.val_samples=6",
    "optim.batch_size=4",
    "optim.epochs=2",
    "optim.warmup_steps=1",
    "run.progress=false",
    "run.eval_samples=0",
    "run.precision=fp32",
    "run.device=cpu",
    "run.dist_timeout_s=120",
]


def test_single_process_context() -> None:
    context = init_distributed("cpu", 10)
    assert (context.world_size, context.rank, context.is_main, context.distributed) == (
        1,
        0,
        True,
        False,
    )
    assert torch.equal(context.all_reduce(torch.ones(2)), torch.ones(2))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # as the subprocesses (OMP_NUM_THREADS=1)
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    config = apply_overrides(Config(), OVERRIDES)
    path = save_config(config, tmp_path / "config.yaml")
    train(config, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "convlstm.cli",
            "train",
            "--config",
            str(path),
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 8 steps in 2 epochs" in done.stdout
    single = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ddp["step"] == single["step"] == 8
    for key, value in single["model_state"].items():
        torch.testing.assert_close(ddp["model_state"][key], value, rtol=1e-4, atol=1e-5)
    rows = {
        name: [
            json.loads(line)
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]
        for name in ("single", "ddp")
    }
    for one, two in zip(rows["single"], rows["ddp"], strict=True):
        assert two["val_mse_frame"] == pytest.approx(one["val_mse_frame"], rel=1e-4)
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )


def test_a_cuda_device_this_machine_lacks_is_named(monkeypatch) -> None:
    from convlstm.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"run\.device='cuda:7' but CUDA is not available here"):
        resolve_device("cuda:7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    message = r"run.device='cuda:7' \(local rank 0\): this machine has 2 CUDA device\(s\)"
    with pytest.raises(RuntimeError, match=message):
        resolve_device("cuda:7")
    with pytest.raises(RuntimeError, match=r"run.device='cuda' \(local rank 3\): this machine"):
        resolve_device("cuda", local_rank=3)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)


def test_bad_torchrun_variables_are_named(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE must be a whole number >= 0 .*'two'"):
        init_distributed("cpu", 10)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(RuntimeError, match=r"RANK=2 must be in \[0, WORLD_SIZE=2\)"):
        init_distributed("cpu", 10)
