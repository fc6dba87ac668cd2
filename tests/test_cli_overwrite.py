"""``--overwrite`` replaces only an output of the command's own kind (issue 19): never a training
run, a folder of the user's files, an unrelated file, or a symbolic link to any of these."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from convlstm._outputs import REPORT_MARKER, OutputConflict, check_output, describe
from convlstm.cli import main
from convlstm.evaluation import evaluate_checkpoint
from test_predict import tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every path under ``root`` (links not followed): its kind and content or link target."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("dir", "")
            else:
                found[key] = ("file", path.read_bytes())
    return found


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def victims(tmp_path: Path, ckpt: Path) -> dict[str, Path]:
    """A training run, a folder of user files, a file, and a symbolic link to each."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(ckpt.read_bytes())
    (run / "last.pt").write_bytes(ckpt.read_bytes())
    (run / "config.yaml").write_text("model: {}\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (mine / "photo.png").write_bytes(b"\x89PNG not really")
    file = tmp_path / "data.npy"
    np.save(file, np.arange(5.0))  # a .npy of the user's: not a forecast that predict wrote
    paper = tmp_path / "paper.txt"
    paper.write_text("draft")
    found = {"run": run, "mine": mine, "npy": file, "file": paper}
    for name, target in list(found.items()):
        link = tmp_path / f"link-to-{name}"
        link.symlink_to(target, target_is_directory=target.is_dir())
        found[f"link-to-{name}"] = link
    return found


def _commands(ckpt: Path, frames: Path, out: Path) -> dict[str, list[str]]:
    common = ["--checkpoint", str(ckpt)]
    return {
        "evaluate": ["evaluate", *common, "--data", "moving_mnist", "--num-samples", "2",
                     "--gifs", "0", "--device", "cpu", "--out", str(out)],
        "predict --out": ["predict", *common, "--input", str(frames), "--device", "cpu",
                          "--out", str(out)],
        "predict --png": ["predict", *common, "--input", str(frames), "--device", "cpu",
                          "--out", str(frames.parent / "forecast-new.npy"), "--png", str(out)],
        "predict --gif": ["predict", *common, "--input", str(frames), "--device", "cpu",
                          "--out", str(frames.parent / "forecast-new.npy"), "--gif", str(out)],
        "export": ["export", *common, "--formats", "torchscript", "--out", str(out)],
    }  # fmt: skip


@pytest.mark.parametrize(
    "command", ["evaluate", "predict --out", "predict --png", "predict --gif", "export"]
)
def test_overwrite_never_replaces_what_the_command_did_not_write(
    tmp_path: Path,
    ckpt: Path,
    victims: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    command,
) -> None:
    frames = tmp_path / "inputs" / "frames.npy"
    frames.parent.mkdir()
    np.save(frames, np.random.default_rng(0).random((1, 3, 1, 32, 32), dtype=np.float32))
    before = snapshot(tmp_path)
    for name, target in victims.items():
        if command == "predict --out" and name == "npy":
            continue  # an array file is what predict --out writes: replaceable (tested below)
        argv = _commands(ckpt, frames, target)[command]
        capsys.readouterr()
        assert main([*argv, "--overwrite"]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"convlstm {command.split()[0]}: error: ")
        assert f"{target} is " in err and "refusing to replace it" in err, err
        what = {"run": "a training run folder", "mine": "a folder holding notes.txt, photo.png"}
        if name.startswith("link-to-"):
            assert "a symbolic link to" in err, err
        elif name in what:
            assert what[name] in err, err
        assert main(argv) == 2  # without --overwrite: exists
        assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert snapshot(tmp_path) == before  # nothing touched, nothing added


def test_evaluate_overwrite_of_its_training_run_is_refused(
    tmp_path: Path, ckpt: Path, victims: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported case: ``evaluate --checkpoint runs/x/best.pt --out runs/x --overwrite``
    deleted the training run."""
    run = victims["run"]
    before = snapshot(run)
    argv = ["evaluate", "--checkpoint", str(run / "best.pt"), "--data", "moving_mnist",
            "--num-samples", "2", "--gifs", "0", "--device", "cpu", "--out", str(run),
            "--overwrite"]  # fmt: skip
    assert main(argv) == 2
    assert "is a training run folder (it holds config.yaml, best.pt, last.pt" in (
        capsys.readouterr().err
    )
    assert snapshot(run) == before
    with pytest.raises(OutputConflict, match=r"out_dir .* training run folder"):
        evaluate_checkpoint(run / "best.pt", "moving_mnist", run, overwrite=True, num_samples=2)
    assert snapshot(run) == before


def test_overwrite_replaces_the_commands_own_outputs(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames.npy"
    np.save(frames, np.random.default_rng(0).random((1, 3, 1, 32, 32), dtype=np.float32))
    outputs = {
        "evaluate": tmp_path / "report",
        "predict --out": tmp_path / "forecast.npy",
        "predict --png": tmp_path / "pngs",
        "predict --gif": tmp_path / "forecast.gif",
        "export": tmp_path / "exported",
    }
    for command, out in outputs.items():
        argv = _commands(ckpt, frames, out)[command]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript tracing warnings
            assert main(argv) == 0, capsys.readouterr().err
            (tmp_path / "forecast-new.npy").unlink(missing_ok=True)
            first = snapshot(tmp_path)[out.name]
            os.utime(out, (0, 0))  # the replacement is a new path, not the old one kept
            assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
            (tmp_path / "forecast-new.npy").unlink(missing_ok=True)
        assert snapshot(tmp_path)[out.name] == first and out.stat().st_mtime > 0
    assert (outputs["evaluate"] / REPORT_MARKER).is_file()
    assert np.load(outputs["predict --out"]).shape == (1, 2, 1, 32, 32)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary siblings


def test_reports_written_before_the_marker_are_still_replaceable(tmp_path: Path) -> None:
    legacy = tmp_path / "report"
    (legacy / "curves").mkdir(parents=True)
    for name in ("metrics.json", "summary.md", "summary.html"):
        (legacy / name).write_text("{}")
    check_output(legacy, "report", True)  # no error
    (legacy / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflict, match=r"a folder holding curves, metrics.json"):
        check_output(legacy, "report", True, "--out", "--overwrite")
    with pytest.raises(FileExistsError, match="pass --overwrite to replace it"):
        check_output(legacy, "report", False, "--out", "--overwrite")


def test_describe_names_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "f.bin").write_bytes(b"1234")
    (tmp_path / "l").symlink_to(tmp_path / "f.bin")
    assert describe(tmp_path / "empty") == "an empty folder"
    assert describe(tmp_path / "f.bin") == "a file of 4 bytes"
    assert describe(tmp_path / "l") == f"a symbolic link to {tmp_path / 'f.bin'}"
    with pytest.raises(OutputConflict, match="an empty folder"):
        check_output(tmp_path / "empty", "pngs", True)


def test_outputs_naming_an_input_are_refused(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames.npy"
    np.save(frames, np.random.default_rng(0).random((1, 3, 1, 32, 32), dtype=np.float32))
    before = snapshot(tmp_path)
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(frames), "--device", "cpu",
            "--out", str(frames), "--overwrite"]  # fmt: skip
    assert main(argv) == 2
    assert f"--out {frames} is the --input file: refusing to replace it" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
