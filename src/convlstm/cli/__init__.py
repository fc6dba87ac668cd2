"""The ``convlstm`` command: ``train``, ``evaluate``, ``predict``, ``export``, ``benchmark``.

A thin shell over the library: each subcommand's options live in its own module
(:mod:`convlstm.cli.train`, :mod:`~convlstm.cli.evaluate`, :mod:`~convlstm.cli.predict`,
:mod:`~convlstm.cli.export`, :mod:`~convlstm.cli.benchmark`); what they share (errors, exit
statuses, numbers, devices, overrides, ``--overwrite``, ``--layout``) is in
:mod:`convlstm.cli._args`.

Argument rules: options and ``section.key=value`` overrides (``train`` only) come in any order
(``convlstm train run.device=cpu --out X optim.epochs=2``); an option's value may be a negative
number or list of numbers (``--thresholds -0.3,2``). A bad token is named in a one-line error.

Exit statuses: 0 success; 1 failure (unusable input, unreadable checkpoint, NaN loss, I/O error);
2 usage error (bad arguments or configuration, an existing output without ``--overwrite``, an
output that ``--overwrite`` may not replace); 130 / 143 interrupted (``train`` saves ``last.pt``
first). Errors are one line on stderr: ``convlstm COMMAND: error: ...``.

``--overwrite`` replaces only an output of the command's own kind: ``train`` a training run
folder, ``evaluate`` a report folder it wrote, ``predict`` a forecast file (and its PNG folder
or GIF), ``export`` an export folder it wrote. A training run, a folder of other files, an
unrelated file or a symbolic link is never replaced (exit status 2, naming what is there).
"""

from __future__ import annotations

import argparse
import sys

from convlstm.cli import benchmark, evaluate, export, predict, train
from convlstm.cli._args import CliError, OneLineParser, join_negative_values, split_overrides
from convlstm.cli.train import bundled_configs, resolve_config

__all__ = ["build_parser", "bundled_configs", "main", "resolve_config"]


def build_parser() -> argparse.ArgumentParser:
    """The ``convlstm`` argument parser with every subcommand."""
    parser = OneLineParser(
        prog="convlstm",
        description=(
            "ConvLSTM spatiotemporal forecasting: train, evaluate, predict, export, benchmark."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train, evaluate, predict, export, benchmark):
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``convlstm`` command line; returns the exit status.

    >>> main(["train", "--config", "nope.toml"])
    2
    """
    parser = build_parser()
    tokens = join_negative_values(sys.argv[1:] if argv is None else argv, parser)
    try:
        args, extras = parser.parse_known_args(tokens)
    except SystemExit as done:  # --help (0) or a usage error, already printed (2)
        return done.code if isinstance(done.code, int) else 2
    try:
        args.overrides = split_overrides(extras, getattr(args, "overrides_allowed", False))
    except CliError as error:
        print(f"convlstm {args.command}: error: {error}", file=sys.stderr)
        return error.code
    return int(args.handler(args))
