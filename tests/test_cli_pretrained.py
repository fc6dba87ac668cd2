"""``convlstm predict/evaluate --pretrained``: a pretrained folder gives what the equivalent
checkpoint gives; ``--checkpoint`` and ``--pretrained`` are exclusive and one is required."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convlstm.checkpoint import load_model
from convlstm.pretrained import save_pretrained
from test_predict import run_command, tiny_checkpoint


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny checkpoint and the same model saved as a pretrained folder."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    model, config = load_model(ckpt)
    folder = save_pretrained(
        model, tmp_path / "tiny-pretrained", model_name="moving_mnist", data=config["data"]
    )
    return ckpt, folder


def _one_line_error(capsys: pytest.CaptureFixture[str], prog: str, *messages: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{prog}: error: " in err, err
    assert all(message in err for message in messages), err


def test_predict_pretrained_equals_the_checkpoint(
    tmp_path: Path, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, folder = sources
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)  # (T, N, H, W) as the published file: 3 sequences
    base = ["predict", "--input", str(tmp_path / "frames.npy"), "--device", "cpu"]
    assert run_command([*base, "--pretrained", str(folder), "--out", str(tmp_path / "p.npy")]) == 0
    assert run_command([*base, "--checkpoint", str(ckpt), "--out", str(tmp_path / "c.npy")]) == 0
    from_pretrained, from_checkpoint = (np.load(tmp_path / n) for n in ("p.npy", "c.npy"))
    assert from_pretrained.shape == (2, 3, 32, 32)  # the trained horizon, the input's layout
    assert np.array_equal(from_pretrained, from_checkpoint)
    capsys.readouterr()


def test_evaluate_pretrained_equals_the_checkpoint(
    tmp_path: Path, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, folder = sources
    base = ["evaluate", "--data", "moving_mnist", "--num-samples", "4", "--device", "cpu"]
    base += ["--gifs", "0"]
    assert run_command([*base, "--pretrained", str(folder), "--out", str(tmp_path / "p")]) == 0
    assert run_command([*base, "--checkpoint", str(ckpt), "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    pretrained, checkpoint = (
        json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("p", "c")
    )
    assert pretrained["checkpoint"] == {"path": str(folder), "model": "moving_mnist"}
    assert checkpoint["checkpoint"] == {"path": str(ckpt), "model": "moving_mnist"}
    assert pretrained["dataset"] == checkpoint["dataset"]
    assert pretrained["dataset"]["num_sequences"] == 4
    assert pretrained["forecasters"] == checkpoint["forecasters"]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_checkpoint_and_pretrained_exclusive_and_required(
    tmp_path: Path,
    sources: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    ckpt, folder = sources
    np.save(tmp_path / "frames.npy", np.zeros((3, 32, 32), np.float32))
    out = str(tmp_path / ("f.npy" if command == "predict" else "report"))
    data = ["--input" if command == "predict" else "--data", str(tmp_path / "frames.npy")]
    argv = [command, *data, "--out", out]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_command([*argv, "--checkpoint", str(ckpt), "--pretrained", str(folder)]) == 2
    _one_line_error(
        capsys, f"convlstm {command}", "--pretrained", "not allowed with", "--checkpoint"
    )
    assert run_command(argv) == 2
    _one_line_error(capsys, f"convlstm {command}", "--checkpoint", "--pretrained", "required")
    assert run_command([*argv, "--pretrained", str(tmp_path / "nowhere")]) == 1
    _one_line_error(capsys, f"convlstm {command}", "nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
