"""Real radar archives as forecasting datasets: :class:`RadarArchive`, :class:`RadarArchiveDataset`.

A folder of timestamped files (ODIM HDF5, CF NetCDF, Zarr, single-band GeoTIFF, or anything
pysteps imports), or one NetCDF/Zarr file with a time axis, becomes a time-indexed archive of
rain-rate frames in mm/h on a regular time step. Missing time steps are gaps that no window
spans; pixels without data are masked.

**The mask contract.** Each item of :class:`RadarArchiveDataset` is ``(inputs, targets,
mask)``: ``inputs`` ``(T_in, 1, h, w)`` and ``targets`` ``(T_out, 1, h, w)`` float32, with
masked pixels set to ``fill_value`` (mm/h, default 0: dry) *before* ``transform``, so they
are finite; ``mask`` ``(T_in + T_out, 1, h, w)`` float32, 1 where the frame has data and 0
where it has none (``NaN``, ODIM ``nodata``, ``_FillValue``, GeoTIFF ``GDAL_NODATA`` and
internal mask). A loss or metric weights the targets by ``mask[T_in:]`` (see
:mod:`convlstm.masking`). With ``return_mask=False`` items are the usual ``(inputs,
targets)`` pair.

Example:
    >>> import numpy as np, xarray as xr, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> times = np.arange("2026-07-01T12:00", "2026-07-01T12:40", 5, dtype="datetime64[m]")
    >>> rain = np.ones((len(times), 6, 8), dtype=np.float32)
    >>> rain[:, 0, 0] = np.nan  # a pixel without data
    >>> xr.Dataset({"rr": (("time", "y", "x"), rain, {"units": "mm/h"})},
    ...            coords={"time": times}).to_netcdf(folder / "radar.nc")
    >>> ds = RadarArchiveDataset(folder / "radar.nc", input_len=2, output_len=2, crop=(4, 4))
    >>> len(ds), [tuple(t.shape) for t in ds[0]]
    (5, [(2, 1, 4, 4), (2, 1, 4, 4), (4, 1, 4, 4)])
    >>> round(ds.masked_fraction(), 4)  # 1 of 48 pixels
    0.0208
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._checks import (
    check_float,
    check_index,
    check_int,
    check_sample_bytes,
    check_seed,
    check_size,
)
from .arrays import SPLITS, split_record
from .readers import Reader, get_reader
from .transforms import Transform, resolve_transform

__all__ = ["RadarArchive", "RadarArchiveDataset", "parse_time"]

_CODES = {"%Y": r"\d{4}", "%y": r"\d{2}", "%m": r"\d{2}", "%d": r"\d{2}", "%H": r"\d{2}"}
_CODES.update({"%M": r"\d{2}", "%S": r"\d{2}", "%j": r"\d{3}", "%%": "%"})


def parse_time(name: str, time_format: str) -> np.datetime64:
    """The timestamp in a file name, found with a ``strftime`` format (``%Y %y %m %d %H %M
    %S %j``); literal text of the format must appear in the name as well.

    Raises:
        ValueError: the name contains no such timestamp.

    Example:
        >>> parse_time("T_PAAH21_C_EUOC_20260701121500.hdf", "%Y%m%d%H%M%S")
        np.datetime64('2026-07-01T12:15:00')
    """
    pattern = "".join(_CODES.get(part, re.escape(part)) for part in re.split(r"(%.)", time_format))
    for code in re.findall(r"%.", time_format):
        if code not in _CODES:
            raise ValueError(f"time_format {time_format!r}: {code} is not one of {sorted(_CODES)}")
    match = re.search(pattern, os.path.basename(name))
    if match is None:
        raise ValueError(f"file name {name!r} contains no timestamp of format {time_format!r}")
    return np.datetime64(datetime.strptime(match.group(0), time_format), "s")


def _timestep(value: object) -> np.timedelta64 | None:
    if value is None:
        return None
    if isinstance(value, timedelta | np.timedelta64):
        step = np.timedelta64(value).astype("timedelta64[s]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        step = np.timedelta64(round(check_float(value, "timestep", low=0) * 60), "s")
    else:
        raise TypeError(f"timestep must be minutes or a timedelta, got {value!r}")
    if step <= np.timedelta64(0, "s"):
        raise ValueError(f"timestep must be positive, got {value!r}")
    return step


class RadarArchive:
    """Rain-rate frames (mm/h) of radar files, indexed by time on a regular time step.

    Args:
        source: a folder (its files matching ``pattern``), a file (NetCDF/Zarr with a time
            axis, or a single frame), or a list of files.
        pattern: ``glob`` pattern of the files in a folder (``**`` recurses).
        time_format: ``strftime`` format of the timestamp in the file names (see
            :func:`parse_time`); ``None`` reads timestamps from the files (ODIM ``/what``
            date and time, the NetCDF/Zarr time coordinate). GeoTIFFs and pysteps'
            importers need it.
        format: ``"odim"``, ``"netcdf"``, ``"zarr"``, ``"geotiff"``, ``"pysteps:<importer>"``
            or ``None`` (from the extension; ``.tif``/``.tiff`` are GeoTIFF), see
            :func:`~convlstm.data.readers.get_reader`.
        variable: NetCDF/Zarr variable.
        units: ``"mm/h"`` or ``"dBZ"``, overriding the NetCDF/Zarr variable's ``units`` or
            the GeoTIFF band's ``unittype``.
        quantity: ODIM quantity (``"DBZH"``, ``"TH"``, ``"RATE"``; default the first found).
        timestep: the time step, minutes or a timedelta; ``None`` infers it as the most
            common interval between frames.
        zr: Z-R coefficients ``(a, b)`` of ``Z = a R^b`` for reflectivity.
        importer_kwargs: keyword arguments of a pysteps importer.

    Raises:
        ValueError: no files, a file without timestamp, duplicate timestamps, frames of
            different sizes, or times off the regular step (the message names them).

    Attributes:
        times: ``datetime64[s]`` of every existing frame, increasing.
        timestep: ``timedelta64[s]``.
        slots: for every step from the first to the last time, the frame index or -1 (a gap).
        shape: ``(H, W)``.
        coordinates: ``(y, x)`` coordinates of the pixel centres (``H`` and ``W`` values:
            NetCDF/Zarr coordinate variables, GeoTIFF pixel scale and tiepoint), or ``None``.
        coordinate_units: units of :attr:`coordinates` (``"m"``, ``"km"``, ``"degrees"``, the
            NetCDF/Zarr coordinate's ``units``), or ``None`` when the files do not say.
        grid_mapping: the grid's CRS as CF grid-mapping attributes (the NetCDF/Zarr
            ``grid_mapping`` variable's, or from a GeoTIFF's EPSG code with pyproj), or
            ``None``.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        pattern: str = "*",
        time_format: str | None = None,
        format: str | None = None,
        variable: str | None = None,
        units: str | None = None,
        quantity: str | None = None,
        timestep: float | timedelta | np.timedelta64 | None = None,
        zr: tuple[float, float] = (200.0, 1.6),
        importer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        files = self._files(source, pattern)
        zr = (check_float(zr[0], "zr[0]", low=0, low_open=True), check_float(zr[1], "zr[1]"))
        self.reader: Reader = get_reader(
            format,
            files[0],
            variable=variable,
            units=units,
            quantity=quantity,
            zr=zr,
            importer_kwargs=importer_kwargs,
        )
        frames: list[tuple[np.datetime64, str, int | None]] = []
        for path in files:
            if time_format is not None:
                frames.append((parse_time(path, time_format), path, None))
                continue
            stamps = self.reader.times(path)
            if stamps is None:
                raise ValueError(
                    f"{path} holds no timestamp: pass time_format= to read it from the file names"
                )
            if len(stamps) == 1:
                frames.append((stamps[0], path, None))
            else:
                frames.extend((t, path, i) for i, t in enumerate(stamps))
        frames.sort(key=lambda frame: frame[0])
        self._frames = frames
        self.times = np.array([f[0] for f in frames], dtype="datetime64[s]")
        duplicates = self.times[1:][self.times[1:] == self.times[:-1]]
        if len(duplicates):
            raise ValueError(f"duplicate timestamps in the archive: {duplicates[:5].tolist()}")
        self.timestep = _timestep(timestep) or self._infer_step()
        offsets = (self.times - self.times[0]) / self.timestep
        off = np.flatnonzero(np.abs(offsets - np.round(offsets)) > 1e-9)
        if len(off):
            raise ValueError(
                f"the times are not on a regular step of {self.timestep}: "
                f"{[str(t) for t in self.times[off[:5]]]} fall between steps from {self.times[0]}"
            )
        self.slots = np.full(round(offsets[-1]) + 1, -1, dtype=np.int64)
        self.slots[np.round(offsets).astype(np.int64)] = np.arange(len(frames))
        self.shape = self.reader.shape(files[0])
        for path in {files[-1], files[len(files) // 2]}:
            if self.reader.shape(path) != self.shape:
                raise ValueError(
                    f"{path} has frames of size {self.reader.shape(path)}, {files[0]} of "
                    f"size {self.shape}: an archive needs one grid"
                )
        self.coordinates = getattr(self.reader, "coordinates", lambda _: None)(files[0])
        georeference = getattr(self.reader, "georeference", lambda _: (None, None))(files[0])
        self.coordinate_units: str | None = georeference[0]
        self.grid_mapping: dict[str, Any] | None = georeference[1]

    @staticmethod
    def _files(source: Any, pattern: str) -> list[str]:
        if isinstance(source, str | os.PathLike):
            path = os.fspath(source)
            if os.path.isdir(path) and not path.rstrip("/").endswith(".zarr"):
                files = sorted(glob.glob(os.path.join(path, pattern), recursive=True))
                files = [
                    f
                    for f in files
                    if not os.path.basename(f).startswith(".")
                    and (os.path.isfile(f) or f.rstrip("/").endswith(".zarr"))
                ]
                if not files:
                    raise ValueError(f"no files match {pattern!r} in the folder {path}")
                return files
            if not os.path.exists(path):
                raise FileNotFoundError(f"radar archive source {path} does not exist")
            return [path]
        files = [os.fspath(f) for f in source]
        missing = [f for f in files if not os.path.exists(f)]
        if not files or missing:
            raise FileNotFoundError(f"source must list existing files; missing: {missing[:5]}")
        return files

    def _infer_step(self) -> np.timedelta64:
        if len(self.times) < 2:
            raise ValueError("an archive of one frame has no time step: pass timestep=")
        intervals, counts = np.unique(np.diff(self.times), return_counts=True)
        return intervals[np.argmax(counts)]

    def __len__(self) -> int:
        """Number of existing frames."""
        return len(self._frames)

    def gaps(self) -> np.ndarray:
        """The missing times between the first and the last frame (``datetime64[s]``)."""
        missing = np.flatnonzero(self.slots < 0)
        return self.times[0] + missing * self.timestep

    def read(self, frame: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Frame ``frame`` (an index into :attr:`times`) as float32 mm/h ``(h, w)``, ``NaN``
        where there is no data; only ``rows`` x ``cols`` are read."""
        _, path, index = self._frames[frame]
        return self.reader.read(path, index, rows, cols)


class RadarArchiveDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Windows of consecutive radar frames (mm/h) with their validity mask.

    A window is ``input_len + output_len`` consecutive time steps, all present (a missing
    file is a gap no window spans), starting every ``stride`` steps. ``split`` keeps one
    contiguous block of time steps as cut by :func:`~convlstm.data.arrays.split_record`.

    With ``crop=(h, w)`` each item is a random ``h x w`` crop (drawn from ``(seed, epoch,
    index)``: reproducible, new after :meth:`set_epoch`), for training on large composites;
    ``crop=None`` returns the whole domain, for evaluation. Only the window's frames (and
    only the crop) are read, per item: memory is bounded by one item.

    Args:
        source: a :class:`RadarArchive`, or its ``source`` (then ``archive_kwargs`` build it).
        input_len, output_len: frames of inputs and targets.
        crop: ``(h, w)`` or an int, or ``None`` for the whole frame.
        stride: steps between window starts.
        split, split_fractions, split_gap: as in :class:`~convlstm.data.ArrayDataset`.
        transform: applied to inputs and targets after filling (``"log"``, ``"dbz"``, a
            callable or ``None``: mm/h).
        fill_value: mm/h put at masked pixels.
        return_mask: items are ``(inputs, targets, mask)`` (default) or ``(inputs, targets)``.
        seed: seed of the crops.
        **archive_kwargs: :class:`RadarArchive` arguments when ``source`` is not one.

    Returns (per item):
        ``inputs`` ``(input_len, 1, h, w)``, ``targets`` ``(output_len, 1, h, w)``, and
        ``mask`` ``(input_len + output_len, 1, h, w)`` (1 valid, 0 masked), float32.
    """

    def __init__(
        self,
        source: RadarArchive | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        input_len: int,
        output_len: int,
        *,
        crop: int | tuple[int, int] | None = None,
        stride: int = 1,
        split: str | None = None,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        split_gap: int | None = None,
        transform: str | Transform | None = None,
        fill_value: float = 0.0,
        return_mask: bool = True,
        seed: int = 0,
        **archive_kwargs: Any,
    ) -> None:
        if isinstance(source, RadarArchive):
            if archive_kwargs:
                raise TypeError(f"archive arguments {sorted(archive_kwargs)} need a path source")
            self.archive = source
        else:
            self.archive = RadarArchive(source, **archive_kwargs)
        self.input_len = check_int(input_len, "input_len")
        self.output_len = check_int(output_len, "output_len")
        self.stride = check_int(stride, "stride")
        self.fill_value = check_float(fill_value, "fill_value")
        self.transform = resolve_transform(transform)
        self.return_mask = bool(return_mask)
        self.seed = check_seed(seed)
        self.epoch = 0
        height, width = self.archive.shape
        self.crop = None if crop is None else check_size(crop, "crop")
        if self.crop is not None and (self.crop[0] > height or self.crop[1] > width):
            raise ValueError(f"crop {self.crop} is larger than the frames {self.archive.shape}")
        window = self.input_len + self.output_len
        check_sample_bytes((window, 2, *(self.crop or self.archive.shape)), "RadarArchiveDataset")
        steps = range(len(self.archive.slots))
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
            steps = split_record(len(steps), window, split_fractions, split_gap)[split]
        present = np.concatenate([[0], np.cumsum(self.archive.slots >= 0)])
        self._starts = [
            s
            for s in range(steps.start, steps.stop - window + 1, self.stride)
            if present[s + window] - present[s] == window
        ]
        if not self._starts:
            raise ValueError(
                f"the archive ({len(self.archive)} frames, {len(self.archive.gaps())} gaps) has "
                f"no {window} consecutive time steps without a gap"
                + (f" in split {split!r}" if split else "")
            )
        self._masked: float | None = None

    def __len__(self) -> int:
        return len(self._starts)

    def set_epoch(self, epoch: int) -> None:
        """Draw new crops: items depend on ``(seed, epoch, index)``."""
        self.epoch = check_int(epoch, "epoch", minimum=0)

    def window_times(self, index: int) -> np.ndarray:
        """The ``datetime64[s]`` times of window ``index``'s frames, inputs then targets."""
        index = check_index(index, len(self), "RadarArchiveDataset")
        slots = self.archive.slots[
            self._starts[index] : self._starts[index] + self.input_len + self.output_len
        ]
        return self.archive.times[slots]

    def _region(self, index: int) -> tuple[slice, slice]:
        if self.crop is None:
            return slice(None), slice(None)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        top = int(rng.integers(0, self.archive.shape[0] - self.crop[0] + 1))
        left = int(rng.integers(0, self.archive.shape[1] - self.crop[1] + 1))
        return slice(top, top + self.crop[0]), slice(left, left + self.crop[1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        index = check_index(index, len(self), "RadarArchiveDataset")
        rows, cols = self._region(index)
        start = self._starts[index]
        slots = self.archive.slots[start : start + self.input_len + self.output_len]
        frames = np.stack([self.archive.read(int(s), rows, cols) for s in slots])[:, None]
        valid = np.isfinite(frames)
        values = torch.from_numpy(np.where(valid, frames, np.float32(self.fill_value)))
        if self.transform is not None:
            values = self.transform(values)
        inputs, targets = values[: self.input_len], values[self.input_len :]
        if not self.return_mask:
            return inputs, targets
        return inputs, targets, torch.from_numpy(valid.astype(np.float32))

    def masked_fraction(self) -> float:
        """Fraction of masked pixels over the whole domain of the frames the windows use.

        Reads those frames once, one at a time (then cached).
        """
        if self._masked is None:
            window = self.input_len + self.output_len
            used = sorted(
                {int(self.archive.slots[s + k]) for s in self._starts for k in range(window)}
            )
            masked = sum(int(np.isnan(self.archive.read(f)).sum()) for f in used)
            self._masked = masked / (len(used) * self.archive.shape[0] * self.archive.shape[1])
        return self._masked
