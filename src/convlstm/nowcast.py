"""Interoperability with pysteps and CF tools: a pysteps-style nowcast and CF NetCDF output.

* :func:`forecast`: ``forecast(precip, timesteps, model)`` with pysteps' conventions
  (``precip`` ``(T, H, W)`` in mm/h, ``NaN`` allowed; result ``(timesteps, H, W)`` in mm/h),
  so a ConvLSTM forecast can be verified beside pysteps' own nowcasts.
* :func:`write_cf_netcdf`: a forecast as a CF-1.8 NetCDF file with valid times and lead
  times, readable by xarray and by pysteps' ``import_netcdf_pysteps``.

Compared with ``pysteps.nowcasts.extrapolation.forecast(precip, velocity, timesteps,
extrap_method="semilagrangian", extrap_kwargs=None, measure_time=False)``, there is no
``velocity`` argument (the ConvLSTM infers motion from the input frames) and ``precip`` is
the sequence of past frames (``(T, H, W)``, like S-PROG's), not only the last one.
``timesteps`` is, as in pysteps, the number of steps or a list of lead steps (integers here:
the model steps one frame at a time).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from . import _atomic
from .data.transforms import RainTransform

__all__ = ["forecast", "write_cf_netcdf"]


def _lead_steps(timesteps: int | Sequence[int]) -> list[int]:
    if isinstance(timesteps, int | np.integer) and not isinstance(timesteps, bool):
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        return list(range(1, int(timesteps) + 1))
    steps = list(cast("Sequence[int]", timesteps))
    if (
        not steps
        or any(isinstance(s, bool) or float(s) != int(s) or s < 1 for s in steps)
        or any(b <= a for a, b in itertools.pairwise(steps))
    ):
        raise ValueError(
            f"timesteps must be a positive int or an increasing list of positive integer lead "
            f"steps, got {timesteps!r}"
        )
    return [int(s) for s in steps]


def forecast(
    precip: np.ndarray,
    timesteps: int | Sequence[int],
    model: Callable[[Tensor, int], Tensor],
    *,
    transform: RainTransform | str | dict[str, Any] | None = None,
    fill_value: float = 0.0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Nowcast ``timesteps`` frames after ``precip`` with ``model``, in pysteps' conventions.

    ``NaN`` pixels of ``precip`` are filled with ``fill_value`` (mm/h) for the model; pixels
    ``NaN`` in the last frame (outside the radar domain) are ``NaN`` in every forecast
    frame, as pysteps' extrapolation leaves them.

    Args:
        precip: past rain-rate frames ``(T, H, W)`` in mm/h, oldest first.
        timesteps: number of steps ``n`` (leads ``1..n``) or an increasing list of lead steps.
        model: ``model(inputs, horizon)`` mapping ``(1, T, 1, H, W)`` to ``(1, horizon, 1,
            H, W)`` (a :class:`~convlstm.models.ConvLSTMForecaster`, ...). An ``nn.Module``
            runs in eval mode (restored afterwards), without gradients.
        transform: the model's data transform (:class:`~convlstm.data.transforms.
            RainTransform`, its ``to_dict()``, ``"log"``, ``"dbz"``), applied to ``precip``
            and inverted on the output; ``None`` if the model works in mm/h.
        fill_value: mm/h given to the model where ``precip`` is ``NaN``.
        device: where to run; default the model's parameters' device (else CPU).

    Returns:
        ``(len(leads), H, W)`` float64 mm/h.

    Example:
        >>> import numpy as np
        >>> persistence = lambda x, horizon: x[:, -1:].repeat(1, horizon, 1, 1, 1)
        >>> precip = np.full((3, 4, 4), 2.0)
        >>> forecast(precip, 2, persistence, transform="log").shape
        (2, 4, 4)
    """
    frames = np.asarray(precip, dtype=np.float64)
    if frames.ndim != 3 or 0 in frames.shape:
        raise ValueError(f"precip must be a non-empty (T, H, W) array, got shape {frames.shape}")
    if np.nanmin(frames, initial=0.0) < 0:
        raise ValueError("precip must be rain rates in mm/h (>= 0 or NaN), found negative values")
    leads = _lead_steps(timesteps)
    if isinstance(transform, dict):
        transform = RainTransform.from_dict(transform)
    elif isinstance(transform, str):
        transform = RainTransform(transform)
    if device is None and isinstance(model, nn.Module):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    filled = np.where(np.isnan(frames), fill_value, frames).astype(np.float32)
    inputs = torch.from_numpy(filled)[None, :, None].to(device or "cpu")
    if transform is not None:
        inputs = transform(inputs)
    module = model if isinstance(model, nn.Module) and model.training else None
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            output = model(inputs, leads[-1])
    finally:
        if module is not None:
            module.train()
    expected = (1, leads[-1], 1, *frames.shape[1:])
    if tuple(output.shape) != expected:
        raise ValueError(f"model returned shape {tuple(output.shape)}, expected {expected}")
    if transform is not None:
        output = transform.inverse(output)
    result = output[0, [lead - 1 for lead in leads], 0].double().cpu().numpy()
    result[:, np.isnan(frames[-1])] = np.nan
    return result


def _as_times(values: Any, name: str, dtype: str) -> np.ndarray:
    array = np.asarray(values)
    if dtype == "timedelta64[s]" and array.dtype.kind in "iuf":
        array = (array * 60).astype("int64").astype(dtype)  # minutes
    try:
        return array.astype(dtype)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be {dtype} values, got {array.dtype}") from error


def write_cf_netcdf(
    path: str | os.PathLike[str],
    forecast_mm_h: np.ndarray | Tensor,
    valid_times: Any,
    lead_times: Any,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    *,
    xy_units: str | None = "m",
    grid_mapping: dict[str, Any] | None = None,
    attrs: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a forecast as CF NetCDF (atomically): ``precip_intensity(time, y, x)`` in mm/h.

    ``time`` holds the valid times, stored as seconds since the forecast reference time
    (``valid_times[0] - lead_times[0]``, also the scalar ``forecast_reference_time``), so
    that pysteps' ``import_netcdf_pysteps`` reads the lead times; ``lead_time(time)`` holds
    them explicitly (CF ``forecast_period``). ``NaN`` pixels are written as ``_FillValue``.

    Args:
        path: the ``.nc`` file to write.
        forecast_mm_h: ``(L, H, W)`` rain rates in mm/h.
        valid_times: ``L`` valid times (``datetime64`` or strings).
        lead_times: ``L`` lead times (``timedelta64``, or numbers of minutes).
        x, y: ``W`` and ``H`` coordinates of the pixel centres (default pixel indices,
            without units).
        xy_units: units of ``x`` and ``y`` (``None``: unknown, no ``units`` attribute);
            ``"degrees"`` makes them longitude and latitude (``degrees_east``,
            ``degrees_north``), other units projection coordinates.
        grid_mapping: the grid's CRS as CF grid-mapping attributes (``grid_mapping_name``,
            ``crs_wkt``, ... as :attr:`convlstm.data.RadarArchive.grid_mapping` holds them),
            written as a scalar variable named after its ``grid_mapping_name`` (as pysteps'
            exporter names it; ``crs`` without one) that ``precip_intensity`` refers to.
        attrs: extra global attributes (``institution``, ``source``, ...).
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        ValueError: shapes disagree, or the valid times minus the lead times are not one
            reference time.

    Example:
        >>> import numpy as np, tempfile, pathlib, xarray as xr
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "nowcast.nc"
        >>> _ = write_cf_netcdf(path, np.ones((2, 3, 4)),
        ...     np.array(["2026-07-01T12:05", "2026-07-01T12:10"], dtype="datetime64[m]"), [5, 10])
        >>> with xr.open_dataset(path) as ds:
        ...     print(ds.precip_intensity.dims, ds.lead_time.values.astype("timedelta64[m]"))
        ('time', 'y', 'x') [ 5 10]
    """
    import xarray as xr

    values = (
        forecast_mm_h.detach().cpu().numpy() if isinstance(forecast_mm_h, Tensor) else forecast_mm_h
    )
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 3:
        raise ValueError(f"forecast_mm_h must be (L, H, W), got shape {values.shape}")
    steps, height, width = values.shape
    valid = _as_times(valid_times, "valid_times", "datetime64[s]").reshape(-1)
    leads = _as_times(lead_times, "lead_times", "timedelta64[s]").reshape(-1)
    if len(valid) != steps or len(leads) != steps:
        raise ValueError(
            f"valid_times ({len(valid)}) and lead_times ({len(leads)}) must have one entry per "
            f"forecast frame ({steps})"
        )
    reference = valid - leads
    if (reference != reference[0]).any():
        raise ValueError(
            f"valid_times - lead_times must be one reference time, got {reference.tolist()}"
        )
    ref = str(reference[0]).replace("T", " ")
    geographic = xy_units is not None and xy_units.lower().startswith("degree")
    axes = {}
    for name, given, size, geo in (("x", x, width, "longitude"), ("y", y, height, "latitude")):
        if given is None:  # pixel indices: no units, no standard name
            axes[name] = (name, np.arange(size, dtype=np.float64), {"long_name": f"{name} index"})
            continue
        centres = np.asarray(given, dtype=np.float64)
        if centres.shape != (size,):
            raise ValueError(f"{name} must have {size} values, one per pixel, got {centres.shape}")
        axis_attrs = {"standard_name": geo if geographic else f"projection_{name}_coordinate"}
        if xy_units is not None:
            axis_attrs["units"] = xy_units
            if geographic:
                axis_attrs["units"] = "degrees_east" if name == "x" else "degrees_north"
        axes[name] = (name, centres, axis_attrs)
    data_attrs = {"units": "mm h-1", "long_name": "forecast precipitation rate"}
    extra: dict[str, Any] = {}
    if grid_mapping:
        mapping = str(grid_mapping.get("grid_mapping_name") or "crs")
        data_attrs["grid_mapping"] = mapping
        extra[mapping] = ((), np.int32(0), dict(grid_mapping))
    dataset = xr.Dataset(
        {
            "precip_intensity": (("time", "y", "x"), values, data_attrs),
            **extra,
        },
        coords={
            "time": ("time", valid, {"standard_name": "time", "long_name": "valid time"}),
            "lead_time": ("time", leads, {"standard_name": "forecast_period"}),
            "forecast_reference_time": (
                (),
                reference[0],
                {"standard_name": "forecast_reference_time"},
            ),
            **axes,
        },
        attrs={"Conventions": "CF-1.8", "source": "convlstm", **(attrs or {})},
    )
    encoding: dict[str, dict[str, Any]] = {
        "time": {"units": f"seconds since {ref}", "dtype": "int64"},
        "lead_time": {"units": "minutes", "dtype": "float64"},
        "precip_intensity": {"_FillValue": np.float32(np.nan)},
    }
    target = _atomic._check_target(Path(path), overwrite)
    tmp = _atomic._sibling(target, "tmp")
    try:
        dataset.to_netcdf(tmp, encoding=encoding)
        _atomic._install(tmp, target, overwrite)
    finally:
        _atomic._remove(tmp)
    return Path(path)
