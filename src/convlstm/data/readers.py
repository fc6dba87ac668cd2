"""Frame readers for radar archives: ODIM HDF5, CF NetCDF / Zarr (xarray), GeoTIFF, pysteps'
importers.

A reader turns one file (or one time step of a file) into a rain-rate frame in mm/h, float32,
with ``NaN`` where the file has no valid value (outside the radar domain, ``nodata``,
``_FillValue``, ``GDAL_NODATA``). Only the requested rows and columns are read where the
format allows it (ODIM, NetCDF and Zarr read hyperslabs, uncompressed GeoTIFFs are
memory-mapped; compressed GeoTIFFs and pysteps' importers decode whole frames), so a crop of a
large composite costs the crop's memory.

Every reader has the same three methods:

* ``times(path)``: the timestamps stored in the file (``datetime64[s]`` array), or ``None``
  when the file holds one frame without a timestamp;
* ``shape(path)``: the frame size ``(H, W)``;
* ``read(path, index, rows, cols)``: frame ``index`` of the file (``None`` for single-frame
  files) restricted to ``rows`` and ``cols`` (slices), mm/h with ``NaN`` for no data.

Reflectivity is converted with the Z-R relation ``Z = a R^b`` (Marshall-Palmer ``a=200,
b=1.6`` by default, as in ``pysteps.utils.conversion.to_rainrate``):
``R = (10^(dBZ/10) / a)^(1/b)``.

NetCDF/Zarr and GeoTIFF readers also have ``coordinates(path)``: the ``(y, x)`` coordinates of
the pixel centres (1-D arrays of ``H`` and ``W`` values), or ``None`` when the file has none;
and ``georeference(path)``: the units of those coordinates (``"m"``, ``"km"``, ``"degrees"``,
or ``None`` when the file does not say) and the grid's CRS as CF grid-mapping attributes
(``grid_mapping_name``, ``crs_wkt``, ...), or ``None``.

The heavy libraries (h5py, xarray, tifffile, pysteps) are imported on first use only.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Any, ClassVar
from xml.etree import ElementTree

import numpy as np

from convlstm._pysteps import import_pysteps

__all__ = [
    "FORMATS",
    "GeoTiffReader",
    "OdimReader",
    "PystepsReader",
    "XarrayReader",
    "dbz_to_mm_h",
    "get_reader",
]

#: Format names accepted by :func:`get_reader`, besides ``"pysteps:<importer>"``.
FORMATS = ("odim", "netcdf", "zarr", "geotiff")
_EXTENSIONS = {
    ".h5": "odim",
    ".hdf5": "odim",
    ".hdf": "odim",
    ".odim": "odim",
    ".nc": "netcdf",
    ".nc4": "netcdf",
    ".cdf": "netcdf",
    ".netcdf": "netcdf",
    ".zarr": "zarr",
    ".tif": "geotiff",
    ".tiff": "geotiff",
}
_RATE_UNITS = {"mm/h", "mmh-1", "mm/hr", "mmhr-1", "kgm-2h-1", "mmperhour"}
_DBZ_UNITS = {"dbz"}


def dbz_to_mm_h(dbz: np.ndarray, a: float = 200.0, b: float = 1.6) -> np.ndarray:
    """Rain rate (mm/h) from reflectivity (dBZ) with ``Z = a R^b``: ``R = (10^(dBZ/10)/a)^(1/b)``.

    ``NaN`` stays ``NaN``. This is pysteps' ``to_rainrate`` for ``unit="dBZ"``,
    ``transform="dB"`` without its threshold step (values are converted, never zeroed).

    Args:
        dbz: reflectivity, any shape.
        a, b: Z-R coefficients.

    Returns:
        float64 rain rate, same shape.

    Example:
        >>> dbz_to_mm_h(np.array([23.0103, 39.0103])).round(4)
        array([ 1., 10.])
    """
    values = np.asarray(dbz, dtype=np.float64)
    return ((10.0 ** (values / 10.0)) / a) ** (1.0 / b)


def _is_dbz(units: str, where: str) -> bool:
    """Whether ``units`` name a reflectivity (dBZ) rather than a rain rate (mm/h)."""
    key = units.strip().lower().replace(" ", "").replace("**", "").replace("^", "")
    if key in _RATE_UNITS or key in _DBZ_UNITS:
        return key in _DBZ_UNITS
    raise ValueError(
        f"{where}: units {units!r} are neither a rain rate (mm/h, mm h-1, kg m-2 h-1) nor "
        "a reflectivity (dBZ); pass units='mm/h' or units='dBZ' to say what the values are"
    )


def _to_mm_h(values: np.ndarray, units: str, zr: tuple[float, float], where: str) -> np.ndarray:
    if _is_dbz(units, where):
        return dbz_to_mm_h(values, *zr).astype(np.float32)
    return values.astype(np.float32, copy=False)


def _optional(module: str, reading: str) -> Any:
    """The optional package ``module`` (an extra's) that reading ``reading`` needs, imported on
    first use; a missing one raises an ``ImportError`` naming it and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"reading {reading} needs {module} ({error}): pip install 'convlstm[nowcast]'"
        ) from error


class OdimReader:
    """ODIM HDF5 composites (OPERA, national services), read with h5py by hyperslab.

    The frame is ``datasetN/dataM/data`` whose ``what`` group (of ``dataM`` or of
    ``datasetN``) has ``quantity`` equal to ``quantity``; values are ``raw * gain +
    offset``. ``nodata`` pixels (not measured, outside the domain) become ``NaN``;
    ``undetect`` pixels (measured, no echo) are dry, 0 mm/h, as in pysteps'
    ``import_odim_hdf5``. ``DBZH``/``TH`` are converted with the Z-R relation; ``RATE`` is
    mm/h. The timestamp is the file's ``/what`` ``date`` (``YYYYMMDD``) and ``time``
    (``HHMMSS``).

    Args:
        quantity: ``"DBZH"``, ``"TH"``, ``"RATE"`` or ``None`` (the first of those found).
        zr: Z-R coefficients ``(a, b)``.
    """

    QUANTITIES = ("DBZH", "TH", "RATE")

    def __init__(self, quantity: str | None = None, zr: tuple[float, float] = (200.0, 1.6)):
        if quantity is not None and quantity not in self.QUANTITIES:
            raise ValueError(f"quantity must be one of {self.QUANTITIES} or None, got {quantity!r}")
        self.quantity = quantity
        self.zr = zr

    @contextlib.contextmanager
    def _open(self, path: str) -> Iterator[Any]:
        with _optional("h5py", "ODIM HDF5").File(path, "r") as handle:
            yield handle

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)

    def _find(self, handle: Any, path: str) -> tuple[Any, dict[str, Any]]:
        """The data array of the chosen quantity and its ``what`` attributes."""
        found: dict[str, tuple[Any, dict[str, Any]]] = {}
        for name, group in handle.items():
            if not name.startswith("dataset"):
                continue
            outer = dict(group["what"].attrs) if "what" in group else {}
            for sub, data in group.items():
                if not sub.startswith("data") or "data" not in data:
                    continue
                attrs = {**outer, **(dict(data["what"].attrs) if "what" in data else {})}
                quantity = self._text(attrs.get("quantity", ""))
                found.setdefault(quantity, (data["data"], attrs))
        wanted = [self.quantity] if self.quantity else list(self.QUANTITIES)
        for quantity in wanted:
            if quantity in found:
                return found[quantity]
        raise ValueError(
            f"{path}: no ODIM dataset with quantity {' or '.join(wanted)} "
            f"(found: {sorted(found) or 'none'})"
        )

    def times(self, path: str) -> np.ndarray | None:
        """The ``/what`` date and time as a 1-element ``datetime64[s]`` array, else ``None``."""
        with self._open(path) as handle:
            what = handle["what"].attrs if "what" in handle else {}
            if "date" not in what or "time" not in what:
                return None
            date, time = self._text(what["date"]), self._text(what["time"])
        stamp = f"{date[:4]}-{date[4:6]}-{date[6:8]}T{time[:2]}:{time[2:4]}:{time[4:6]}"
        return np.array([stamp], dtype="datetime64[s]")

    def shape(self, path: str) -> tuple[int, int]:
        """``(H, W)`` of the frame."""
        with self._open(path) as handle:
            data, _ = self._find(handle, path)
            return int(data.shape[0]), int(data.shape[1])

    def read(self, path: str, index: int | None, rows: slice, cols: slice) -> np.ndarray:
        """The frame (``index`` must be ``None`` or 0) in mm/h, ``NaN`` at ``nodata``."""
        if index not in (None, 0):
            raise IndexError(f"{path}: an ODIM file holds one frame, got index {index}")
        with self._open(path) as handle:
            data, attrs = self._find(handle, path)
            raw = data[rows, cols]
        gain, offset = float(attrs.get("gain", 1.0)), float(attrs.get("offset", 0.0))
        values = raw.astype(np.float64) * gain + offset
        nodata = raw == attrs["nodata"] if "nodata" in attrs else np.zeros(raw.shape, bool)
        undetect = raw == attrs["undetect"] if "undetect" in attrs else np.zeros(raw.shape, bool)
        quantity = self._text(attrs.get("quantity", ""))
        rain = values if quantity == "RATE" else dbz_to_mm_h(values, *self.zr)
        rain[undetect] = 0.0
        rain[nodata] = np.nan
        return rain.astype(np.float32)


class XarrayReader:
    """CF NetCDF files and Zarr stores read lazily with xarray.

    The variable (``variable``, or the only data variable with at least two dimensions)
    has dimensions ``(time, y, x)`` or ``(y, x)`` (any names; the last two are the frame;
    other length-1 dimensions are dropped). ``_FillValue`` / ``missing_value`` pixels and
    ``NaN`` become ``NaN``; ``scale_factor`` / ``add_offset`` are applied (xarray's CF
    decoding). Its ``units`` attribute (or ``units``) says whether values are mm/h or dBZ.

    Args:
        engine: ``"netcdf"`` (netCDF4 or h5netcdf, whichever is installed) or ``"zarr"``.
        variable: name of the data variable.
        units: overrides the variable's ``units`` attribute.
        zr: Z-R coefficients ``(a, b)`` for dBZ.
    """

    def __init__(
        self,
        engine: str = "netcdf",
        variable: str | None = None,
        units: str | None = None,
        zr: tuple[float, float] = (200.0, 1.6),
    ):
        if engine not in ("netcdf", "zarr"):
            raise ValueError(f"engine must be 'netcdf' or 'zarr', got {engine!r}")
        self.engine, self.variable, self.units, self.zr = engine, variable, units, zr
        self._consolidated: dict[str, bool] = {}

    @contextlib.contextmanager
    def _open(self, path: str) -> Iterator[Any]:
        xr = _optional("xarray", "NetCDF/Zarr")
        if self.engine == "netcdf":
            with xr.open_dataset(path, chunks=None) as dataset:
                yield dataset
            return
        if path not in self._consolidated:  # stores written without consolidated metadata
            try:
                xr.open_dataset(path, engine="zarr", chunks=None, consolidated=True).close()
                self._consolidated[path] = True
            except (KeyError, ValueError, OSError):
                self._consolidated[path] = False
        consolidated = self._consolidated[path]
        with xr.open_dataset(path, engine="zarr", chunks=None, consolidated=consolidated) as ds:
            yield ds

    def _variable(self, dataset: Any, path: str) -> Any:
        if self.variable is not None:
            if self.variable not in dataset.data_vars:
                raise ValueError(
                    f"{path}: no variable {self.variable!r}; variables: {sorted(dataset.data_vars)}"
                )
            var = dataset[self.variable]
        else:
            candidates = [name for name, v in dataset.data_vars.items() if v.ndim >= 2]
            if len(candidates) != 1:
                raise ValueError(
                    f"{path}: pass variable=... to choose among the data variables {candidates}"
                )
            var = dataset[candidates[0]]
        extra = [d for d in var.dims[:-2] if d != self._time_dim(var) and var.sizes[d] == 1]
        var = var.isel({d: 0 for d in extra})
        if var.ndim not in (2, 3) or (var.ndim == 3 and self._time_dim(var) != var.dims[0]):
            raise ValueError(
                f"{path}: variable {var.name!r} must have dimensions (time, y, x) or (y, x), "
                f"found {var.dims}"
            )
        return var

    @staticmethod
    def _time_dim(var: Any) -> str | None:
        for dim in var.dims[:-2]:
            if dim in var.coords and np.issubdtype(var[dim].dtype, np.datetime64):
                return str(dim)
        return "time" if "time" in var.dims[:-2] else None

    def times(self, path: str) -> np.ndarray | None:
        """The time coordinate (``datetime64[s]``), or ``None`` for a single ``(y, x)`` frame."""
        with self._open(path) as dataset:
            var = self._variable(dataset, path)
            if var.ndim == 2:
                return None
            dim = var.dims[0]
            if dim not in var.coords or not np.issubdtype(var[dim].dtype, np.datetime64):
                raise ValueError(f"{path}: the {dim!r} coordinate holds no CF times")
            return var[dim].values.astype("datetime64[s]")

    def shape(self, path: str) -> tuple[int, int]:
        """``(H, W)`` of the frames."""
        with self._open(path) as dataset:
            var = self._variable(dataset, path)
            return int(var.shape[-2]), int(var.shape[-1])

    def coordinates(self, path: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``(y, x)`` coordinate values of the frame's dimensions, if the file has them."""
        with self._open(path) as dataset:
            var = self._variable(dataset, path)
            ydim, xdim = var.dims[-2:]
            if ydim in var.coords and xdim in var.coords:
                return var[ydim].values, var[xdim].values
            return None

    def georeference(self, path: str) -> tuple[str | None, dict[str, Any] | None]:
        """The ``units`` attribute of the x coordinate (``None`` without one) and the
        attributes of the variable named by the frame variable's CF ``grid_mapping``
        attribute (``None`` without one)."""
        with self._open(path) as dataset:
            var = self._variable(dataset, path)
            xdim = var.dims[-1]
            units = var[xdim].attrs.get("units") if xdim in var.coords else None
            name = var.attrs.get("grid_mapping", var.encoding.get("grid_mapping"))
            mapping = dict(dataset[name].attrs) if name in dataset.variables else None
        return (None if units is None else str(units)), mapping

    def read(self, path: str, index: int | None, rows: slice, cols: slice) -> np.ndarray:
        """Frame ``index`` (``None`` for a ``(y, x)`` variable) in mm/h, ``NaN`` for no data."""
        with self._open(path) as dataset:
            var = self._variable(dataset, path)
            ydim, xdim = var.dims[-2:]
            selection: dict[Any, Any] = {ydim: rows, xdim: cols}
            if var.ndim == 3:
                selection[var.dims[0]] = 0 if index is None else index
            units = self.units or var.attrs.get("units")
            values = np.asarray(var.isel(selection).values, dtype=np.float64)
        if units is None:
            raise ValueError(
                f"{path}: variable {var.name!r} has no units attribute; pass units='mm/h' "
                "or units='dBZ'"
            )
        return _to_mm_h(values, str(units), self.zr, path)


class GeoTiffReader:
    """Single-band GeoTIFF frames, one file per time step, read with tifffile (no GDAL).

    The frame is the file's one full-resolution image (GDAL's internal overviews are
    skipped); a file of several images or bands is refused. Values are ``raw * scale +
    offset`` with the band's ``scale`` and ``offset`` of the ``GDAL_METADATA`` tag (42112),
    as GDAL writes them (``<Item name="SCALE" sample="0" role="scale">0.5</Item>``).
    ``raw`` pixels equal to the ``GDAL_NODATA`` tag (42113), ``NaN`` pixels and the pixels
    that GDAL's internal mask (a ``FILETYPE_MASK`` image, ``GDAL_TIFF_INTERNAL_MASK``) marks
    invalid become ``NaN``. The values are mm/h or reflectivity in dBZ (converted with the
    Z-R relation): ``units``, else the band's ``unittype`` item (GDAL's ``SetUnitType``,
    ``gdal_edit -units``). A GeoTIFF has no standard timestamp: the archive reads it from the
    file names (``time_format``).

    Args:
        units: ``"mm/h"`` or ``"dBZ"`` (or another spelling of either); overrides the file's
            ``unittype``.
        zr: Z-R coefficients ``(a, b)`` for dBZ.

    Example:
        >>> import pathlib, tempfile, tifffile
        >>> path = str(pathlib.Path(tempfile.mkdtemp()) / "dbz_202607011200.tif")
        >>> dbz = np.array([[23.0103, 39.0103], [-99.0, np.nan]], dtype=np.float32)
        >>> tifffile.imwrite(path, dbz, extratags=[(42113, "s", 0, "-99", True)])  # nodata
        >>> GeoTiffReader(units="dBZ").read(path, None, slice(None), slice(None)).round(3)
        array([[ 1., 10.],
               [nan, nan]], dtype=float32)
    """

    _PIXEL_IS_POINT = 2  # GTRasterTypeGeoKey (1025): 1 PixelIsArea (the default), 2 PixelIsPoint
    _GEOGRAPHIC = 2  # GTModelTypeGeoKey (1024): 1 projected, 2 geographic (longitude, latitude)
    _USER_DEFINED = 32767  # a GeoKey value: not an EPSG code
    # EPSG unit codes of ProjLinearUnitsGeoKey (3076) and GeogAngularUnitsGeoKey (2054)
    _UNITS: ClassVar[dict[int, str]] = {9001: "m", 9036: "km", 9002: "ft", 9102: "degrees"}

    def __init__(self, units: str | None = None, zr: tuple[float, float] = (200.0, 1.6)):
        if units is not None:
            _is_dbz(units, "GeoTiffReader")
        self.units, self.zr = units, zr

    @contextlib.contextmanager
    def _open(self, path: str) -> Iterator[tuple[Any, Any]]:
        """The file's one full-resolution single-band image and its mask image, or ``None``
        without a mask (tifffile pages)."""
        with _optional("tifffile", "GeoTIFF").TiffFile(path) as tif:
            # subfile type bit 0: a reduced-resolution overview, bit 2: a transparency mask
            images = [page for page in tif.pages if not page.subfiletype & 0b101]
            if len(images) != 1 or images[0].samplesperpixel != 1 or images[0].imagedepth != 1:
                raise ValueError(
                    f"{path}: a GeoTIFF frame must be one single-band raster, found "
                    f"{len(images)} image(s) of shape {[page.shape for page in images]}"
                )
            masks = [page for page in tif.pages if page.subfiletype == 0b100]
            yield images[0], masks[0] if masks else None

    @staticmethod
    def _band(page: Any, path: str) -> dict[str, str]:
        """The band's ``scale``, ``offset`` and ``unittype`` items of ``GDAL_METADATA``."""
        text = page.tags.valueof(42112)
        if not text:
            return {}
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as error:
            raise ValueError(f"{path}: the GDAL_METADATA tag is not XML ({error})") from None
        band = {}
        for item in root.iter("Item"):
            key = (item.get("role") or item.get("name") or "").lower()
            if item.get("sample") in (None, "0") and key in ("scale", "offset", "unittype"):
                band[key] = (item.text or "").strip()
        return band

    @staticmethod
    def _number(text: str, what: str, path: str) -> float:
        try:
            return float(text.replace(",", "."))  # GDAL reads a comma decimal separator too
        except ValueError:
            raise ValueError(f"{path}: {what} must be a number, got {text!r}") from None

    def times(self, path: str) -> None:
        """A GeoTIFF holds no standard timestamp: ``None`` (name the files' time format)."""
        return None

    def shape(self, path: str) -> tuple[int, int]:
        """``(H, W)`` of the frame."""
        with self._open(path) as (page, _):
            return int(page.imagelength), int(page.imagewidth)

    def coordinates(self, path: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``(y, x)`` model coordinates of the pixel centres (``H`` and ``W`` values, in
        the units of the file's CRS, e.g. metres), from ModelPixelScaleTag (33550) and a
        single ModelTiepointTag (33922); ``None`` without them. The tiepoint ties a raster
        point to the pixel's upper-left corner (``PixelIsArea``, GeoTIFF's default) or to its
        centre (``GTRasterTypeGeoKey`` ``PixelIsPoint``)."""
        with self._open(path) as (page, _):
            scale, tiepoint = page.tags.valueof(33550), page.tags.valueof(33922)
            if scale is None or tiepoint is None or len(tiepoint) != 6:
                return None
            keys = page.geotiff_tags or {}
            height, width = int(page.imagelength), int(page.imagewidth)
        centre = 0.0 if keys.get("GTRasterTypeGeoKey") == self._PIXEL_IS_POINT else 0.5
        i, j, _, x, y, _ = (float(v) for v in tiepoint)
        columns = x + (np.arange(width) + centre - i) * float(scale[0])
        rows = y - (np.arange(height) + centre - j) * float(scale[1])  # rows go south
        return rows, columns

    def georeference(self, path: str) -> tuple[str | None, dict[str, Any] | None]:
        """The units of :meth:`coordinates` and the CRS from the GeoKeyDirectory: the units
        of ``ProjLinearUnitsGeoKey`` (``GeogAngularUnitsGeoKey`` for a geographic CRS), else
        of the EPSG CRS; the CRS as CF grid-mapping attributes (pyproj's ``CRS.to_cf()``)
        when ``ProjectedCSTypeGeoKey`` (``GeographicTypeGeoKey``) is an EPSG code and pyproj
        is installed (the ``nowcast`` extra), else ``None``."""
        with self._open(path) as (page, _):
            keys = page.geotiff_tags or {}
        geographic = keys.get("GTModelTypeGeoKey") == self._GEOGRAPHIC
        prefix = "Geographic" if geographic else "ProjectedCS"
        code = keys.get(f"{prefix}TypeGeoKey")
        unit = keys.get("GeogAngularUnitsGeoKey" if geographic else "ProjLinearUnitsGeoKey")
        units = None if unit is None else self._UNITS.get(int(unit))
        mapping = None
        if code is not None and int(code) != self._USER_DEFINED:
            try:
                from pyproj import CRS
                from pyproj.exceptions import CRSError
            except ImportError:
                return units, None
            try:
                crs = CRS.from_epsg(int(code))
            except CRSError:
                return units, None
            mapping = crs.to_cf()
            if unit is None:
                units = self._UNITS.get(int(crs.axis_info[0].unit_code or 0))
        return units, mapping

    def read(self, path: str, index: int | None, rows: slice, cols: slice) -> np.ndarray:
        """The frame (``index`` must be ``None`` or 0) in mm/h, ``NaN`` at nodata, ``NaN`` and
        masked pixels; an uncompressed file is memory-mapped, so only ``rows`` x ``cols`` are
        read."""
        if index not in (None, 0):
            raise IndexError(f"{path}: a GeoTIFF file holds one frame, got index {index}")
        with self._open(path) as (page, mask):
            if page.is_memmappable:
                mapped = _optional("tifffile", "GeoTIFF").memmap(path, page=page.index, mode="r")
                raw = np.array(mapped[rows, cols])
            else:
                raw = page.asarray()[rows, cols]
            invalid = None if mask is None else mask.asarray()[rows, cols] == 0
            nodata, band = page.tags.valueof(42113), self._band(page, path)
        units = self.units or band.get("unittype")
        if not units:
            raise ValueError(
                f"{path}: the GeoTIFF names no units (no band unittype in its GDAL_METADATA "
                "tag); pass units='mm/h' or units='dBZ'"
            )
        scale = self._number(band.get("scale", "1"), "the GDAL_METADATA scale", path)
        offset = self._number(band.get("offset", "0"), "the GDAL_METADATA offset", path)
        values = raw.astype(np.float64) * scale + offset
        if nodata is not None:
            target = self._number(nodata, "the GDAL_NODATA tag", path)
            # GDAL compares in the raster's type: a float32 raster holds float32(nodata)
            values[raw == (raw.dtype.type(target) if raw.dtype.kind == "f" else target)] = np.nan
        if invalid is not None:
            values[invalid] = np.nan
        return _to_mm_h(values, units, self.zr, path)


class PystepsReader:
    """Any format pysteps imports: ``pysteps.io.get_method(name, "importer")``.

    The importer reads the whole frame, which is converted to mm/h with pysteps'
    ``pysteps.utils.conversion.to_rainrate`` (Z-R ``zr`` for reflectivity) and then cropped.
    Timestamps come from the file names (pass ``time_format`` to the archive).

    Args:
        name: pysteps importer name, e.g. ``"odim_hdf5"``, ``"fmi_pgm"``, ``"mrms_grib"``.
        importer_kwargs: keyword arguments of the importer (e.g. ``qty="DBZH"``).
        zr: Z-R coefficients ``(a, b)``.
    """

    def __init__(
        self,
        name: str,
        importer_kwargs: dict[str, Any] | None = None,
        zr: tuple[float, float] = (200.0, 1.6),
    ):
        self.name, self.importer_kwargs, self.zr = name, dict(importer_kwargs or {}), zr

    def _frame(self, path: str) -> np.ndarray:
        pysteps = import_pysteps()
        from pysteps.utils.conversion import to_rainrate

        importer = pysteps.io.get_method(self.name, "importer")
        precip, _, metadata = importer(path, **self.importer_kwargs)
        rain, _ = to_rainrate(np.asarray(precip, dtype=np.float64), metadata, *self.zr)
        return np.asarray(rain, dtype=np.float32)

    def times(self, path: str) -> None:
        """pysteps' importers return no timestamp: ``None`` (name the files' time format)."""
        return None

    def shape(self, path: str) -> tuple[int, int]:
        """``(H, W)`` of the frame (reads it)."""
        frame = self._frame(path)
        return int(frame.shape[-2]), int(frame.shape[-1])

    def read(self, path: str, index: int | None, rows: slice, cols: slice) -> np.ndarray:
        """The frame in mm/h (``NaN`` where pysteps gives ``NaN``), cropped."""
        if index not in (None, 0):
            raise IndexError(f"{path}: a pysteps importer reads one frame, got index {index}")
        return self._frame(path)[rows, cols]


Reader = OdimReader | XarrayReader | GeoTiffReader | PystepsReader


def get_reader(
    format: str | None,
    path: str | os.PathLike[str],
    *,
    variable: str | None = None,
    units: str | None = None,
    quantity: str | None = None,
    zr: tuple[float, float] = (200.0, 1.6),
    importer_kwargs: dict[str, Any] | None = None,
) -> Reader:
    """The reader of ``format`` (``None``: from ``path``'s extension).

    Args:
        format: ``"odim"``, ``"netcdf"``, ``"zarr"``, ``"geotiff"``, ``"pysteps:<importer>"``
            or ``None`` (``.h5``/``.hdf5``/``.hdf``/``.odim``: ODIM, ``.nc``/``.nc4``/``.cdf``/
            ``.netcdf``: NetCDF, ``.zarr``: Zarr, ``.tif``/``.tiff``: GeoTIFF).
        path: a file of the archive (used to guess the format).
        variable: for NetCDF/Zarr (see :class:`XarrayReader`).
        units: for NetCDF/Zarr and GeoTIFF (see :class:`GeoTiffReader`).
        quantity: for ODIM (see :class:`OdimReader`).
        zr: Z-R coefficients ``(a, b)``.
        importer_kwargs: for ``"pysteps:<importer>"``.

    Raises:
        ValueError: unknown format, or no format given and the extension is not known.

    Example:
        >>> type(get_reader(None, "radar/202607011200.nc")).__name__
        'XarrayReader'
    """
    if format is None:
        suffix = os.path.splitext(os.fspath(path).rstrip("/"))[1].lower()
        if suffix not in _EXTENSIONS:
            raise ValueError(
                f"cannot tell the format of {os.fspath(path)!r} from its extension; pass "
                f"format= one of {FORMATS} or 'pysteps:<importer>'"
            )
        format = _EXTENSIONS[suffix]
    if format == "odim":
        return OdimReader(quantity, zr)
    if format in ("netcdf", "zarr"):
        return XarrayReader(format, variable, units, zr)
    if format == "geotiff":
        return GeoTiffReader(units, zr)
    if isinstance(format, str) and format.startswith("pysteps:") and format[8:]:
        return PystepsReader(format[8:], importer_kwargs, zr)
    raise ValueError(
        f"format must be one of {FORMATS}, 'pysteps:<importer>' or None, got {format!r}"
    )
