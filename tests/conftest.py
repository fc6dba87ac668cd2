"""Fixtures shared by several test modules."""

import numpy as np
import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: the tiny models of the tests run far faster on one
    thread of a shared 2-core machine (modules opt in with ``usefixtures``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def zarr_archive(tmp_path):
    """A writer of radar archives as xarray stores them: ``write(rain, step_minutes=5)`` saves
    rain rates ``(T, H, W)`` in mm/h (variable ``precip``, CF ``units``, a ``time`` coordinate
    from 2024-05-01 12:00 every ``step_minutes``) to ``tmp_path/radar.zarr`` and returns the
    store's path and the times (skips without xarray and zarr)."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("zarr")

    def write(rain, step_minutes=5):
        start = np.datetime64("2024-05-01T12:00", "ns")
        times = start + np.arange(len(rain)) * np.timedelta64(step_minutes, "m")
        store = tmp_path / "radar.zarr"
        xr.Dataset(
            {"precip": (("time", "y", "x"), rain, {"units": "mm/h"})}, coords={"time": times}
        ).to_zarr(store, consolidated=False)
        return store, times

    return write
