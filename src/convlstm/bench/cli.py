"""``convlstm benchmark`` and ``benchmarks/bench.py``: the command line of the suite."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from convlstm._atomic import atomic_write_text
from convlstm.bench.shapes import SHAPES, parse_shape
from convlstm.bench.suite import resolve_device, run_suite
from convlstm.bench.throughput import MODELS, format_throughput, run_throughput

__all__ = ["add_parser", "main"]

DESCRIPTION = (
    "Time and size the ConvLSTM layer against a naive cell, Keras, torchgeo's ConvLSTM and the "
    "bare convolutions, in one process, interleaved: every variant is first checked against "
    "the plain path and refused, never timed, if it does not match."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``benchmark`` subcommand to ``subparsers``; its handler, ``args.handler(args)``,
    returns the exit code."""
    parser = subparsers.add_parser(
        "benchmark",
        help="time and size the ConvLSTM layer against a naive cell, Keras, torchgeo and the "
        "bare convolutions",
        description=DESCRIPTION,
    )
    _add_arguments(parser)
    parser.set_defaults(handler=_handle)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds (~1 min)")
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="SHAPE",
        help=f"grid names ({', '.join(SHAPES)}) or B,T,C_in,S,H1-H2,K[,stream]",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT")
    parser.add_argument("--rounds", type=int, help="timing rounds (default 7, --quick 3)")
    parser.add_argument("--variants", nargs="+", help="time only these variants")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="CPU: first call convlstm.fast.tune_cpu_allocator(), so that large tensors are not "
        "page-faulted afresh at every step (by default the allocator is left as users get it)",
    )
    parser.add_argument(  # the default since --tune-malloc became opt-in; kept for old scripts
        "--no-tune-malloc", action="store_false", dest="tune_malloc", help=argparse.SUPPRESS
    )
    parser.set_defaults(tune_malloc=False)
    parser.add_argument("--compile", action="store_true", help="time compile_layer on CPU too")
    parser.add_argument("--no-compile", action="store_true", help="skip compile_layer on CUDA")
    parser.add_argument("--no-keras", action="store_true", help="leave Keras out")
    parser.add_argument(
        "--no-torchgeo",
        action="store_true",
        help="leave torchgeo's ConvLSTM out (timed when torchgeo is installed: convlstm[bench])",
    )
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="instead of the shapes: sequences per second and memory of `predict` by batch size",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(MODELS),
        default=sorted(MODELS),
        help="--throughput: the models (default: all)",
    )
    parser.add_argument(
        "--batches",
        nargs="+",
        type=int,
        default=[1, 2, 4, 8, 16, 32],
        metavar="B",
        help="--throughput: batch sizes (default 1 2 4 8 16 32)",
    )
    parser.add_argument("--tf32", action="store_true", help="CUDA: let fp32 use TF32 tensor cores")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--stream-repeat", type=int, default=20, help="calls per timing of a streaming step"
    )
    parser.add_argument(
        "--stream-threads",
        type=int,
        default=1,
        help="CPU threads for streaming shapes (default 1: a B=1 step is latency-bound, and two "
        "threads wait on each other for every small operation; 0 keeps --threads)",
    )


def _handle(args: argparse.Namespace) -> int:
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.throughput:
        if any(b < 1 for b in args.batches):
            print(f"error: --batches must be positive, got {args.batches}", file=sys.stderr)
            return 2
        if args.threads:
            torch.set_num_threads(args.threads)
        report = run_throughput(args.models, args.batches, resolve_device(args.device), args.rounds)
        print(format_throughput(report))
        if args.json:
            atomic_write_text(args.json, json.dumps(report, indent=1), overwrite=True)
        return 0
    try:
        args.shapes = [s.name for s in map(parse_shape, args.shapes)] if args.shapes else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_suite(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark as a script (``benchmarks/bench.py``)."""
    parser = argparse.ArgumentParser(prog="bench.py", description=DESCRIPTION)
    _add_arguments(parser)
    return _handle(parser.parse_args(argv))
