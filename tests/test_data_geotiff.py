"""Radar archives of GeoTIFF frames: files written with tifffile carrying the tags GDAL writes
(ModelPixelScale, ModelTiepoint, a GeoKeyDirectory of a projected CRS, GDAL_NODATA, and
GDAL_METADATA band scale, offset and unit type), read back in mm/h with gaps, masks and
coordinates checked against numpy in float64."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from convlstm.data import RadarArchive, RadarArchiveDataset
from convlstm.data.readers import GeoTiffReader, get_reader

tifffile = pytest.importorskip("tifffile")

H, W = 6, 8
GAIN, OFFSET, NODATA = 0.5, -32.0, 255
X0, Y0, DX, DY = 2_000_000.0, 5_500_000.0, 1000.0, 2000.0  # EPSG:3035 metres, upper-left corner
T0 = np.datetime64("2026-07-01T12:00", "s")
STEP = np.timedelta64(5, "m")


def mm_h_from_dbz(dbz, a=200.0, b=1.6):
    """Z = a R^b solved for R, in float64, written independently of the package."""
    return np.power(np.power(10.0, np.asarray(dbz, dtype=np.float64) / 10.0) / a, 1.0 / b)


def geo_tags(pixel_is_point: bool = False) -> list[tuple]:
    """ModelPixelScale, ModelTiepoint and a GeoKeyDirectory of ETRS89-LAEA (EPSG:3035)."""
    keys = [
        (1024, 0, 1, 1),  # GTModelTypeGeoKey: projected
        (1025, 0, 1, 2 if pixel_is_point else 1),  # GTRasterTypeGeoKey: point or area
        (3072, 0, 1, 3035),  # ProjectedCSTypeGeoKey: EPSG:3035
        (3076, 0, 1, 9001),  # ProjLinearUnitsGeoKey: metre
    ]
    directory = [1, 1, 0, len(keys), *(v for key in keys for v in key)]
    return [
        (33550, "d", 3, (DX, DY, 0.0), True),  # ModelPixelScaleTag
        (33922, "d", 6, (0.0, 0.0, 0.0, X0, Y0, 0.0), True),  # ModelTiepointTag
        (34735, "H", len(directory), directory, True),  # GeoKeyDirectoryTag
    ]


def gdal_metadata(**band: str) -> str:
    """The GDAL_METADATA XML as GDAL writes a band's items (``AppendMetadataItem``)."""
    items = "".join(
        f'  <Item name="{role.upper()}" sample="0" role="{role}">{value}</Item>\n'
        for role, value in band.items()
    )
    return f"<GDALMetadata>\n{items}</GDALMetadata>\n"


def write_geotiff(path, data, *, nodata=None, band=None, pixel_is_point=False, **imwrite):
    """A single-band GeoTIFF; ``band``: its GDAL items (scale, offset, unittype); ``imwrite``:
    tifffile's options (compression, tile)."""
    tags = geo_tags(pixel_is_point)
    if band:
        tags.append((42112, "s", 0, gdal_metadata(**{k: str(v) for k, v in band.items()}), True))
    if nodata is not None:
        tags.append((42113, "s", 0, str(nodata), True))
    tifffile.imwrite(path, data, extratags=tags, photometric="minisblack", **imwrite)


def raw_frame(t: int) -> np.ndarray:
    """uint8 reflectivity counts (``raw * 0.5 - 32`` dBZ, 10 to 55 dBZ), nodata in the first
    row (outside the radar domain)."""
    raw = np.random.default_rng(t).integers(84, 175, size=(H, W)).astype(np.uint8)
    raw[0] = NODATA
    return raw


@pytest.fixture
def dbz_folder(tmp_path):
    """Six 5-minute steps from 12:00 of uint8 dBZ counts, the 12:10 file missing (a gap)."""
    for t in range(6):
        if t != 2:
            stamp = (T0 + t * STEP).astype(object).strftime("%Y%m%d%H%M")
            path = tmp_path / f"COMP_DBZ_{stamp}.tif"
            band = {"scale": GAIN, "offset": OFFSET, "unittype": "dBZ"}
            write_geotiff(path, raw_frame(t), nodata=NODATA, band=band)
    return tmp_path


def test_folder_of_dbz_frames_scale_offset_nodata_and_coordinates(dbz_folder):
    with tifffile.TiffFile(next(dbz_folder.glob("*.tif"))) as tif:  # the tags really are there
        assert tif.is_geotiff and tif.pages[0].geotiff_tags["ProjectedCSTypeGeoKey"] == 3035
        assert 'role="scale">0.5<' in tif.pages[0].tags.valueof(42112)
    archive = RadarArchive(dbz_folder, pattern="*.tif", time_format="%Y%m%d%H%M")
    assert isinstance(archive.reader, GeoTiffReader)
    assert archive.timestep == np.timedelta64(300, "s") and archive.shape == (H, W)
    assert archive.slots.tolist() == [0, 1, -1, 2, 3, 4]
    assert archive.gaps().tolist() == [(T0 + 2 * STEP).item()]
    for frame, t in enumerate([0, 1, 3, 4, 5]):
        raw = raw_frame(t)
        expected = mm_h_from_dbz(raw * GAIN + OFFSET)
        expected[raw == NODATA] = np.nan
        np.testing.assert_allclose(archive.read(frame), expected, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(archive.read(0, slice(2, 4), slice(1, 5)), archive.read(0)[2:4, 1:5])
    y, x = archive.coordinates  # pixel centres, rows going south from the tiepoint's corner
    np.testing.assert_array_equal(x, X0 + DX * (np.arange(W) + 0.5))
    np.testing.assert_array_equal(y, Y0 - DY * (np.arange(H) + 0.5))
    other_zr = RadarArchive(dbz_folder, time_format="%Y%m%d%H%M", zr=(300.0, 1.4))
    np.testing.assert_allclose(
        other_zr.read(1)[1:], mm_h_from_dbz(raw_frame(1)[1:] * GAIN + OFFSET, 300.0, 1.4), 1e-6
    )

    ds = RadarArchiveDataset(archive, input_len=1, output_len=1)
    assert len(ds) == 3  # (12:00, 12:05), (12:15, 12:20), (12:20, 12:25): none spans 12:10
    inputs, targets, mask = ds[1]
    assert (mask[:, 0, 0] == 0).all() and (mask[:, 0, 1:] == 1).all()  # nodata row masked
    assert (inputs[:, 0, 0] == 0).all() and inputs.isfinite().all() and targets.isfinite().all()


def test_float_mm_h_nan_nodata_mask_compressed_overview_and_pixel_is_point(tmp_path):
    rain = np.random.default_rng(3).gamma(0.5, 2.0, size=(H, W)).astype(np.float32)
    rain[2, 3] = np.nan
    rain[4, :2] = -9999.0
    plain, packed = tmp_path / "rain_202607011200.tif", tmp_path / "rain_202607011205.tif"
    write_geotiff(plain, rain, nodata=-9999, pixel_is_point=True)
    write_geotiff(packed, rain, nodata="-9999", band={"unittype": "mm/h"}, compression="zlib")
    valid = np.ones((H, W), bool)
    valid[5, 6:] = False
    with tifffile.TiffWriter(packed, append=True) as tif:  # GDAL's internal overview and mask
        tif.write(rain[::2, ::2], subfiletype=1, photometric="minisblack")
        tif.write(valid, subfiletype=4, photometric="mask", compression="zlib")
    expected = rain.astype(np.float64)
    expected[rain == -9999.0] = np.nan
    masked = expected.copy()
    masked[~valid] = np.nan
    with tifffile.TiffFile(plain) as tif:
        assert tif.pages[0].is_memmappable  # the crop is read through a memory map
    with tifffile.TiffFile(packed) as tif:
        assert not tif.pages[0].is_memmappable and len(tif.pages) == 3
    for path, units, want in ((plain, "mm/h", expected), (packed, None, masked)):
        reader = GeoTiffReader(units=units)  # packed names its units itself
        assert reader.shape(str(path)) == (H, W) and reader.times(str(path)) is None
        frame = reader.read(str(path), None, slice(None), slice(None))
        assert frame.dtype == np.float32
        np.testing.assert_array_equal(frame, want.astype(np.float32))
        crop = reader.read(str(path), 0, slice(1, 6), slice(2, 7))
        np.testing.assert_array_equal(crop, want[1:6, 2:7].astype(np.float32))
    ds = RadarArchiveDataset([plain, packed], 1, 1, time_format="%Y%m%d%H%M", units="mm/h")
    _, targets, mask = ds[0]
    np.testing.assert_array_equal(mask[:, 0].numpy(), np.isfinite([expected, masked]))
    np.testing.assert_array_equal(targets[0, 0].numpy(), np.nan_to_num(masked).astype("f4"))
    y, x = GeoTiffReader().coordinates(str(plain))  # the tiepoint is a pixel centre
    np.testing.assert_array_equal(x, X0 + DX * np.arange(W))
    np.testing.assert_array_equal(y, Y0 - DY * np.arange(H))
    tifffile.imwrite(tmp_path / "bare.tif", rain)  # a plain TIFF: no coordinates
    assert GeoTiffReader().coordinates(str(tmp_path / "bare.tif")) is None


def test_selection_by_extension_and_format():
    assert isinstance(get_reader(None, "radar/COMP_202607011200.TIF"), GeoTiffReader)
    assert isinstance(get_reader(None, "radar/COMP_202607011200.tiff"), GeoTiffReader)
    reader = get_reader("geotiff", "radar/COMP_202607011200.gtif", units="dBZ", zr=(300.0, 1.4))
    assert isinstance(reader, GeoTiffReader) and (reader.units, reader.zr) == ("dBZ", (300.0, 1.4))


def test_errors_name_what_is_wrong(dbz_folder, tmp_path_factory, monkeypatch):
    tmp_path = tmp_path_factory.mktemp("errors")  # dbz_folder is the test's tmp_path
    with pytest.raises(ValueError, match=r"GeoTiffReader: units 'inch/h' are neither.*units='dBZ'"):
        RadarArchive(dbz_folder, time_format="%Y%m%d%H%M", units="inch/h")
    with pytest.raises(ValueError, match="pass time_format="):
        RadarArchive(dbz_folder)
    bare = tmp_path / "bare_202607011200.tif"
    tifffile.imwrite(bare, np.ones((H, W), np.float32))
    with pytest.raises(ValueError, match=r"names no units.*pass units='mm/h' or units='dBZ'"):
        GeoTiffReader().read(str(bare), None, slice(None), slice(None))
    with pytest.raises(IndexError, match="one frame, got index 1"):
        GeoTiffReader("mm/h").read(str(bare), 1, slice(None), slice(None))
    rgb, pages = tmp_path / "rgb.tif", tmp_path / "pages.tif"
    tifffile.imwrite(rgb, np.zeros((H, W, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(pages, np.zeros((3, H, W), np.float32), photometric="minisblack")
    for path, found in ((rgb, r"1 image\(s\) of shape \[\(6, 8, 3\)\]"), (pages, "3 image")):
        message = rf"{path.name}: a GeoTIFF frame must be one single-band raster, found {found}"
        with pytest.raises(ValueError, match=message):
            GeoTiffReader("mm/h").shape(str(path))
    odd = tmp_path / "odd.tif"
    write_geotiff(odd, np.ones((H, W), np.float32), nodata="none", band={"unittype": "mm/h"})
    with pytest.raises(ValueError, match="the GDAL_NODATA tag must be a number, got 'none'"):
        GeoTiffReader().read(str(odd), None, slice(None), slice(None))
    monkeypatch.setitem(sys.modules, "tifffile", None)  # not installed
    with pytest.raises(ImportError, match=r"tifffile.*pip install 'convlstm\[nowcast\]'"):
        RadarArchive(dbz_folder, time_format="%Y%m%d%H%M")
