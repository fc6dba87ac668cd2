"""``convlstm benchmark``: a thin, lazy shell over the benchmark tool (:mod:`convlstm.bench`),
imported only when the subcommand runs, so that the command line does not load it otherwise."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from convlstm.cli._args import OneLineParser

__all__ = ["add_parser"]

_TOOL = "convlstm.bench.cli"


def _run(argv: list[str]) -> int:
    """Parse the benchmark's own options (``argv``) with its parser and run it (through its
    script entry point ``main(argv)`` where it no longer exposes its parser)."""
    tool = importlib.import_module(_TOOL)
    add_arguments = getattr(tool, "_add_arguments", None)
    try:
        if add_arguments is None:
            return int(tool.main(argv))
        parser = OneLineParser(prog="convlstm benchmark", description=tool.__doc__)
        add_arguments(parser)
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error, already printed (2)
        return done.code if isinstance(done.code, int) else 2
    return int(tool._handle(args))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convlstm benchmark`` (its options are the benchmark tool's, see
    ``convlstm benchmark --help``)."""
    parser = subparsers.add_parser(
        "benchmark",
        help="time and size the ConvLSTM layer against a naive cell, Keras and the bare "
        "convolutions",
        add_help=False,
        prefix_chars="\0",  # every token goes to the benchmark's own parser
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=lambda args: _run(args.argv))
    return parser
