"""``convlstm predict``: forecast the frames after the user's own frames (see
:mod:`convlstm.predict` for the files it reads and writes).

A 4-D array is read as ``convlstm evaluate`` reads it: a ``uint8`` ``.npy`` as the published
Moving MNIST layout ``(T, N, H, W)`` (``TNHW``) unless the checkpoint was trained on arrays (then
with their ``layout``), else guessed from its shape; ``--layout`` decides. Inputs holding NaN or
infinite values are refused (exit status 1); fewer input frames than the model was trained on
give a warning. With ``--out FILE.nc`` the input is a radar archive, read with the
:class:`~convlstm.data.RadarArchive` arguments of the checkpoint's training archive updated by
``--archive KEY=VALUE``, and the forecast is CF NetCDF on the archive's grid. ``--overwrite`` replaces only a forecast file (``--out``: a ``.npy``/``.npz``;
``--gif``: a GIF) or a folder of forecast PNGs (``--png``), never another file, folder or link.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

from convlstm._atomic import atomic_dir, atomic_write_bytes, check_parent
from convlstm.cli._args import (
    CliError,
    add_archive,
    add_layout,
    add_model_source,
    add_overwrite,
    archive_options,
    array_header,
    check_targets,
    cli_device,
    frames_layout,
    load_model_source,
    positive_int,
    refuse_inputs,
    run_cli,
)
from convlstm.predict import (
    Frames,
    forecast_frames,
    load_frames,
    save_forecast,
    to_model_range,
)

__all__ = ["add_parser", "check_frames"]

PROG = "convlstm predict"


def check_frames(frames: Frames, input_len: int | None, prog: str = PROG) -> None:
    """A ``CliError`` (exit 1) naming the file and the count when ``frames`` hold NaN or
    infinite values; a warning on stderr when they have fewer than ``input_len`` frames."""
    bad = frames.count_nonfinite()
    if bad:
        raise CliError(
            f"{frames.source}: {bad} non-finite value(s) (NaN or infinity) in the input frames; "
            "a forecast from them would be NaN"
        )
    steps = frames.array.shape[1]
    if input_len is not None and steps < input_len:
        print(
            f"{prog}: warning: {frames.source} has {steps} input frame(s) per sequence, fewer "
            f"than the {input_len} the model was trained on; the forecast may be poor",
            file=sys.stderr,
        )


def _write_pngs(folder: str, forecast: np.ndarray, vmax: float, overwrite: bool) -> None:
    """``sequence_NNNN_lead_KK.png`` per forecast frame (model range), as a folder written
    atomically."""
    from convlstm.viz import frame_png

    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for n, sequence in enumerate(forecast):
            for k, frame in enumerate(sequence):
                png = frame_png(to_model_range(frame), 0.0, vmax)
                (tmp / f"sequence_{n:04d}_lead_{k + 1:02d}.png").write_bytes(png)


def _predict_archive(args: argparse.Namespace) -> None:
    """``--out FILE.nc``: nowcast from the latest frames of the radar archive ``--input``
    (a folder of ODIM/NetCDF/GeoTIFF files, a NetCDF file, a Zarr store, or files a pysteps
    importer reads; in mm/h), written as CF NetCDF with valid and lead times on the archive's
    grid: its x/y coordinates with their units and its CRS where the files give them, else
    pixel indices (:func:`convlstm.nowcast.write_cf_netcdf`). The archive is read with the
    arguments of :func:`~convlstm.cli._args.archive_options`: the checkpoint's training
    archive's, updated by ``--archive``."""
    from convlstm.data.archive import RadarArchive
    from convlstm.nowcast import write_cf_netcdf
    from convlstm.units import PhysicalUnits

    if args.png or args.gif or args.layout:
        raise CliError("--png, --gif and --layout do not apply to a NetCDF forecast (--out .nc)", 2)
    check_parent(args.out)
    device = cli_device(args.device)
    model, config = load_model_source(args, device, physical_units=True)
    if not isinstance(model, PhysicalUnits):
        raise CliError(
            f"--out {args.out}: a CF NetCDF forecast needs a rain checkpoint (trained on radar "
            "data, carrying its data transform); this one forecasts in its own units"
        )
    options = archive_options(args.archive, config.get("data", {}))
    try:
        archive = RadarArchive(args.input, **options)
    except (OSError, ValueError, TypeError) as error:
        read = f" read with {options}" if options else ""
        raise CliError(f"--input {args.input}{read}: not a radar archive ({error})") from None
    input_len, horizon = config["data"]["input_len"], args.horizon or config["data"]["horizon"]
    recent = archive.slots[-input_len:]
    if len(recent) < input_len or (recent < 0).any():
        raise CliError(
            f"--input {args.input}: the model needs its last {input_len} frames on the regular "
            f"{archive.timestep} step without gaps (the archive ends at {archive.times[-1]})"
        )
    frames = np.stack([archive.read(int(i)) for i in recent])  # (T, H, W) mm/h, NaN: no data
    inputs = torch.from_numpy(np.nan_to_num(frames, nan=0.0))[None, :, None].float()
    try:
        model.check_frames(inputs)
    except ValueError as error:
        raise CliError(f"{args.input}: {error}") from None
    with torch.no_grad():
        forecast = model(inputs.to(device), horizon)[0, :, 0].float().cpu().numpy()
    forecast[:, np.isnan(frames[-1])] = np.nan  # no data in the latest frame: none forecast
    leads = np.arange(1, horizon + 1) * archive.timestep
    y, x = archive.coordinates or (None, None)
    write_cf_netcdf(
        args.out,
        forecast,
        archive.times[-1] + leads,
        leads,
        x,
        y,
        xy_units=archive.coordinate_units if archive.coordinates else None,
        grid_mapping=archive.grid_mapping,
        attrs={"source": f"convlstm predict, model {args.checkpoint or args.pretrained}"},
        overwrite=args.overwrite,
    )
    print(
        f"forecast ({horizon}, {forecast.shape[1]}, {forecast.shape[2]}) (lead time, y, x) in "
        f"mm/h from {archive.times[-1]} written to {args.out} as CF NetCDF"
    )


def _predict_command(args: argparse.Namespace) -> None:
    if str(args.out).endswith(".nc"):
        _predict_archive(args)
        return
    if args.archive:
        raise CliError("--archive applies to a radar archive forecast (--out FILE.nc)", 2)
    check_targets([args.out], args.overwrite, "forecast")
    check_targets([args.png], args.overwrite, "pngs", "--png")
    check_targets([args.gif], args.overwrite, "gif", "--gif")
    refuse_inputs(
        {"--out": args.out, "--png": args.png, "--gif": args.gif},
        {"--input": args.input, "--checkpoint": args.checkpoint, "--pretrained": args.pretrained},
    )
    for target in (args.out, args.png, args.gif):
        if target is not None:
            check_parent(target)  # before any work
    device = cli_device(args.device)
    # a rain model (its checkpoint carries its data transform) forecasts mm/h from mm/h
    model, config = load_model_source(args, device, physical_units=True)
    data = config.get("data", {})
    shape, dtype = array_header(args.input)
    layout = frames_layout(args.layout, args.input, shape, dtype, data) if shape else args.layout
    frames = load_frames(args.input, model.in_channels, layout)
    try:  # frames the model cannot take are an error before any warning about them
        model.check_frames(torch.from_numpy(frames.model_range(0, 1)))
    except ValueError as error:
        raise ValueError(f"{frames.source}: {error}") from None
    check_frames(frames, data.get("input_len"))
    horizon = args.horizon or data["horizon"]
    forecast = forecast_frames(model, frames, horizon, batch_size=args.batch_size, device=device)
    save_forecast(args.out, forecast, frames, overwrite=args.overwrite)
    # PNG/GIF grey levels span [0, vmax]: [0, 1] for integer frames (scaled) and most float
    # ones; up to the largest input value for unbounded data such as rain rates
    vmax = 1.0 if frames.dtype.kind == "u" else max(1.0, float(frames.array.max()))
    if args.png:
        _write_pngs(args.png, forecast, vmax, args.overwrite)
    if args.gif:
        from convlstm.viz import sequence_gif

        first = to_model_range(forecast[0])
        gif = sequence_gif(frames.model_range(0, 1)[0], None, first, vmax=vmax)
        atomic_write_bytes(args.gif, gif, overwrite=args.overwrite)
    print(
        f"forecast {tuple(forecast.shape)} (N, horizon, C, H, W) of {frames.source} "
        f"written to {args.out} as {frames.layout} {frames.dtype}"
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convlstm predict`` on an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser(
        "predict",
        help="forecast the frames that follow your own input frames",
        description=(
            "Forecast the frames after INPUT (a .npy/.npz of (T,H,W), (T,C,H,W), (N,T,H,W), "
            "(T,N,H,W) or (N,T,C,H,W), or a folder of images sorted by name) with a trained "
            "checkpoint or a pretrained model, and write them in the input's layout and dtype "
            "(uint8 in, uint8 out). A 4-D array is read as convlstm evaluate reads it (see "
            "--layout). A rain model whose checkpoint carries its data transform reads and "
            "writes rain rates in mm/h."
        ),
    )
    add_model_source(parser)
    parser.add_argument(
        "--input",
        required=True,
        metavar="FILE_OR_DIR",
        help=".npy/.npz file or image folder; with --out .nc a radar archive (folder of "
        "ODIM/NetCDF/GeoTIFF files, NetCDF file, Zarr store; see --archive)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="forecast (.npy or .npz; .nc: CF NetCDF nowcast from the archive's latest frames)",
    )
    parser.add_argument(
        "--horizon", type=positive_int, help="frames to forecast (default: trained)"
    )
    add_layout(parser)
    add_archive(parser, "--input (with --out .nc; default: as the checkpoint's training archive)")
    parser.add_argument("--png", metavar="DIR", help="also write every forecast frame as PNG")
    parser.add_argument("--gif", metavar="FILE", help="also animate the first sequence as GIF")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sequences per batch")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    add_overwrite(parser, "it is a forecast file (.npy/.npz, GIF) or a folder of forecast PNGs")
    parser.set_defaults(handler=lambda args: run_cli(PROG, _predict_command, args))
    return parser
