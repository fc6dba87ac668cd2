"""Rain models in physical units: the checkpoint carries the data transform, the loaded model
takes and returns mm/h, and reports score rain in mm/h against the field's baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm.checkpoint import load_checkpoint, load_model
from convlstm.cli import main
from convlstm.data import get_dataset
from convlstm.data.transforms import RainTransform
from convlstm.metrics import HKO7_THRESHOLDS
from convlstm.models import EncoderForecaster
from convlstm.units import PhysicalUnits, data_transform

TINY_RADAR = [
    "--config",
    "radar",
    "model.hidden_channels=[4]",
    "model.patch_size=4",
    "data.options.size=32",
    "data.input_len=3",
    "data.horizon=2",
    "data.train_samples=4",
    "data.val_samples=4",
    "optim.batch_size=2",
    "optim.epochs=1",
    "optim.warmup_steps=1",
    "run.progress=false",
    "run.eval_samples=4",
    "run.precision=fp32",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("radar") / "run"
    assert main(["train", "--out", str(out), *TINY_RADAR]) == 0
    return out


def _mm_h_data(config: dict) -> tuple[np.ndarray, np.ndarray]:
    """The validation sequences in mm/h, generated directly (float64)."""
    data = config["data"]
    dataset = get_dataset(
        "radar",
        num_samples=4,
        seed=data["val_seed"],
        size=32,
        input_len=data["input_len"],
        output_len=data["horizon"],
    )
    inputs = np.stack([dataset[i][0].numpy() for i in range(len(dataset))]).astype(np.float64)
    targets = np.stack([dataset[i][1].numpy() for i in range(len(dataset))]).astype(np.float64)
    return inputs, targets


def _csi(forecast: np.ndarray, truth: np.ndarray, threshold: float) -> float | None:
    f, t = forecast >= threshold, truth >= threshold
    hits, misses, false = (f & t).sum(), (~f & t).sum(), (f & ~t).sum()
    total = hits + misses + false
    return None if total == 0 else hits / total


def test_the_checkpoint_carries_the_transform_and_the_model_works_in_mm_h(run: Path) -> None:
    checkpoint = load_checkpoint(run / "best.pt")
    assert checkpoint["data_transform"] == {"kind": "log"}
    raw, config = load_model(run / "best.pt")
    assert isinstance(raw, EncoderForecaster)  # unwrapped unless asked
    model, _ = load_model(run / "best.pt", physical_units=True)
    assert isinstance(model, PhysicalUnits) and model.units == "mm/h"
    assert model.in_channels == raw.in_channels and model.patch_size == raw.patch_size
    inputs, _ = _mm_h_data(config)
    with torch.no_grad():
        log_space = raw(torch.from_numpy(np.log10(inputs + 0.01)).float(), 2).double().numpy()
        mm_h = model(torch.from_numpy(inputs).float(), 2).double().numpy()
    np.testing.assert_allclose(mm_h, np.maximum(10**log_space - 0.01, 0), rtol=1e-4, atol=1e-5)


def test_the_training_report_scores_rain_in_mm_h(run: Path) -> None:
    results = json.loads((run / "report" / "metrics.json").read_text())
    assert results["settings"]["units"] == "mm/h"
    assert results["settings"]["thresholds"] == list(HKO7_THRESHOLDS)
    assert results["settings"]["model_transform"] == {"kind": "log"}
    assert results["dataset"]["units"] == "rain rate in mm/h"
    raw, config = load_model(run / "best.pt")
    inputs, targets = _mm_h_data(config)
    with torch.no_grad():
        log_space = raw(torch.from_numpy(np.log10(inputs + 0.01)).float(), 2).double().numpy()
    forecast = np.maximum(10**log_space - 0.01, 0)  # independent inverse of log10(R + 0.01)
    scores = results["forecasters"]["model"]
    assert scores["mse_pixel"]["overall"] == pytest.approx(
        np.mean((forecast - targets) ** 2), rel=1e-4
    )
    for t in HKO7_THRESHOLDS[:3]:
        expected = _csi(forecast, targets, t)
        got = scores[f"csi@{t:g}"]["overall"]
        assert got is None if expected is None else got == pytest.approx(expected, rel=1e-6)
    # zeros means no rain in mm/h: the scores of an all-zero rain forecast
    zeros = results["forecasters"]["zeros"]
    assert zeros["mse_pixel"]["overall"] == pytest.approx(np.mean(targets**2), rel=1e-5)
    assert zeros["mae_pixel"]["overall"] == pytest.approx(np.mean(np.abs(targets)), rel=1e-5)
    assert (targets >= 0.5).any() and zeros["csi@0.5"]["overall"] == 0.0
    assert zeros["pod@0.5"]["overall"] == 0.0
    persistence = results["forecasters"]["persistence"]
    last = np.repeat(inputs[:, -1:], 2, axis=1)
    assert persistence["mse_pixel"]["overall"] == pytest.approx(
        np.mean((last - targets) ** 2), rel=1e-5
    )


def test_the_radar_report_names_the_fields_baselines(run: Path) -> None:
    from convlstm.baselines import available_baselines

    results = json.loads((run / "report" / "metrics.json").read_text())
    expected = ["persistence", "zeros"]
    if "optical_flow" in available_baselines():
        expected += ["optical_flow", "sprog"]
    assert list(results["forecasters"]) == ["model", *expected]
    assert list(results["baselines"]) == expected
    summary = (run / "report" / "summary.md").read_text()
    assert "## Baselines" in summary and "## Events: value ≥ 0.5 mm/h" in summary
    if "optical_flow" in expected:
        assert results["baselines"]["sprog"]["settings"]["n_cascade_levels"] == 6
        assert "- optical_flow: Extrapolate the last frame" in summary
        assert "motion = pysteps LK" in summary


def test_evaluate_command_defaults_to_mm_h(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = main(
        ["evaluate", "--checkpoint", str(run / "best.pt"), "--data", "radar", "--out", str(out),
         "--baselines", "zeros", "--gifs", "0", "--num-samples", "2", "--thresholds", "1,3"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["settings"]["thresholds"] == [1.0, 3.0]
    assert results["settings"]["units"] == "mm/h" and list(results["baselines"]) == ["zeros"]


def test_data_transform_of_datasets() -> None:
    small = {"num_samples": 1, "size": 32, "input_len": 2, "output_len": 1}
    assert data_transform(get_dataset("radar", **small)) == RainTransform("none")
    assert data_transform(get_dataset("radar", **small, transform="dbz")) == RainTransform("dbz")
    assert data_transform(get_dataset("moving_mnist", num_samples=1)) is None
    with pytest.raises(TypeError, match="transform must be a RainTransform"):
        PhysicalUnits(EncoderForecaster(hidden_channels=[4]), "log")  # type: ignore[arg-type]


def test_predict_command_forecasts_mm_h(run: Path, tmp_path: Path) -> None:
    raw, config = load_model(run / "best.pt")
    inputs, _ = _mm_h_data(config)
    np.save(tmp_path / "rain.npy", inputs[:2, :, 0].astype(np.float32))  # (N, T, H, W) mm/h
    out = tmp_path / "forecast.npy"
    args = ["predict", "--checkpoint", str(run / "best.pt"), "--input", str(tmp_path / "rain.npy")]
    assert main([*args, "--out", str(out), "--layout", "samples"]) == 0
    with torch.no_grad():
        log_space = raw(torch.from_numpy(np.log10(inputs[:2] + 0.01)).float(), 2).double().numpy()
    expected = np.maximum(10**log_space - 0.01, 0)[:, :, 0]
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-4, atol=1e-5)


def test_the_radar_report_draws_every_categorical_score_against_lead_time(run: Path) -> None:
    from convlstm.report import _axis_label

    curves = {p.name for p in (run / "report" / "curves").iterdir()}
    for score in ("csi", "pod", "far", "hss", "bias"):
        for t in HKO7_THRESHOLDS:
            assert f"{score}_at_{t:g}.png" in curves, (score, t)
    assert _axis_label("mse_frame", "mm/h") == "MSE / frame ((mm/h)²)"
    assert _axis_label("mae_pixel", "mm/h") == "MAE / pixel (mm/h)"
    assert _axis_label("csi@2", "mm/h") == "CSI (no unit)"
    html = (run / "report" / "summary.html").read_text()
    assert "HSS ≥ 2" in html


def test_the_radar_report_shows_rain_maps(run: Path) -> None:
    from PIL import Image

    from convlstm.baselines import available_baselines

    maps = sorted((run / "report" / "maps").glob("sample_*.png"))
    assert maps, "no rain maps in the report"
    with Image.open(maps[0]) as image:
        width, height = image.size
    rows = 3 if "optical_flow" in available_baselines() else 2  # observation, model, flow
    assert height > 150 * rows / 2 and width > 2 * 150  # 2 lead times (1 and 2) + colour bar
    assert "## Rain maps (mm/h)" in (run / "report" / "summary.md").read_text()
    assert "rain maps (mm/h), sequence" in (run / "report" / "summary.html").read_text()


def test_predict_on_a_radar_archive_writes_cf_netcdf(
    run: Path, tmp_path: Path, zarr_archive
) -> None:
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    raw, config = load_model(run / "best.pt")
    inputs, _ = _mm_h_data(config)
    rain = inputs[0, :, 0].astype(np.float32).copy()  # (3, 32, 32) mm/h
    rain[:, :, :2] = np.nan  # outside the radar's range
    store, times = zarr_archive(rain)
    out = tmp_path / "nowcast.nc"
    args = ["predict", "--checkpoint", str(run / "best.pt"), "--input", str(store)]
    assert main([*args, "--out", str(out)]) == 0
    with xr.open_dataset(out) as nowcast:
        values = nowcast["precip_intensity"].values
        valid = nowcast["time"].values
    assert values.shape == (2, 32, 32)
    assert list(valid) == [times[-1] + np.timedelta64(5 * k, "m") for k in (1, 2)]
    filled = np.nan_to_num(rain.astype(np.float64))
    with torch.no_grad():
        log_space = raw(torch.from_numpy(np.log10(filled + 0.01))[None, :, None].float(), 2)
    expected = np.maximum(10 ** log_space[0, :, 0].double().numpy() - 0.01, 0)
    assert np.isnan(values[:, :, :2]).all()
    np.testing.assert_allclose(values[:, :, 2:], expected[:, :, 2:], rtol=1e-4, atol=1e-5)
    assert main([*args, "--out", str(tmp_path / "again.nc"), "--png", str(tmp_path / "p")]) == 2
