"""The ``convlstm`` command line: errors are one line with exit status 2 (usage) or 1 (failure)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convlstm.cli import build_parser, main

TINY = [
    "model.hidden_channels=[4]",
    "data.options.size=32",
    "data.input_len=3",
    "data.horizon=2",
    "data.train_samples=8",
    "data.val_samples=4",
    "optim.batch_size=4",
    "optim.epochs=1",
    "optim.warmup_steps=1",
    "run.progress=false",
    "run.eval_samples=0",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["train", *argv])
    err = capsys.readouterr().err.strip()
    if code:
        assert len(err.splitlines()) == 1, err  # one line, no traceback
    return code, err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--config", "nope.toml"], 2, "no such file, and not a bundled configuration"),
        (["model.name=unet"], 2, "valid models: moving_mnist, moving_mnist_large, radar"),
        (["data.name=cifar"], 2, "valid datasets: .*moving_mnist"),
        (["optim.lr=-1"], 2, "optim.lr must be > 0"),
        (["optim.learning_rate=1"], 2, "unknown key optim.learning_rate"),
        (["optim.batch_size=big"], 2, "optim.batch_size must be int"),
        (["model.patch_size=3"], 2, "model.patch_size=3 must divide the frame size"),
        (["--resume"], 2, "--resume needs --out"),
    ],
)
def test_usage_errors(capsys, tmp_path: Path, args, code, message) -> None:
    got, err = run(capsys, "--out", str(tmp_path / "run"), *TINY, *args)
    if "--resume" in args:
        got, err = run(capsys, *args)
    assert got == code
    assert err.startswith("convlstm train: error: ")
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()  # nothing written before the configuration is valid


def test_existing_output_and_bad_checkpoints(capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run(capsys, "--out", str(out), *TINY)
    assert code == 2 and "already exists; pass --resume" in err
    assert (out / "notes.txt").read_text() == "mine"

    code, err = run(capsys, "--out", str(out), "--resume")
    assert code == 2 and "config.yaml does not exist" in err
    assert run(capsys, "--out", str(out), "--resume", "--overwrite")[0] == 2

    assert run(capsys, "--out", str(tmp_path / "good"), *TINY)[0] == 0
    code, err = run(capsys, "--out", str(tmp_path / "good"), "--overwrite", "--resume")
    assert code == 2
    (tmp_path / "good" / "last.pt").write_bytes(b"\x00garbage")
    code, err = run(capsys, "--out", str(tmp_path / "good"), "--resume")
    assert code == 1 and "unreadable (truncated or corrupt?)" in err
    (tmp_path / "good" / "last.pt").unlink()
    code, err = run(capsys, "--out", str(tmp_path / "good"), "--resume")
    assert code == 1 and "cannot resume" in err


def test_train_then_report(capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [*TINY[:-1], "run.eval_samples=4", "run.eval_batch_size=2"]
    assert main(["train", "--out", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps" in printed and "persistence" in printed and "zeros" in printed
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["forecasters"]) == {"model", "persistence", "zeros"}
    assert metrics["dataset"]["num_sequences"] == 4
    # --resume of a finished run trains no further and writes the report again
    assert main(["train", "--out", str(out), "--resume", "optim.epochs=2"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out


def test_subcommands_are_registered() -> None:
    parser = build_parser()
    for command in ("train", "evaluate", "predict", "export"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args([command, "--help"])
        assert done.value.code == 0


def test_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "convlstm.cli", "train", "--config", "missing.toml"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "convlstm train: error: --config missing.toml: no such file, and not a bundled "
        "configuration (moving_mnist, moving_mnist_large, radar)"
    ]


def test_non_finite_overrides_are_usage_errors(capsys, tmp_path: Path) -> None:
    for item in ("optim.lr=inf", "run.dist_timeout_s=nan", "optim.weight_decay=-inf"):
        code, err = run(capsys, "--out", str(tmp_path / "run"), *TINY, item)
        field = item.split("=")[0]
        assert code == 2 and f"{field} must be a finite number, got" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_failed_collective_under_torchrun_names_the_rank_and_cause(
    capsys, monkeypatch, rank
) -> None:
    from convlstm.cli import train as cli

    def lost(args):
        raise RuntimeError(
            "[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
            "[127.0.0.1]:26839: Connection reset by peer. This is typically caused by a remote "
            "worker hanging or bugs in the application. GLHF!\nmore"
        )

    monkeypatch.setattr(cli, "_train_command", lost)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert main(["train"]) == 1
    err = capsys.readouterr().err.strip()
    prefix = "convlstm train" if rank == "0" else "convlstm train [rank 1]"
    assert err == (
        f"{prefix}: error: rank {rank} of 2 lost contact with the other processes of the run "
        "(Read error [127.0.0.1]:26839: Connection reset by peer); another rank probably died "
        "or hung, see its own error"
    ), err
    # an ordinary error under torchrun is reported as it is
    monkeypatch.setattr(cli, "_train_command", lambda args: (_ for _ in ()).throw(OSError("x")))
    assert main(["train"]) == 1
    assert capsys.readouterr().err.strip() == f"{prefix}: error: x"
