"""Evaluation and report folders, with a stand-in model; end-to-end CLI tests use a checkpoint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from convlstm.data import ArrayDataset, MovingMNIST, MovingMNISTFile, write_moving_mnist
from convlstm.evaluation import (
    collect_samples,
    evaluate,
    evaluate_checkpoint,
    resolve_dataset,
    sample_indices,
)
from convlstm.report import write_report
from test_predict import run_command, tiny_checkpoint

T_IN, T_OUT = 3, 2


def last_frame(inputs: Tensor, horizon: int) -> Tensor:
    return inputs[:, -1:].expand(-1, horizon, -1, -1, -1)


class Blur(nn.Module):
    """A stand-in model: a learned 3x3 convolution of the last frame, repeated."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1 / 9)
        nn.init.zeros_(self.conv.bias)

    def forward(self, inputs: Tensor, horizon: int) -> Tensor:
        assert not self.training and not torch.is_grad_enabled()
        return self.conv(inputs[:, -1]).unsqueeze(1).expand(-1, horizon, -1, -1, -1)


@pytest.fixture(scope="module")
def dataset() -> MovingMNIST:
    return MovingMNIST(num_samples=5, input_len=T_IN, output_len=T_OUT, size=32, seed=3)


@pytest.fixture(scope="module")
def results(dataset: MovingMNIST) -> dict:
    return evaluate(Blur(), dataset, batch_size=2, progress=False)  # persistence, zeros


def test_persistence_metrics_match_numpy(dataset: MovingMNIST, results: dict) -> None:
    inputs = np.stack([dataset[i][0].numpy() for i in range(len(dataset))]).astype(np.float64)
    targets = np.stack([dataset[i][1].numpy() for i in range(len(dataset))]).astype(np.float64)
    error = inputs[:, -1:] - targets  # (N, T_OUT, 1, H, W)
    mse_frame = (error**2).sum(axis=(2, 3, 4)).mean(axis=0)
    mae_frame = np.abs(error).sum(axis=(2, 3, 4)).mean(axis=0)
    psnr = (10 * np.log10(1 / (error**2).mean(axis=(2, 3, 4)))).mean(axis=0)
    got = results["forecasters"]["persistence"]
    np.testing.assert_allclose(got["mse_frame"]["per_lead_time"], mse_frame, rtol=1e-6)
    np.testing.assert_allclose(got["mse_frame"]["overall"], mse_frame.mean(), rtol=1e-6)
    np.testing.assert_allclose(got["mae_frame"]["per_lead_time"], mae_frame, rtol=1e-6)
    np.testing.assert_allclose(got["mse_pixel"]["overall"], (error**2).mean(), rtol=1e-6)
    np.testing.assert_allclose(got["psnr"]["per_lead_time"], psnr, rtol=1e-5)
    np.testing.assert_allclose(
        results["forecasters"]["zeros"]["mse_frame"]["overall"],
        (targets**2).sum(axis=(2, 3, 4)).mean(),
        rtol=1e-6,
    )


def test_results_structure(results: dict) -> None:
    assert list(results["forecasters"]) == ["model", "persistence", "zeros"]
    assert results["dataset"] | {"name": None} == {
        "name": None,
        "num_sequences": 5,
        "input_len": T_IN,
        "horizon": T_OUT,
        "frame_shape": [1, 32, 32],
    }
    assert results["settings"] == {"data_range": 1.0, "clip": [0.0, 1.0], "thresholds": None}
    json.dumps(results, allow_nan=False)  # strict JSON
    for metrics in results["forecasters"].values():
        assert set(metrics) == {"mse_frame", "mae_frame", "mse_pixel", "mae_pixel", "ssim", "psnr"}
        assert all(len(m["per_lead_time"]) == T_OUT for m in metrics.values())


def test_options_horizon_num_samples_thresholds(dataset: MovingMNIST) -> None:
    model = Blur().train()
    results = evaluate(
        model,
        dataset,
        horizon=1,
        num_samples=2,
        baselines={"zeros": lambda x, h: 0 * last_frame(x, h), "last": last_frame},
        thresholds=[0.5],
        progress=False,
    )
    assert model.training  # mode restored
    assert results["dataset"]["num_sequences"] == 2
    assert list(results["forecasters"]) == ["model", "zeros", "last"]
    zero = results["forecasters"]["zeros"]
    assert len(zero["mse_frame"]["per_lead_time"]) == 1
    assert zero["pod@0.5"]["overall"] == 0.0
    assert zero["far@0.5"]["overall"] is None  # undefined: no forecast events, NaN -> null
    with pytest.raises(ValueError, match="horizon 3 exceeds"):
        evaluate(model, dataset, horizon=3, baselines={}, progress=False)


def test_bad_forecaster_shape_is_reported(dataset: MovingMNIST) -> None:
    with pytest.raises(ValueError, match=r"'model' returned \(2, 1, 1, 32, 32\)"):
        evaluate(lambda x, h: x[:, :1], dataset, batch_size=2, baselines={}, progress=False)


def test_sample_indices() -> None:
    assert sample_indices(10, 3) == [0, 4, 9]  # 4.5 rounds to even
    assert sample_indices(0, 3) == []


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_report_files_and_determinism(dataset: MovingMNIST, results: dict, tmp_path: Path) -> None:
    samples = collect_samples(Blur(), dataset, [0, 4])
    first = write_report(results, tmp_path / "a", samples=samples)
    second = write_report(results, tmp_path / "b", samples=samples)
    files = _tree(first)
    assert sorted(files) == [
        "curves/mae_frame.png",
        "curves/mse_frame.png",
        "curves/psnr.png",
        "curves/ssim.png",
        "metrics.json",
        "samples/sample_00000.gif",
        "samples/sample_00004.gif",
        "summary.html",
        "summary.md",
    ]
    assert files == _tree(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary leftovers
    assert json.loads(files["metrics.json"]) == results
    for name, data in files.items():
        if name.endswith(".png"):
            assert Image.open(io.BytesIO(data)).format == "PNG"
    gif = Image.open(io.BytesIO(files["samples/sample_00004.gif"]))
    assert gif.format == "GIF" and gif.n_frames == T_IN + T_OUT
    summary = files["summary.md"].decode()
    assert "| model |" in summary and "| persistence |" in summary and "MSE / frame" in summary
    assert "summed over the pixels" in summary  # conventions stated
    html = files["summary.html"].decode()
    assert html.startswith("<!DOCTYPE html>") and 'src="data:image/png;base64,' in html


def test_report_with_thresholds_draws_csi(dataset: MovingMNIST, tmp_path: Path) -> None:
    results = evaluate(
        Blur(), dataset, num_samples=2, baselines={}, thresholds=[0.5, 2], progress=False
    )
    out = write_report(results, tmp_path / "r")
    curves = sorted(p.name for p in (out / "curves").iterdir())
    assert "csi_at_0.5.png" in curves and "csi_at_2.png" in curves
    assert "## Events: value ≥ 0.5" in (out / "summary.md").read_text("utf-8")


def test_no_overwrite_without_flag(results: dict, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_report(results, out)
    assert _tree(out) == {"mine.txt": b"user data"}
    write_report(results, out, overwrite=True)
    assert "mine.txt" not in _tree(out) and "metrics.json" in _tree(out)


def test_failure_leaves_nothing_half_written(
    results: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import convlstm.report

    out = tmp_path / "report"
    write_report(results, out)
    before = _tree(out)
    calls = 0
    real = Path.write_bytes

    def failing(self: Path, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("disk full (injected)")
        return real(self, data)

    monkeypatch.setattr(convlstm.report.Path, "write_bytes", failing)
    for target, overwrite in ((tmp_path / "new", False), (out, True)):
        calls = 0
        with pytest.raises(OSError, match="injected"):
            write_report(results, target, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert _tree(out) == before


# --------------------------------------------------------------------------- checkpoints, CLI


def test_evaluate_checkpoint_generated_data(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    results = evaluate_checkpoint(
        ckpt, "moving_mnist", tmp_path / "report", device="cpu", num_samples=3, progress=False
    )
    assert results["dataset"] | {"name": "moving_mnist"} == results["dataset"]
    assert results["dataset"]["num_sequences"] == 3 and results["dataset"]["horizon"] == 2
    assert results["checkpoint"] == {"path": str(ckpt), "model": "moving_mnist"}
    assert list(results["forecasters"]) == ["model", "persistence", "zeros"]
    files = _tree(tmp_path / "report")
    assert json.loads(files["metrics.json"]) == results
    assert [n for n in files if n.startswith("samples/")] == [
        "samples/sample_00000.gif",
        "samples/sample_00001.gif",
        "samples/sample_00002.gif",
    ]


def test_cli_evaluate_seed_scores_other_sequences(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    common = ["--checkpoint", str(ckpt), "--data", "moving_mnist", "--num-samples", "2"]
    scores = []
    for name, seed in (("val", []), ("same", ["--seed", "1"]), ("other", ["--seed", "5"])):
        assert _cli([*common, *seed, "--gifs", "0", "--out", str(tmp_path / name)]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        scores.append(metrics["forecasters"]["persistence"]["mse_frame"]["overall"])
    assert scores[0] == scores[1] != scores[2]  # the default is the validation seed, 1


def test_resolve_dataset(tmp_path: Path) -> None:
    config = {
        "data": {
            "name": "moving_mnist",
            "input_len": 3,
            "horizon": 2,
            "val_samples": 4,
            "val_seed": 1,
            "options": {"size": 32},
            "val_options": {},
        }
    }
    generated = resolve_dataset("moving_mnist", config)
    assert len(generated) == 4 and generated[0][0].shape == (3, 1, 32, 32)
    assert generated.digits.shape[0] == 1000  # the validation digits
    assert generated.seed == 1
    unseen = resolve_dataset("moving_mnist", config, seed=7)
    assert unseen.seed == 7 and not torch.equal(unseen[0][0], generated[0][0])
    write_moving_mnist(tmp_path / "mm.npy", generated)
    published = resolve_dataset(tmp_path / "mm.npy", config)
    assert isinstance(published, MovingMNISTFile) and len(published) == 4
    with pytest.raises(ValueError, match="seed applies to generated datasets only"):
        resolve_dataset(tmp_path / "mm.npy", config, seed=7)
    np.save(tmp_path / "mine.npy", np.zeros((2, 6, 16, 16), np.float32))
    mine = resolve_dataset(tmp_path / "mine.npy", config, layout="samples", horizon=3)
    assert isinstance(mine, ArrayDataset) and mine[0][1].shape == (3, 1, 16, 16)
    with pytest.raises(FileNotFoundError, match="not a generated dataset"):
        resolve_dataset(tmp_path / "missing.npy", config)
    # trained on arrays: the training file gives its validation split; others are read alike
    pixels = np.zeros((10, 5, 16, 16), np.uint8)  # (N, T, H, W), also 4-D uint8
    np.save(tmp_path / "train.npy", pixels)
    options = {"source": str(tmp_path / "train.npy"), "layout": "samples"}
    config["data"] |= {"name": "array", "options": options}
    assert len(resolve_dataset(tmp_path / "train.npy", config)) == 1  # val: 10% of 10 samples
    np.save(tmp_path / "other.npy", pixels[:3])
    other = resolve_dataset(tmp_path / "other.npy", config)
    assert isinstance(other, ArrayDataset) and len(other) == 3


def _cli(argv: list[str]) -> int:
    return run_command(["evaluate", *argv])


def test_cli_evaluate_file_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(tiny_checkpoint(tmp_path / "tiny.pt"))
    data = MovingMNIST(num_samples=2, input_len=3, output_len=2, size=32, digits="val")
    write_moving_mnist(tmp_path / "mm.npy", data)
    base = ["--checkpoint", ckpt, "--device", "cpu", "--out", str(tmp_path / "r")]
    argv = [*base, "--data", str(tmp_path / "mm.npy"), "--thresholds", "0.5,0.9", "--gifs", "1"]
    assert _cli(argv) == 0
    assert "2 sequences: MSE/frame" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["settings"]["thresholds"] == [0.5, 0.9]
    assert "csi@0.9" in metrics["forecasters"]["model"]
    assert len(list((tmp_path / "r" / "samples").iterdir())) == 1

    def fails(argv: list[str], code: int, *messages: str) -> None:
        assert _cli(argv) == code
        err = capsys.readouterr().err
        assert err.startswith("convlstm evaluate: error: ") and err.count("\n") == 1, err
        assert all(message in err for message in messages), err

    fails(argv, 2, "already exists (pass --overwrite")
    fails([*argv, "--overwrite", "--thresholds", "0.5,x"], 2, "--thresholds: 'x' is not a number")
    fails([*argv, "--overwrite", "--baselines", "persistence,magic"], 2, "unknown magic")
    other = [*base[:-1], str(tmp_path / "r2")]
    np.save(tmp_path / "rgb.npy", np.zeros((2, 6, 3, 32, 32), np.float32))
    fails(
        [*other, "--data", str(tmp_path / "rgb.npy")], 1, "rgb.npy", "model_config.in_channels = 1"
    )
    np.save(tmp_path / "odd.npy", np.zeros((2, 6, 1, 30, 30), np.float32))
    fails(
        [*other, "--data", str(tmp_path / "odd.npy")], 1, "odd.npy", "model_config.patch_size = 8"
    )
    fails([*other, "--data", "nowhere.npy"], 1, "nowhere.npy: no such file")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    fails(
        [
            "--checkpoint",
            str(tmp_path / "bad.pt"),
            "--data",
            "moving_mnist",
            "--out",
            str(tmp_path / "r3"),
        ],
        1,
        "unreadable",
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["r"]


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--gifs", "-1", "expected a whole number >= 0, got '-1'"),
        ("--gifs", "x", "expected a whole number >= 0, got 'x'"),
        ("--data-range", "0", "expected a finite number > 0, got '0'"),
        ("--data-range", "-1", "expected a finite number > 0, got '-1'"),
        ("--data-range", "nan", "expected a finite number > 0, got 'nan'"),
        ("--data-range", "inf", "expected a finite number > 0, got 'inf'"),
        ("--batch-size", "0", "expected a whole number > 0, got '0'"),
        ("--num-samples", "-3", "expected a whole number > 0, got '-3'"),
    ],
)
def test_cli_evaluate_refuses_bad_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    argv = ["--checkpoint", "x.pt", "--data", "moving_mnist", "--out", str(tmp_path / "r")]
    assert _cli([*argv, option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"convlstm evaluate: error: argument {option}: {expected}", err  # one line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("device", ["cuda:7", "foo", "meta"])
def test_cli_evaluate_bad_device_is_not_blamed_on_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    ckpt = str(tiny_checkpoint(tmp_path / "tiny.pt"))
    argv = ["--checkpoint", ckpt, "--data", "moving_mnist", "--out", str(tmp_path / "r")]
    assert _cli([*argv, "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convlstm evaluate: error: --device: ") and err.count("\n") == 1, err
    assert "checkpoint" not in err and repr(device) in err, err
    with pytest.raises(ValueError, match=r"^device: "):
        evaluate_checkpoint(ckpt, "moving_mnist", tmp_path / "r", device=device)
    assert not (tmp_path / "r").exists()


def test_evaluate_checkpoint_output_under_a_file_fails_before_work(tmp_path: Path) -> None:
    ckpt = str(tiny_checkpoint(tmp_path / "tiny.pt"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        evaluate_checkpoint(ckpt, "nowhere.npy", blocker / "report")  # no data needed to fail
    assert blocker.read_text() == "mine"


def test_radar_reports_state_their_units(tmp_path: Path) -> None:
    from convlstm.checkpoint import make_checkpoint, save_checkpoint
    from convlstm.config import config_from_dict, config_to_dict, validate_config
    from convlstm.data import get_dataset
    from convlstm.evaluation import value_units
    from convlstm.models import EncoderForecaster

    radar = {"input_len": 3, "output_len": 2, "num_samples": 2, "size": 32}
    assert value_units(get_dataset("radar", **radar)) == "rain rate in mm/h"
    assert "dBZ" in value_units(get_dataset("radar", **radar, transform="dbz"))
    assert value_units(MovingMNIST(num_samples=1, input_len=3, output_len=2)) is None
    config = validate_config(
        config_from_dict(
            {
                "model": {"name": "radar", "hidden_channels": [4]},
                "data": {"name": "radar", "input_len": 3, "horizon": 2, "val_samples": 2,
                         "options": {"size": 32, "transform": "log"}},
            }
        )
    )  # fmt: skip
    torch.manual_seed(0)
    model = EncoderForecaster(**config.model.options)
    ckpt = save_checkpoint(
        tmp_path / "radar.pt", make_checkpoint(model, "radar", config_to_dict(config))
    )
    results = evaluate_checkpoint(
        ckpt, "radar", tmp_path / "r", num_gifs=0, progress=False, thresholds=[0.0]
    )
    assert results["dataset"]["units"].startswith("log10(R + 0.01) of the rain rate R in mm/h")
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert (
        "Values are log10(R + 0.01) of the rain rate R in mm/h (transform 'log'), not mm/h: "
        "the errors and event thresholds below are in these units." in summary
    ), summary
    assert "not mm/h" in (tmp_path / "r" / "summary.html").read_text()


def test_cli_evaluate_frames_smaller_than_ssims_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4x4 frames: SSIM is skipped (left out of the results), the command reports the scores
    that exist and writes the report instead of failing on the missing SSIM."""
    from convlstm.checkpoint import make_checkpoint, save_checkpoint
    from convlstm.config import config_from_dict, config_to_dict, validate_config
    from convlstm.models import EncoderForecaster

    config = validate_config(
        config_from_dict(
            {
                "model": {"name": "moving_mnist", "hidden_channels": [4], "patch_size": 2},
                "data": {"input_len": 3, "horizon": 2, "val_samples": 3},
            }
        )
    )
    torch.manual_seed(0)
    model = EncoderForecaster(**config.model.options)
    ckpt = save_checkpoint(
        tmp_path / "tiny.pt", make_checkpoint(model, "moving_mnist", config_to_dict(config))
    )
    frames = np.random.default_rng(0).random((3, 5, 4, 4)).astype(np.float32)  # (N, T, H, W)
    np.save(tmp_path / "frames.npy", frames)
    argv = ["--checkpoint", str(ckpt), "--data", str(tmp_path / "frames.npy"), "--layout"]
    argv += ["NTHW", "--out", str(tmp_path / "r"), "--device", "cpu", "--gifs", "1"]
    with pytest.warns(UserWarning, match="SSIM is left out"):
        assert _cli(argv) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    scores = metrics["forecasters"]["model"]
    assert "ssim" not in scores and scores["mse_frame"]["overall"] is not None
    assert f"MSE/frame {scores['mse_frame']['overall']:.4g}" in out
    assert "SSIM skipped" in out and out.count("\n") == 1
    # the model's forecast, scored independently: MSE per frame summed over the 4x4 pixels
    with torch.no_grad():
        forecast = model.eval()(torch.from_numpy(frames[:, :3, None]), 2).double()
    expected = (forecast - torch.from_numpy(frames[:, 3:, None]).double()).square()
    assert scores["mse_frame"]["overall"] == pytest.approx(float(expected.sum() / 6), rel=1e-5)


def test_cli_evaluate_pysteps_baseline_without_the_nowcast_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pysteps", None)  # as without the nowcast extra
    ckpt = str(tiny_checkpoint(tmp_path / "tiny.pt"))
    argv = ["--checkpoint", ckpt, "--data", "moving_mnist", "--out", str(tmp_path / "r")]
    assert _cli([*argv, "--baselines", "persistence,optical_flow"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("convlstm evaluate: error: --baselines optical_flow: ")
        and err.count("\n") == 1
    ), err
    assert "convlstm[nowcast]" in err and not (tmp_path / "r").exists()
