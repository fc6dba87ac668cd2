"""The command line's argument rules and input checks (issue 19) and its layout (issue 20):
options and overrides in any order, negative numbers as values, non-finite input refused,
one ``--layout`` read the same way by ``predict`` and ``evaluate``, no progress bars off a
terminal, the moved names still importable (deprecated) and no matplotlib on import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from convlstm.cli import main
from test_cli import TINY
from test_predict import tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    if code:
        assert captured.err.count("\n") == 1, captured.err  # one line, no traceback
    return code, captured.out, captured.err.strip()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def test_options_and_overrides_in_any_order(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    first, rest = TINY[:5], TINY[5:]
    code, _, err = run(
        capsys, "train", "run.device=cpu", *first, "--out", str(out), "optim.epochs=1", *rest
    )
    assert code == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run"]["device"] == "cpu" and saved["optim"]["epochs"] == 1
    assert saved["data"]["input_len"] == 3 and saved["model"]["hidden_channels"] == [4]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "optim.epochs=1", "bogus"], "train: error: 'bogus' is neither an option nor"),
        (["train", "--bogus", "optim.epochs=1"], "train: error: unrecognized option '--bogus'"),
        (["train", "optim.epochs"], "'optim.epochs' is neither an option nor an override"),
        (["train", "=1"], "'=1' is neither an option nor an override section.key=value"),
        (["evaluate", "--checkpoint", "c.pt", "--data", "moving_mnist", "--out", "r",
          "optim.lr=1"], "evaluate: error: unrecognized argument 'optim.lr=1'"),
        (["predict", "--checkpoint", "c.pt", "--input", "x.npy", "--out", "f.npy", "--layout",
          "XYZ"], "predict: error: argument --layout: invalid choice: 'XYZ'"),
    ],
)  # fmt: skip
def test_bad_tokens_are_named_in_one_line(tmp_path: Path, capsys, argv, message) -> None:
    out = tmp_path / "run"
    if argv[0] == "train":
        argv = [*argv, "--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.startswith("convlstm "), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_negative_and_custom_thresholds_parse(tmp_path: Path, ckpt: Path, capsys) -> None:
    base = ["evaluate", "--checkpoint", str(ckpt), "--data", "moving_mnist", "--device", "cpu",
            "--num-samples", "2", "--gifs", "0"]  # fmt: skip
    for n, thresholds in enumerate((["--thresholds", "-0.3,2"], ["--thresholds=-0.3,2"])):
        out = tmp_path / f"r{n}"
        code, _, err = run(capsys, *base, *thresholds, "--out", str(out))
        assert code == 0, err
        settings = json.loads((out / "metrics.json").read_text())["settings"]
        assert settings["thresholds"] == [-0.3, 2.0]
    code, _, err = run(capsys, *base, "--thresholds", "-x", "--out", str(tmp_path / "bad"))
    assert code == 2 and "--thresholds" in err, err


def test_non_finite_inputs_are_refused(tmp_path: Path, ckpt: Path, capsys) -> None:
    frames = np.random.default_rng(0).random((2, 5, 32, 32), dtype=np.float32)
    frames[0, 1, 2, 3], frames[1, 4, 0, 0], frames[1, 0, 5, 5] = np.nan, np.inf, -np.inf
    path = tmp_path / "frames.npy"
    np.save(path, frames)
    code, _, err = run(capsys, "predict", "--checkpoint", str(ckpt), "--input", str(path),
                       "--device", "cpu", "--out", str(tmp_path / "f.npy"))  # fmt: skip
    assert code == 1 and f"{path}: 3 non-finite value(s)" in err, err
    np.savez(tmp_path / "frames.npz", frames=frames)
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(ckpt), "--data",
                       str(tmp_path / "frames.npz"), "--device", "cpu", "--out",
                       str(tmp_path / "report"))  # fmt: skip
    assert code == 1 and "frames.npz: 3 non-finite value(s)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.npy", "frames.npz"]


def test_predict_warns_about_fewer_frames_than_trained(tmp_path: Path, ckpt: Path, capsys) -> None:
    path = tmp_path / "short.npy"
    np.save(path, np.random.default_rng(0).random((2, 32, 32), dtype=np.float32))
    code, _, err = run(capsys, "predict", "--checkpoint", str(ckpt), "--input", str(path),
                       "--device", "cpu", "--out", str(tmp_path / "f.npy"))  # fmt: skip
    assert code == 0
    assert err == (
        f"convlstm predict: warning: {path} has 2 input frame(s) per sequence, fewer than the 3 "
        "the model was trained on; the forecast may be poor"
    )
    np.save(path, np.random.default_rng(0).random((3, 32, 32), dtype=np.float32))
    code, _, err = run(capsys, "predict", "--checkpoint", str(ckpt), "--input", str(path),
                       "--device", "cpu", "--out", str(tmp_path / "f.npy"), "--overwrite")  # fmt: skip
    assert code == 0 and err == ""


def _both(capsys, ckpt: Path, data: Path, out: Path, *layout: str) -> tuple[str, int]:
    """The layout ``predict`` read ``data`` in, and the sequences ``evaluate`` scored."""
    code, stdout, err = run(capsys, "predict", "--checkpoint", str(ckpt), "--input", str(data),
                            "--device", "cpu", "--out", str(out / "f.npy"), *layout)  # fmt: skip
    assert code == 0, err
    read_as = stdout.split(" as ")[-1].split()[0]
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                       "--device", "cpu", "--gifs", "0", "--out", str(out / "r"), *layout)  # fmt: skip
    assert code == 0, err
    results = json.loads((out / "r" / "metrics.json").read_text())
    return read_as, results["dataset"]["num_sequences"]


def test_predict_and_evaluate_read_4d_files_alike(tmp_path: Path, ckpt: Path, capsys) -> None:
    # the published Moving MNIST layout (T=5, N=7, H, W) in uint8: 7 sequences for both
    published = tmp_path / "mnist_test_seq.npy"
    np.save(published, np.random.default_rng(0).integers(0, 256, (5, 7, 32, 32), np.uint8))
    assert _both(capsys, ckpt, published, tmp_path / "a") == ("TNHW", 7)
    assert np.load(tmp_path / "a" / "f.npy").shape == (2, 7, 32, 32)  # (horizon, N, H, W)
    # --layout NTHW: 5 sequences of 7 frames; evaluate takes every 5-frame window of each
    assert _both(capsys, ckpt, published, tmp_path / "b", "--layout", "NTHW") == ("NTHW", 15)
    assert _both(capsys, ckpt, published, tmp_path / "c", "--layout", "moving_mnist")[0] == "TNHW"
    # float (N=2, T=5, H, W): guessed as sequences by both (evaluate refused it before)
    floats = tmp_path / "floats.npy"
    np.save(floats, np.random.default_rng(0).random((2, 5, 32, 32), dtype=np.float32))
    assert _both(capsys, ckpt, floats, tmp_path / "d") == ("NTHW", 2)
    code, _, err = run(capsys, "predict", "--checkpoint", str(ckpt), "--input", str(floats),
                       "--out", str(tmp_path / "e.npy"), "--layout", "NTCHW")  # fmt: skip
    assert code == 1 and "--layout NTCHW needs a 5-D array" in err, err
    assert "layout=" not in err


def test_no_progress_bar_off_a_terminal(tmp_path: Path, ckpt: Path, capsys) -> None:
    code, out, err = run(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", "moving_mnist",
                         "--num-samples", "2", "--gifs", "0", "--device", "cpu",
                         "--out", str(tmp_path / "r"))  # fmt: skip
    assert code == 0 and err == "" and out.count("\n") == 1, (out, err)


def test_moved_names_still_import_with_a_warning() -> None:
    import convlstm.cli._args as args
    import convlstm.cli.evaluate
    import convlstm.cli.export
    import convlstm.devices as devices
    import convlstm.evaluation
    import convlstm.export
    import convlstm.predict

    moved = [
        (convlstm.predict, "CliError", args.CliError),
        (convlstm.predict, "run_cli", args.run_cli),
        (convlstm.predict, "positive_int", args.positive_int),
        (convlstm.predict, "check_device", devices.check_device),
        (convlstm.predict, "default_device", devices.default_device),
        (convlstm.evaluation, "parse_numbers", args.parse_numbers),
        (convlstm.evaluation, "add_parser", convlstm.cli.evaluate.add_parser),
        (convlstm.export, "add_parser", convlstm.cli.export.add_parser),
    ]
    for module, name, new in moved:
        with pytest.warns(DeprecationWarning, match=f"{module.__name__}.{name} moved to"):
            assert getattr(module, name) is new
    with pytest.raises(AttributeError):
        convlstm.predict.nothing_here  # noqa: B018
    assert convlstm.predict.inference is devices.inference  # still public, not deprecated


def test_library_modules_load_no_command_line_and_no_matplotlib() -> None:
    code = (
        "import sys, convlstm.evaluation, convlstm.predict, convlstm.export; "
        "bad = [m for m in ('matplotlib', 'argparse', 'convlstm.cli', 'convlstm.viz', "
        "'convlstm.report', 'convlstm.benchmark') if m in sys.modules]; print(bad)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # argparse may come in through a dependency; the rest must not
    assert [m for m in ast.literal_eval(done.stdout) if m != "argparse"] == [], done.stdout
    code = "import sys, convlstm.cli; print('convlstm.benchmark' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
