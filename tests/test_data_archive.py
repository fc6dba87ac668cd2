"""Radar archives: ODIM HDF5, CF NetCDF and Zarr files written with their real structure, read
back in mm/h with gaps, masks, crops and the Z-R relation checked in float64."""

from __future__ import annotations

import sys
import types
from datetime import timedelta

import numpy as np
import pytest
import torch

from convlstm.data import RadarArchive, RadarArchiveDataset, get_dataset
from convlstm.data.archive import parse_time
from convlstm.data.readers import OdimReader
from convlstm.masking import masked_fraction, masked_mae, masked_mean, masked_mse

h5py = pytest.importorskip("h5py")

GAIN, OFFSET, NODATA, UNDETECT = 0.5, -32.0, 255, 0
H, W = 6, 8
T0 = np.datetime64("2026-07-01T12:00", "s")
STEP = np.timedelta64(5, "m")


def mm_h_from_dbz(dbz):
    """Marshall-Palmer Z = 200 R^1.6 solved for R, in float64, written independently."""
    z = np.power(10.0, np.asarray(dbz, dtype=np.float64) / 10.0)
    return np.power(z / 200.0, 1.0 / 1.6)


def raw_frame(t: int) -> np.ndarray:
    """uint8 ODIM raw values: nodata in the first row (outside the domain), undetect in the
    second, reflectivities from 10 to ~55 dBZ elsewhere, varying with the time index."""
    rng = np.random.default_rng(t)
    raw = rng.integers(84, 175, size=(H, W)).astype(np.uint8)  # 10 .. 55.5 dBZ
    raw[0] = NODATA
    raw[1, :3] = UNDETECT
    return raw


def write_odim(path, time: np.datetime64, raw: np.ndarray) -> None:
    """An ODIM_H5/V2_3 composite (object COMP) with one DBZH dataset, as OPERA distributes."""
    stamp = str(time.astype("datetime64[s]"))
    date, clock = stamp[:10].replace("-", ""), stamp[11:19].replace(":", "")
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = np.bytes_("ODIM_H5/V2_3")
        what = f.create_group("what")
        for key, value in {
            "object": "COMP",
            "version": "H5rad 2.3",
            "date": date,
            "time": clock,
            "source": "ORG:247",
        }.items():
            what.attrs[key] = np.bytes_(value)
        where = f.create_group("where")
        where.attrs["projdef"] = np.bytes_("+proj=longlat +ellps=WGS84 +no_defs")
        where.attrs["xsize"], where.attrs["ysize"] = np.int64(W), np.int64(H)
        where.attrs["xscale"], where.attrs["yscale"] = 0.01, 0.01
        corners = {
            "LL_lon": 10.0,
            "LL_lat": 50.0,
            "UR_lon": 10.08,
            "UR_lat": 50.06,
            "UL_lon": 10.0,
            "UL_lat": 50.06,
            "LR_lon": 10.08,
            "LR_lat": 50.0,
        }
        for key, value in corners.items():
            where.attrs[key] = value
        how = f.create_group("how")
        how.attrs["nodes"] = np.bytes_("'deess','fikor'")
        how.attrs["simulated"] = np.bytes_("False")
        dataset = f.create_group("dataset1")
        dwhat = dataset.create_group("what")
        dwhat.attrs["product"] = np.bytes_("COMP")
        for key in ("startdate", "enddate"):
            dwhat.attrs[key] = np.bytes_(date)
        for key in ("starttime", "endtime"):
            dwhat.attrs[key] = np.bytes_(clock)
        data = dataset.create_group("data1")
        data.create_dataset("data", data=raw, compression="gzip")
        data["data"].attrs["CLASS"] = np.bytes_("IMAGE")
        data["data"].attrs["IMAGE_VERSION"] = np.bytes_("1.2")
        dw = data.create_group("what")
        dw.attrs["quantity"] = np.bytes_("DBZH")
        dw.attrs["gain"], dw.attrs["offset"] = GAIN, OFFSET
        dw.attrs["nodata"], dw.attrs["undetect"] = float(NODATA), float(UNDETECT)


@pytest.fixture
def odim_folder(tmp_path):
    """Nine 5-minute steps from 12:00, the 12:20 file missing (a gap)."""
    for t in range(9):
        if t == 4:
            continue
        time = T0 + t * STEP
        name = f"T_PAAH21_C_EUOC_{str(time).replace('-', '').replace(':', '').replace('T', '')}.h5"
        write_odim(tmp_path / name, time, raw_frame(t))
    return tmp_path


def expected_mm_h(t: int) -> np.ndarray:
    raw = raw_frame(t)
    rain = mm_h_from_dbz(raw.astype(np.float64) * GAIN + OFFSET)
    rain[raw == UNDETECT] = 0.0
    rain[raw == NODATA] = np.nan
    return rain


def test_odim_folder_times_gap_and_values(odim_folder):
    archive = RadarArchive(odim_folder)
    assert archive.timestep == np.timedelta64(300, "s")
    assert archive.shape == (H, W)
    assert archive.gaps().tolist() == [np.datetime64("2026-07-01T12:20:00").item()]
    assert archive.slots.tolist() == [0, 1, 2, 3, -1, 4, 5, 6, 7]
    for frame, t in enumerate([0, 1, 2, 3, 5, 6, 7, 8]):
        np.testing.assert_allclose(archive.read(frame), expected_mm_h(t), rtol=1e-6, equal_nan=True)
    # names parsed instead of the /what attributes give the same times
    by_name = RadarArchive(odim_folder, pattern="*.h5", time_format="%Y%m%d%H%M%S")
    np.testing.assert_array_equal(by_name.times, archive.times)


def test_windows_never_span_a_gap_and_masks_nodata(odim_folder):
    ds = RadarArchiveDataset(odim_folder, input_len=2, output_len=1)
    # steps 0..8 with step 4 missing: windows of 3 start at 0, 1 and 5, 6
    assert len(ds) == 4
    starts = [ds.window_times(i)[0] for i in range(len(ds))]
    assert starts == [T0, T0 + STEP, T0 + 5 * STEP, T0 + 6 * STEP]
    for i in range(len(ds)):
        steps = np.diff(ds.window_times(i))
        assert (steps == STEP).all()
    inputs, targets, mask = ds[2]  # frames at 12:25, 12:30, 12:35
    assert inputs.shape == (2, 1, H, W) and targets.shape == (1, 1, H, W)
    assert mask.shape == (3, 1, H, W) and mask.dtype == torch.float32
    reference = np.stack([expected_mm_h(t) for t in (5, 6, 7)])[:, None]
    np.testing.assert_array_equal(mask.numpy(), np.isfinite(reference).astype(np.float32))
    filled = np.nan_to_num(reference, nan=0.0)
    np.testing.assert_allclose(torch.cat([inputs, targets]).numpy(), filled, rtol=1e-6)
    # undetect is measured and dry: valid, 0 mm/h
    assert (mask[:, 0, 1, :3] == 1).all() and (inputs[:, 0, 1, :3] == 0).all()
    assert ds.masked_fraction() == pytest.approx(1 / H)  # the nodata row


def _stub_pyproj(monkeypatch):
    """pysteps' ODIM importer computes corner coordinates with pyproj; where pyproj is not
    installed, give it an identity longlat projection (the data reading stays pysteps')."""
    pytest.importorskip("pysteps")
    from convlstm._pysteps import import_pysteps

    import_pysteps()
    from pysteps.io import importers

    if not importers.PYPROJ_IMPORTED:
        stub = types.SimpleNamespace(Proj=lambda definition: lambda lon, lat: (lon, lat))
        monkeypatch.setattr(importers, "pyproj", stub, raising=False)
    return importers


def test_odim_file_is_read_by_pysteps_alike(odim_folder, monkeypatch):
    importers = _stub_pyproj(monkeypatch)
    from pysteps.utils.conversion import to_rainrate

    path = sorted(odim_folder.glob("*.h5"))[0]
    dbz, _, metadata = importers.import_odim_hdf5(str(path), qty="DBZH")
    raw = raw_frame(0)
    np.testing.assert_allclose(dbz[raw == NODATA], np.nan)
    valid = (raw != NODATA) & (raw != UNDETECT)
    np.testing.assert_allclose(dbz[valid], raw[valid] * GAIN + OFFSET)
    rain, _ = to_rainrate(dbz, metadata)  # pysteps' Z-R conversion, Marshall-Palmer
    ours = OdimReader().read(str(path), None, slice(None), slice(None))
    np.testing.assert_allclose(ours[valid], rain[valid], rtol=1e-5)
    np.testing.assert_allclose(ours[valid], mm_h_from_dbz(dbz[valid]), rtol=1e-6)


def test_pysteps_importer_reader_with_times_from_names(odim_folder, monkeypatch):
    _stub_pyproj(monkeypatch)
    archive = RadarArchive(
        odim_folder,
        format="pysteps:odim_hdf5",
        time_format="%Y%m%d%H%M",
        importer_kwargs={"qty": "DBZH"},
    )
    assert len(archive) == 8 and archive.gaps().size == 1
    frame = archive.read(0, slice(2, 5), slice(1, 4))
    reference = expected_mm_h(0)[2:5, 1:4]
    valid = raw_frame(0)[2:5, 1:4] != UNDETECT
    np.testing.assert_allclose(frame[valid], reference[valid], rtol=1e-5)


def test_zr_coefficients_are_used(odim_folder):
    archive = RadarArchive(odim_folder, zr=(300.0, 1.4))
    raw = raw_frame(0)
    dbz = raw[2:].astype(np.float64) * GAIN + OFFSET
    expected = (np.power(10.0, dbz / 10.0) / 300.0) ** (1 / 1.4)
    np.testing.assert_allclose(archive.read(0)[2:], expected, rtol=1e-6)


def _cf_frames(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    dbz = rng.uniform(5.0, 50.0, size=(n, H, W))
    dbz[:, :, 0] = np.nan  # outside the domain: _FillValue on disk
    return dbz


def test_cf_netcdf_folder_dbz_with_fill_value(tmp_path):
    xr = pytest.importorskip("xarray")
    dbz = _cf_frames(6)
    for t in range(6):
        if t == 2:
            continue  # a gap
        time = (T0 + t * STEP).astype("datetime64[ns]")
        ds = xr.Dataset(
            {
                "reflectivity": (
                    ("time", "y", "x"),
                    dbz[t : t + 1],
                    {"units": "dBZ", "long_name": "equivalent reflectivity factor"},
                )
            },
            coords={
                "time": ("time", [time], {"standard_name": "time"}),
                "y": (
                    "y",
                    1000.0 * np.arange(H),
                    {"units": "m", "standard_name": "projection_y_coordinate"},
                ),
                "x": (
                    "x",
                    1000.0 * np.arange(W),
                    {"units": "m", "standard_name": "projection_x_coordinate"},
                ),
            },
            attrs={"Conventions": "CF-1.8"},
        )
        encoding = {"reflectivity": {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -32768}}
        ds.to_netcdf(tmp_path / f"radar_{t}.nc", encoding=encoding)
    with xr.open_dataset(tmp_path / "radar_0.nc", mask_and_scale=False) as raw:
        assert raw.reflectivity.attrs["_FillValue"] == -32768  # really stored as fill values
    archive = RadarArchive(tmp_path, pattern="*.nc")
    assert archive.gaps().tolist() == [(T0 + 2 * STEP).item()]
    np.testing.assert_array_equal(archive.coordinates[1], 1000.0 * np.arange(W))
    frame = archive.read(archive.slots[3])
    np.testing.assert_allclose(frame, mm_h_from_dbz(np.round(dbz[3], 2)), rtol=1e-5, equal_nan=True)
    ds = RadarArchiveDataset(archive, input_len=1, output_len=1, transform="log")
    assert len(ds) == 3  # (0,1), (3,4), (4,5)
    inputs, _, mask = ds[0]
    assert (mask[:, 0, :, 0] == 0).all() and (mask[:, 0, :, 1:] == 1).all()
    assert (inputs[0, 0, :, 0] == np.log10(0.01)).all()  # filled dry, then log10(R + 0.01)


def test_cf_netcdf_single_file_latlon_mm_h(tmp_path):
    xr = pytest.importorskip("xarray")
    times = (T0 + np.arange(7) * STEP)[[0, 1, 2, 3, 5, 6]]  # one step missing in the file
    rain = np.random.default_rng(0).gamma(0.5, 2.0, size=(6, H, W))
    rain[:, -1, -1] = np.nan
    xr.Dataset(
        {"rr": (("time", "lat", "lon"), rain, {"units": "mm h-1"})},
        coords={
            "time": times.astype("datetime64[ns]"),
            "lat": np.linspace(50, 51, H),
            "lon": np.linspace(5, 6, W),
        },
    ).to_netcdf(tmp_path / "archive.nc")
    ds = RadarArchiveDataset(tmp_path / "archive.nc", input_len=2, output_len=1)
    assert len(ds) == 2  # steps 0-2, 1-3; 4 is a gap, 5-6 too short
    inputs, _targets, mask = ds[1]
    np.testing.assert_allclose(inputs[:, 0].numpy(), np.nan_to_num(rain[1:3]), rtol=1e-6)
    assert mask[:, 0, -1, -1].sum() == 0
    assert ds.masked_fraction() == pytest.approx(1 / (H * W))


def test_zarr_store_and_crops(zarr_archive):
    rain = np.random.default_rng(1).gamma(0.5, 2.0, size=(8, 20, 24)).astype(np.float32)
    rain[:, :3] = np.nan
    store, _ = zarr_archive(rain, step_minutes=10)
    full = RadarArchiveDataset(store, input_len=3, output_len=2)
    cropped = RadarArchiveDataset(store, input_len=3, output_len=2, crop=(5, 7))
    assert full.archive.timestep == np.timedelta64(600, "s") and len(full) == 4
    seen = set()
    for i in range(len(cropped)):
        whole = torch.cat(full[i][:2])
        part, again = torch.cat(cropped[i][:2]), torch.cat(cropped[i][:2])
        assert part.shape == (5, 1, 5, 7)
        torch.testing.assert_close(part, again)  # reproducible
        offsets = [
            (r, c)
            for r in range(16)
            for c in range(18)
            if torch.equal(whole[:, :, r : r + 5, c : c + 7], part)
        ]
        assert offsets, "a crop is a window of the whole frame"
        seen.add(offsets[0])
    cropped.set_epoch(1)
    moved = [
        not torch.equal(torch.cat(cropped[i][:2]), torch.cat(full[i][:2])[:, :, :5, :7])
        for i in range(len(cropped))
    ]
    assert len(seen) > 1 and any(moved)


def test_reads_only_the_crop(tmp_path, monkeypatch):
    xr = pytest.importorskip("xarray")
    rain = np.ones((4, 30, 30), dtype=np.float32)
    times = (T0 + np.arange(4) * STEP).astype("datetime64[ns]")
    xr.Dataset(
        {"r": (("time", "y", "x"), rain, {"units": "mm/h"})}, coords={"time": times}
    ).to_netcdf(tmp_path / "big.nc")
    ds = RadarArchiveDataset(tmp_path / "big.nc", 2, 1, crop=4)
    shapes = []
    read = ds.archive.reader.read

    def spy(path, index, rows, cols):
        frame = read(path, index, rows, cols)
        shapes.append(frame.shape)
        return frame

    monkeypatch.setattr(ds.archive.reader, "read", spy)
    ds[1]
    assert shapes == [(4, 4)] * 3


def test_irregular_times_are_named(tmp_path):
    for minute in (0, 5, 10, 17, 20):
        write_odim(tmp_path / f"r{minute:02d}.h5", T0 + np.timedelta64(minute, "m"), raw_frame(0))
    with pytest.raises(ValueError, match=r"2026-07-01T12:17:00.*between steps"):
        RadarArchive(tmp_path)
    with pytest.raises(ValueError, match="duplicate"):
        RadarArchive([tmp_path / "r00.h5", tmp_path / "r00.h5"])


def test_given_timestep_and_errors(odim_folder):
    (odim_folder / "quality").mkdir()  # folders among the files are not frames
    archive = RadarArchive(odim_folder, timestep=timedelta(minutes=5))
    assert archive.timestep == np.timedelta64(300, "s")
    with pytest.raises(ValueError, match="between steps"):
        RadarArchive(odim_folder, timestep=7)
    with pytest.raises(ValueError, match="no files match"):
        RadarArchive(odim_folder, pattern="*.nc")
    with pytest.raises(ValueError, match="crop"):
        RadarArchiveDataset(odim_folder, 2, 1, crop=(H + 1, W))
    with pytest.raises(ValueError, match="without a gap"):
        RadarArchiveDataset(odim_folder, 4, 2)
    with pytest.raises(ValueError, match="quantity"):
        RadarArchive(odim_folder, quantity="RATE")
    with pytest.raises(ValueError, match="format"):
        RadarArchive(odim_folder, format="grib")


def test_parse_time_and_registry(odim_folder):
    assert parse_time("radar/OPERA_2026-07-01_1215.h5", "%Y-%m-%d_%H%M") == np.datetime64(
        "2026-07-01T12:15:00"
    )
    with pytest.raises(ValueError, match="no timestamp"):
        parse_time("radar.h5", "%Y%m%d")
    ds = get_dataset(
        "radar_archive", source=odim_folder, input_len=2, output_len=1, return_mask=False
    )
    assert len(ds[0]) == 2


def test_masked_losses_against_float64_reference():
    gen = torch.Generator().manual_seed(0)
    prediction = torch.rand(2, 3, 1, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 1, 4, 5, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 3, 1, 4, 5, generator=gen) > 0.3).double()
    target_with_junk = torch.where(mask > 0, target, torch.full_like(target, float("nan")))
    p, t, m = (x.detach().numpy() for x in (prediction, target, mask))
    loss = masked_mse(prediction, target_with_junk, mask)
    assert loss.item() == pytest.approx(((p - t) ** 2 * m).sum() / m.sum())
    assert masked_mae(prediction, target, mask).item() == pytest.approx(
        (np.abs(p - t) * m).sum() / m.sum()
    )
    loss.backward()
    assert (prediction.grad[mask == 0] == 0).all() and torch.isfinite(prediction.grad).all()
    assert masked_fraction(mask) == pytest.approx(1 - m.mean())
    assert torch.isnan(masked_mean(torch.ones(3), torch.zeros(3)))
    with pytest.raises(ValueError, match="broadcast"):
        masked_mse(prediction, target, mask[:, :2])


def test_import_stays_light():
    code = "import sys, convlstm, convlstm.data; print([m for m in ('xarray', 'h5py', 'tifffile', 'pysteps') if m in sys.modules])"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
