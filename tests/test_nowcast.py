"""The pysteps-style nowcast function, CF NetCDF output read back by xarray and pysteps, and the
serialisable rain transform a checkpoint can carry."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from convlstm.data.transforms import RainTransform, dbz_to_rain, inverse_log_rain, log_rain
from convlstm.models import EncoderForecaster
from convlstm.nowcast import forecast, write_cf_netcdf


def persistence(inputs, horizon):
    return inputs[:, -1:].repeat(1, horizon, 1, 1, 1)


def rain(shape=(4, 8, 8), seed=0):
    field = np.random.default_rng(seed).gamma(0.6, 3.0, size=shape)
    field[:, 0, :2] = np.nan  # outside the radar domain
    return field


@pytest.mark.parametrize("kind", ["none", "log", "dbz"])
def test_units_round_trip_through_the_transform(kind):
    precip = rain()
    precip[-1, 3, 3] = 0.0
    seen = []

    def model(inputs, horizon):
        seen.append(inputs.clone())
        return persistence(inputs, horizon)

    out = forecast(precip, 3, model, transform=None if kind == "none" else kind)
    assert out.shape == (3, 8, 8) and out.dtype == np.float64
    filled = np.nan_to_num(precip, nan=0.0)
    expected_inputs = {"none": filled, "log": log_rain(filled), "dbz": None}[kind]
    if expected_inputs is not None:
        np.testing.assert_allclose(
            seen[0][0, :, 0].double().numpy(), expected_inputs, rtol=1e-6, atol=1e-6
        )
    last = precip[-1]
    valid = np.isfinite(last)
    if kind == "dbz":  # rain under the dBZ floor (0.036 mm/h) is dry after the round trip
        last = np.where(last < 0.0366, 0.0, last)
    for lead in range(3):
        np.testing.assert_allclose(out[lead][valid], last[valid], rtol=1e-5, atol=1e-6)
        assert np.isnan(out[lead][~valid]).all()


def test_lead_steps_and_a_real_tiny_model():
    def lead_model(inputs, horizon):
        steps = torch.arange(1.0, horizon + 1).reshape(1, horizon, 1, 1, 1)
        return steps.expand(1, horizon, 1, *inputs.shape[-2:])

    out = forecast(np.ones((2, 4, 4)), [1, 3, 4], lead_model)
    assert out[:, 0, 0].tolist() == [1.0, 3.0, 4.0]
    model = EncoderForecaster(1, [4], 3, patch_size=2, output_activation="identity")
    model.train()
    out = forecast(rain(), 2, model, transform=RainTransform("log").to_dict())
    assert out.shape == (2, 8, 8) and model.training
    assert np.isfinite(out[:, 1:]).all() and np.isnan(out[:, 0, :2]).all()
    with pytest.raises(ValueError, match="timesteps"):
        forecast(np.ones((2, 4, 4)), [3, 1], lead_model)
    with pytest.raises(ValueError, match="negative"):
        forecast(-np.ones((2, 4, 4)), 1, lead_model)
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        forecast(np.ones((4, 4)), 1, lead_model)


def test_contract_matches_pysteps_extrapolation():
    pytest.importorskip("pysteps")
    from convlstm._pysteps import import_pysteps

    import_pysteps()
    from pysteps.nowcasts import extrapolation

    theirs = inspect.signature(extrapolation.forecast).parameters
    ours = inspect.signature(forecast).parameters
    assert next(iter(theirs)) == next(iter(ours)) == "precip"
    assert "timesteps" in theirs and "timesteps" in ours
    precip = rain()
    reference = extrapolation.forecast(precip[-1], np.zeros((2, 8, 8)), 3)  # zero motion
    ours_out = forecast(precip, 3, persistence)
    assert reference.shape == ours_out.shape
    np.testing.assert_allclose(ours_out, reference, equal_nan=True)


def test_cf_netcdf_round_trip_xarray_and_pysteps(tmp_path):
    xr = pytest.importorskip("xarray")
    values = rain((3, 5, 6)).astype(np.float32)
    valid = np.datetime64("2026-07-01T12:00") + np.array([5, 10, 15], "timedelta64[m]")
    x, y = 1000.0 * np.arange(6), 2000.0 * np.arange(5)
    path = write_cf_netcdf(
        tmp_path / "nowcast.nc", values, valid, [5, 10, 15], x, y, attrs={"institution": "test"}
    )
    with xr.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.precip_intensity.values, values)  # NaN included
        assert ds.precip_intensity.attrs["units"] == "mm h-1"
        np.testing.assert_array_equal(ds.time.values, valid.astype("datetime64[ns]"))
        assert ds.lead_time.values.astype("timedelta64[m]").astype(int).tolist() == [5, 10, 15]
        assert ds.forecast_reference_time.values == np.datetime64("2026-07-01T12:00", "ns")
        np.testing.assert_array_equal(ds.x.values, x)
        assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["institution"] == "test"
    pytest.importorskip("pysteps")
    pytest.importorskip("netCDF4")
    from convlstm._pysteps import import_pysteps

    import_pysteps()
    from pysteps.io.nowcast_importers import import_netcdf_pysteps

    precip, metadata = import_netcdf_pysteps(str(path), onerror="raise")
    np.testing.assert_allclose(precip, values, equal_nan=True)
    assert list(metadata["leadtimes"]) == [5.0, 10.0, 15.0]
    assert metadata["unit"] == "mm/h" and metadata["xpixelsize"] == 1000.0


def test_cf_netcdf_grid_pixel_indices_degrees_and_crs(tmp_path):
    """Without coordinates the axes are pixel indices without units; ``degrees`` make them
    longitude and latitude; a grid mapping becomes the variable ``precip_intensity`` names."""
    xr = pytest.importorskip("xarray")
    valid = np.array(["2026-07-01T12:05", "2026-07-01T12:10"], dtype="datetime64[m]")
    values = np.ones((2, 3, 4))
    plain = write_cf_netcdf(tmp_path / "plain.nc", values, valid, [5, 10])
    lon, lat = 10.0 + 0.5 * np.arange(4), 50.0 - 0.5 * np.arange(3)
    crs = {"grid_mapping_name": "latitude_longitude", "semi_major_axis": 6378137.0}
    geo = write_cf_netcdf(
        tmp_path / "geo.nc", values, valid, [5, 10], lon, lat, xy_units="degrees", grid_mapping=crs
    )
    with xr.open_dataset(plain) as ds:
        np.testing.assert_array_equal(ds.x.values, np.arange(4))
        assert "units" not in ds.x.attrs and "units" not in ds.y.attrs
        assert "grid_mapping" not in ds.precip_intensity.attrs
    with xr.open_dataset(geo) as ds:
        np.testing.assert_array_equal(ds.y.values, lat)
        assert ds.x.attrs == {"standard_name": "longitude", "units": "degrees_east"}
        assert ds.y.attrs == {"standard_name": "latitude", "units": "degrees_north"}
        assert ds.precip_intensity.attrs["grid_mapping"] == "latitude_longitude"
        assert ds.latitude_longitude.attrs == crs
    with pytest.raises(ValueError, match="x must have 4 values, one per pixel"):
        write_cf_netcdf(tmp_path / "bad.nc", values, valid, [5, 10], lat, lat)


def test_cf_netcdf_errors(tmp_path):
    pytest.importorskip("xarray")
    valid = np.array(["2026-07-01T12:05", "2026-07-01T12:10"], dtype="datetime64[m]")
    path = write_cf_netcdf(tmp_path / "a.nc", torch.ones(2, 2, 2), valid, [5, 10])
    with pytest.raises(FileExistsError):
        write_cf_netcdf(path, np.ones((2, 2, 2)), valid, [5, 10])
    write_cf_netcdf(path, np.zeros((2, 2, 2)), valid, [5, 10], overwrite=True)
    with pytest.raises(ValueError, match="one reference time"):
        write_cf_netcdf(tmp_path / "b.nc", np.ones((2, 2, 2)), valid, [5, 5])
    with pytest.raises(ValueError, match="one entry per"):
        write_cf_netcdf(tmp_path / "b.nc", np.ones((3, 2, 2)), valid, [5, 10])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nc"]  # no temporary files left


@pytest.mark.parametrize(
    ("transform", "inverse"),
    [
        (RainTransform(), lambda y: y),
        (RainTransform("log", offset=0.1), lambda y: inverse_log_rain(y, offset=0.1)),
        (RainTransform("dbz", a=300.0, b=1.4), lambda y: dbz_to_rain(y, a=300.0, b=1.4)),
    ],
)
def test_rain_transform_serialises(transform, inverse):
    restored = RainTransform.from_dict(json.loads(json.dumps(transform.to_dict())))
    assert restored == transform and hash(restored) == hash(transform)
    r = torch.tensor([0.0, 0.5, 3.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(restored.inverse(restored(r)), r)
    torch.testing.assert_close(restored.inverse(restored(r)), inverse(transform(r)))


def test_rain_transform_errors():
    with pytest.raises(ValueError, match="kind"):
        RainTransform("sqrt")
    with pytest.raises(ValueError, match="offset"):
        RainTransform("dbz", offset=1.0)
    with pytest.raises(ValueError, match="'kind'"):
        RainTransform.from_dict({"offset": 1.0})
