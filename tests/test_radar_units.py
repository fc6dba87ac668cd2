"""Rain models in physical units: the checkpoint carries the data transform, the loaded model
takes and returns mm/h, and reports score rain in mm/h against the field's baselines."""

from __future__ import annotations

import importlib.util
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


def _expected_mm_h(raw: torch.nn.Module, rain: np.ndarray) -> np.ndarray:
    """The model's forecast from ``rain`` ``(T, H, W)`` mm/h (NaN: 0), inverted independently
    of the package from ``log10(R + 0.01)``."""
    filled = np.nan_to_num(rain.astype(np.float64))
    with torch.no_grad():
        log_space = raw(torch.from_numpy(np.log10(filled + 0.01))[None, :, None].float(), 2)
    return np.maximum(10 ** log_space[0, :, 0].double().numpy() - 0.01, 0)


@pytest.fixture
def geotiff_archive(run: Path, tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Five 32x32 GeoTIFF frames of rain in mm/h (no unit type in the files), 5 minutes apart,
    timestamps in their names, on the EPSG:3035 grid of test_data_geotiff, beside a file that
    is no frame; returns the folder, the frames and their times."""
    pytest.importorskip("tifffile")
    from test_data_geotiff import write_geotiff

    _, config = load_model(run / "best.pt")
    inputs, targets = _mm_h_data(config)
    rain = np.concatenate([inputs[0, :, 0], targets[0, :, 0]]).astype(np.float32)
    rain[:, :, :2] = np.nan  # outside the radar's range
    folder = tmp_path / "tiffs"
    folder.mkdir()
    times = np.datetime64("2026-07-01T12:00", "s") + np.arange(5) * np.timedelta64(5, "m")
    for frame, time in zip(rain, times, strict=True):
        stamp = str(time).replace("-", "").replace("T", "").replace(":", "")[:12]
        write_geotiff(folder / f"RAD_{stamp}.tif", frame)
    (folder / "README.txt").write_text("not a frame")
    return folder, rain, times


GEOTIFF_OPTIONS = [
    "--archive",
    "time_format=%Y%m%d%H%M",
    "--archive",
    "pattern=*.tif",
    "--archive",
    "units=mm/h",
]


def test_predict_on_a_geotiff_archive_writes_its_grid_and_times(
    run: Path, tmp_path: Path, geotiff_archive
) -> None:
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    from test_data_geotiff import DX, DY, X0, Y0

    folder, rain, times = geotiff_archive
    out = tmp_path / "nowcast.nc"
    args = ["predict", "--checkpoint", str(run / "best.pt"), "--input", str(folder)]
    assert main([*args, *GEOTIFF_OPTIONS, "--out", str(out)]) == 0
    with xr.open_dataset(out) as nowcast:
        values = nowcast["precip_intensity"].values
        np.testing.assert_array_equal(nowcast["x"].values, X0 + DX * (np.arange(32) + 0.5))
        np.testing.assert_array_equal(nowcast["y"].values, Y0 - DY * (np.arange(32) + 0.5))
        assert nowcast["x"].attrs["units"] == nowcast["y"].attrs["units"] == "m"
        assert nowcast["x"].attrs["standard_name"] == "projection_x_coordinate"
        valid = nowcast["time"].values
        leads = nowcast["lead_time"].values.astype("timedelta64[m]").astype(int).tolist()
        reference = nowcast["forecast_reference_time"].values
        if importlib.util.find_spec("pyproj"):  # the CRS of the GeoKeys' EPSG code
            mapping = nowcast["precip_intensity"].attrs["grid_mapping"]
            assert mapping == "lambert_azimuthal_equal_area"
            assert 'ID["EPSG",3035]' in nowcast[mapping].attrs["crs_wkt"]
    assert list(valid) == [times[-1] + np.timedelta64(5 * k, "m") for k in (1, 2)]
    assert leads == [5, 10] and reference == times[-1]
    expected = _expected_mm_h(load_model(run / "best.pt")[0], rain[-3:])
    assert np.isnan(values[:, :, :2]).all()
    np.testing.assert_allclose(values[:, :, 2:], expected[:, :, 2:], rtol=1e-4, atol=1e-5)


def test_bad_archive_options_name_the_option(
    run: Path, tmp_path: Path, geotiff_archive, capsys
) -> None:
    folder, _, _ = geotiff_archive
    args = ["predict", "--checkpoint", str(run / "best.pt"), "--input", str(folder)]
    out = ["--out", str(tmp_path / "nowcast.nc")]
    for option, code, message in [
        ("colour=red", 2, "--archive colour=red: unknown key 'colour'; expected one of pattern"),
        ("timestep=soon", 2, "--archive timestep=soon: timestep must be float | None, got str"),
        ("zr=[200]", 2, "--archive zr=[200]: zr must be tuple[float, float], got str '[200]'"),
        ("units", 2, "--archive 'units': expected KEY=VALUE"),
        ("format=tiff", 1, f"--input {folder} read with"),  # RadarArchive's own check
    ]:
        assert main([*args, *GEOTIFF_OPTIONS, "--archive", option, *out]) == code, option
        assert message in capsys.readouterr().err, option
    assert main([*args, "--archive", "pattern=*.tif", *out]) == 1  # no time format
    assert "pass time_format= to read it from the file names" in capsys.readouterr().err
    npy = ["--out", str(tmp_path / "f.npy")]
    assert main([*args, *GEOTIFF_OPTIONS, *npy]) == 2
    assert "--archive applies to a radar archive forecast" in capsys.readouterr().err
    assert not (tmp_path / "nowcast.nc").exists()


def test_predict_reads_an_archive_as_the_checkpoint_was_trained_on(
    run: Path, tmp_path: Path, capsys
) -> None:
    """A checkpoint trained on a radar archive names its reading options: predict uses them
    (here a NetCDF variable among two, in km with a polar stereographic grid, that pysteps
    reads back), and --archive overrides them."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    from convlstm.checkpoint import save_checkpoint

    raw, config = load_model(run / "best.pt")
    inputs, _ = _mm_h_data(config)
    rain = inputs[0, :, 0].astype(np.float32)
    times = np.datetime64("2026-07-01T12:00", "ns") + np.arange(3) * np.timedelta64(10, "m")
    x, y = 2.0 * np.arange(32) - 31.0, 700.0 - 2.0 * np.arange(32)
    stere = {
        "grid_mapping_name": "polar_stereographic",
        "straight_vertical_longitude_from_pole": 10.0,
        "latitude_of_projection_origin": 90.0,
        "standard_parallel": 60.0,
        "false_easting": 0.0,
        "false_northing": 0.0,
    }
    source = tmp_path / "radar.nc"
    xr.Dataset(
        {
            "rr": (("time", "y", "x"), rain, {"units": "mm/h", "grid_mapping": "stere"}),
            "quality": (("time", "y", "x"), np.ones_like(rain)),
            "stere": ((), 0, stere),
        },
        coords={"time": times, "x": ("x", x, {"units": "km"}), "y": ("y", y, {"units": "km"})},
    ).to_netcdf(source)
    checkpoint = load_checkpoint(run / "best.pt")
    checkpoint["config"]["data"] |= {
        "name": "radar_archive",
        "options": {"source": "elsewhere.nc", "variable": "rr", "crop": [16, 16]},
    }
    trained = save_checkpoint(tmp_path / "archive.pt", checkpoint)
    out = tmp_path / "nowcast.nc"
    args = ["predict", "--checkpoint", str(trained), "--input", str(source)]
    assert main([*args, "--out", str(out)]) == 0
    with xr.open_dataset(out) as nowcast:
        np.testing.assert_array_equal(nowcast["x"].values, x)
        np.testing.assert_array_equal(nowcast["y"].values, y)
        assert nowcast["x"].attrs["units"] == "km"
        assert nowcast["polar_stereographic"].attrs["standard_parallel"] == 60.0
        np.testing.assert_allclose(
            nowcast["precip_intensity"].values, _expected_mm_h(raw, rain), rtol=1e-4, atol=1e-5
        )
    from convlstm._pysteps import import_pysteps

    import_pysteps()
    from pysteps.io.nowcast_importers import import_netcdf_pysteps

    _, metadata = import_netcdf_pysteps(str(out), onerror="raise")
    assert metadata["projection"].startswith("+proj=stere +lon_0=10.0 +lat_0=90.0")
    assert metadata["xpixelsize"] == 2.0 and list(metadata["leadtimes"]) == [10.0, 20.0]
    again = ["--out", str(tmp_path / "again.nc")]
    assert main([*args, "--archive", "variable=quality", *again]) == 1  # quality has no units
    assert "'quality' has no units attribute" in capsys.readouterr().err


def test_evaluate_scores_a_rain_checkpoint_on_a_geotiff_archive(
    run: Path, tmp_path: Path, geotiff_archive, capsys
) -> None:
    folder, rain, _ = geotiff_archive
    args = ["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(folder)]
    report = ["--out", str(tmp_path / "report"), "--baselines", "persistence", "--gifs", "0"]
    assert main([*args, *GEOTIFF_OPTIONS, *report]) == 0
    results = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert results["dataset"]["num_sequences"] == 1  # 5 frames: one window of 3 + 2
    assert results["dataset"]["units"] == "rain rate in mm/h"
    raw, _ = load_model(run / "best.pt")
    forecast, truth = _expected_mm_h(raw, rain[:3]), rain[3:].astype(np.float64)
    valid = np.isfinite(truth)
    mse = np.mean((forecast[valid] - truth[valid]) ** 2)
    assert results["forecasters"]["model"]["mse_pixel"]["overall"] == pytest.approx(mse, rel=1e-4)
    assert main([*args, "--archive", "colour=red", "--out", str(tmp_path / "r2")]) == 2
    assert "--archive colour=red: unknown key 'colour'" in capsys.readouterr().err
    layout = ["--layout", "record", "--out", str(tmp_path / "r3")]
    assert main([*args, *GEOTIFF_OPTIONS, *layout]) == 2
    assert "--archive reads --data as a radar archive" in capsys.readouterr().err
