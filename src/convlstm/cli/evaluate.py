"""``convlstm evaluate``: score a checkpoint against baselines and write a report folder (see
:func:`convlstm.evaluation.evaluate_checkpoint`).

``--layout`` is the option of ``convlstm predict``, and a file is read the same way in both;
so is ``--archive KEY=VALUE``, which reads ``--data`` as a radar archive (a rain checkpoint's,
over the whole domain) with those :class:`~convlstm.data.RadarArchive` arguments.
A data file holding NaN or infinite values is refused (exit status 1). ``--overwrite`` replaces
only a report folder that convlstm wrote (see :mod:`convlstm._outputs`), never a training run,
another folder, a file or a link.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

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
    data_layout,
    frames_layout,
    load_model_source,
    non_negative_int,
    one_line,
    parse_numbers,
    positive_float,
    positive_int,
    refuse_inputs,
    run_cli,
)

__all__ = ["add_parser", "count_nonfinite"]

PROG = "convlstm evaluate"


def count_nonfinite(path: str | Path, chunk: int = 1 << 22) -> int:
    """The number of NaN and infinite values in the floating-point arrays of a ``.npy`` or
    ``.npz`` file, read ``chunk`` values at a time (0 for other files and integer arrays)."""
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".npz") or not path.is_file():
        return 0
    if path.suffix.lower() == ".npy":
        arrays = [np.load(path, mmap_mode="r", allow_pickle=False)]
    else:
        with np.load(path, allow_pickle=False) as archive:
            arrays = [archive[name] for name in archive.files]
    count = 0
    for array in arrays:
        if not np.issubdtype(array.dtype, np.floating):
            continue
        flat = array.reshape(-1)
        for start in range(0, flat.size, chunk):
            count += int(np.count_nonzero(~np.isfinite(np.asarray(flat[start : start + chunk]))))
    return count


def _file_layout(args: argparse.Namespace) -> str | None:
    """``--layout`` for :func:`~convlstm.evaluation.resolve_dataset`; without it, a 4-D array
    file (other than the checkpoint's training file) is read as ``convlstm predict`` reads it:
    :func:`~convlstm.cli._args.frames_layout`, else :func:`~convlstm.predict.infer_layout`."""
    if args.layout is not None:
        return data_layout(args.layout)
    shape, dtype = array_header(args.data)
    if len(shape) != 4:
        return None
    from convlstm.predict import infer_layout

    model, config = load_model_source(args, "cpu")
    trained = config.get("data", {})
    options = {**trained.get("options", {}), **trained.get("val_options", {})}
    source = options.get("source", options.get("path"))
    if isinstance(source, str) and os.path.exists(source) and os.path.samefile(source, args.data):
        return None  # the training file: its validation split, read as in training
    layout = frames_layout(None, args.data, shape, dtype, trained)
    if layout is None:
        layout = infer_layout(shape, model.in_channels)
    return data_layout(layout)


def _evaluate_command(args: argparse.Namespace) -> None:
    from convlstm.baselines import BaselineUnavailableError, get_baseline, list_baselines
    from convlstm.evaluation import evaluate_checkpoint

    thresholds = None if args.thresholds is None else parse_numbers(args.thresholds, "--thresholds")
    baselines = (
        None
        if args.baselines is None
        else [b.strip() for b in args.baselines.split(",") if b.strip()]
    )
    unknown = [b for b in baselines or () if b not in list_baselines()]
    if unknown:
        raise CliError(
            f"--baselines: unknown {', '.join(unknown)}; valid: {', '.join(list_baselines())}", 2
        )
    for name in baselines or ():  # before any work: a missing optional dependency as one line
        try:
            get_baseline(name)
        except BaselineUnavailableError as error:
            raise CliError(f"--baselines {name}: {one_line(error)}") from None
    archive = archive_options(args.archive) if args.archive else None
    if archive is not None and args.layout is not None:
        raise CliError("--layout reads array files; --archive reads --data as a radar archive", 2)
    check_targets([args.out], args.overwrite, "report")
    sources = {
        "--data": args.data,
        "--checkpoint": args.checkpoint,
        "--pretrained": args.pretrained,
    }
    refuse_inputs({"--out": args.out}, sources)
    device = cli_device(args.device)
    try:
        bad = count_nonfinite(args.data)
    except (OSError, ValueError) as error:
        raise CliError(f"{args.data}: cannot read it ({error})") from None
    if bad:
        raise CliError(
            f"{args.data}: {bad} non-finite value(s) (NaN or infinity) in the data; "
            "scores over them would be NaN"
        )
    layout = _file_layout(args)
    results = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.out,
        device=device,
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        overwrite=args.overwrite,
        thresholds=thresholds,
        horizon=args.horizon,
        layout=layout,
        baselines=baselines,
        num_gifs=args.gifs,
        data_range=args.data_range,
        progress=sys.stderr.isatty(),
        pretrained=args.pretrained,
        seed=args.seed,
        archive=archive,
    )
    print(
        f"{results['dataset']['num_sequences']} sequences: {_scores(results)}; report in {args.out}"
    )


def _scores(results: dict[str, Any]) -> str:
    """The model's overall MSE per frame and SSIM, each where it was computed (SSIM is skipped
    for frames smaller than its window; an undefined score is ``None``)."""
    model = results["forecasters"]["model"]
    parts = []
    for key, label in (("mse_frame", "MSE/frame"), ("ssim", "SSIM")):
        value = model.get(key, {}).get("overall")
        if value is not None:
            parts.append(f"{label} {value:.4g}")
    if "ssim" not in model:
        parts.append("SSIM skipped (frames smaller than its window)")
    return ", ".join(parts) or "no overall scores"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convlstm evaluate`` on an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint against baselines and write a report folder",
        description=(
            "Evaluate CKPT (or a pretrained model) on DATA against baselines; write DIR/ with metrics.json, summary.md, "
            "summary.html, per-lead-time curves and animated samples. DATA is a generated "
            "dataset (moving_mnist: validation digits; radar) or a file: a 4-D uint8 .npy is "
            "read as the published Moving MNIST layout (T, N, H, W), other arrays as your own "
            "(--layout, the same option as convlstm predict's), a radar archive as one for a "
            "checkpoint trained on one or with --archive."
        ),
    )
    add_model_source(parser)
    parser.add_argument("--data", required=True, help="dataset name or file")
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder to create")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sequences per batch")
    parser.add_argument(
        "--num-samples", type=positive_int, help="sequences to score (default: all / val_samples)"
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        help="seed of a generated DATA (default: the validation seed; another one scores "
        "sequences that neither training nor validation saw)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument(
        "--thresholds",
        metavar="T1,T2,...",
        help="event thresholds for CSI/POD/FAR/HSS/bias (rain: in mm/h, default 0.5,2,5,10,30)",
    )
    parser.add_argument("--horizon", type=positive_int, help="lead times (default: trained)")
    add_layout(parser)
    add_archive(
        parser,
        "--data (default: a path is one when the checkpoint was trained on one, read with "
        "the training archive's arguments, which these override)",
    )
    parser.add_argument(
        "--baselines",
        help="comma-separated baseline names (default: persistence,zeros; for rain also "
        "optical_flow,sprog where pysteps is installed)",
    )
    parser.add_argument(
        "--gifs", type=non_negative_int, default=3, help="sequences to animate (default 3, 0: none)"
    )
    parser.add_argument(
        "--data-range", type=positive_float, help="SSIM/PSNR data range (unbounded data)"
    )
    add_overwrite(parser, "it is a report folder written by convlstm evaluate")
    parser.set_defaults(handler=lambda args: run_cli(PROG, _evaluate_command, args))
    return parser
