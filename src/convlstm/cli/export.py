"""``convlstm export``: export a checkpoint to TorchScript and ONNX (see
:func:`convlstm.export.export_model`). ``--overwrite`` replaces only a folder that
``convlstm export`` wrote (``export.json`` and the model files), never anything else.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from convlstm.cli._args import (
    CliError,
    add_overwrite,
    check_targets,
    parse_numbers,
    positive_int,
    refuse_inputs,
    run_cli,
)

__all__ = ["add_parser"]

PROG = "convlstm export"


def _frame_size(args: argparse.Namespace, config: dict[str, Any]) -> tuple[int, int]:
    """``--frame-size H,W``, else the frame size of the checkpoint's generated training data."""
    from convlstm.evaluation import GENERATED_DATASETS, resolve_dataset

    if args.frame_size is not None:
        values = parse_numbers(args.frame_size, "--frame-size")
        if len(values) == 1:
            values *= 2
        if len(values) != 2 or any(v <= 0 or v != int(v) for v in values):
            raise CliError(
                f"--frame-size: expected H,W (whole numbers > 0), got {args.frame_size!r}", 2
            )
        return int(values[0]), int(values[1])
    name = config["data"]["name"]
    if name not in GENERATED_DATASETS:
        raise CliError(
            f"the checkpoint was trained on {name!r} data, whose frame size is not stored: "
            "pass --frame-size H,W",
            2,
        )
    inputs, _ = resolve_dataset(name, config, num_samples=1)[0]
    return int(inputs.shape[-2]), int(inputs.shape[-1])


def _export_command(args: argparse.Namespace) -> None:
    from convlstm.checkpoint import load_model
    from convlstm.export import FILES, _check_formats, export_model

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        formats = list(_check_formats(formats))
    except ValueError as error:
        raise CliError(f"--formats: {error}", 2) from None
    if args.tolerance is not None:
        (tolerance,) = parse_numbers(args.tolerance, "--tolerance")
    else:
        tolerance = 1e-3
    check_targets([args.out], args.overwrite, "export")
    refuse_inputs({"--out": args.out}, {"--checkpoint": args.checkpoint})
    model, config = load_model(args.checkpoint, map_location="cpu")
    horizon = args.horizon or config["data"]["horizon"]
    input_len = args.input_len or config["data"]["input_len"]
    height, width = _frame_size(args, config)
    example = torch.zeros(1, input_len, model.in_channels, height, width)
    model.check_frames(example)
    differences = export_model(
        model, args.out, example, horizon, formats, overwrite=args.overwrite, tolerance=tolerance
    )
    for name, difference in differences.items():
        checked = "not checked" if difference is None else f"max |difference| {difference:.3g}"
        print(f"{name}: {Path(args.out) / FILES[name]} ({checked})")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convlstm export`` on an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to TorchScript and ONNX",
        description=(
            "Export CKPT for inputs (B, T_in, C, H, W) -> (B, horizon, C, H, W) with a fixed "
            "T_in, frame size and horizon (free batch size); check each file against PyTorch "
            "and write DIR/ with model.torchscript.pt, model.onnx and export.json."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="trained checkpoint (.pt)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    parser.add_argument(
        "--horizon", type=positive_int, help="frames to forecast (default: trained)"
    )
    parser.add_argument("--input-len", type=positive_int, help="input frames (default: trained)")
    parser.add_argument("--frame-size", metavar="H,W", help="frame size (default: trained)")
    parser.add_argument(
        "--formats", default="torchscript,onnx", help="comma-separated: torchscript, onnx"
    )
    parser.add_argument("--tolerance", help="largest accepted difference (default 1e-3)")
    add_overwrite(parser, "it is a folder written by convlstm export")
    parser.set_defaults(handler=lambda args: run_cli(PROG, _export_command, args))
    return parser
