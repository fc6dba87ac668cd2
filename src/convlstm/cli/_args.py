"""What every ``convlstm`` subcommand shares: errors as one line and exit statuses, number and
device options, ``section.key=value`` overrides, ``--overwrite`` checks and ``--layout``.

Argument rules: options and ``section.key=value`` overrides (``train`` only) may come in any
order; an option's value may start with ``-`` when it is a number or a list of numbers
(``--thresholds -0.3,2``). Exit statuses: 0 success, 1 failure (unusable input, I/O error),
2 usage error (bad arguments, an existing output without ``--overwrite``, an output that
``--overwrite`` may not replace), 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import math
import operator
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from convlstm._outputs import check_output
from convlstm.devices import pick_device
from convlstm.registry import normalise_name

__all__ = [
    "LAYOUT_CHOICES",
    "CliError",
    "OneLineParser",
    "add_archive",
    "add_layout",
    "add_model_source",
    "add_overwrite",
    "archive_options",
    "array_header",
    "check_targets",
    "cli_device",
    "data_layout",
    "frames_layout",
    "join_negative_values",
    "load_model_source",
    "non_negative_int",
    "one_line",
    "parse_numbers",
    "positive_float",
    "positive_int",
    "run_cli",
    "split_overrides",
]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``prog: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


class CliError(Exception):
    """A problem with the command line or its input, reported as one line; ``code`` is the exit
    status (2: bad arguments or an existing output, 1: unusable files or data)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def one_line(error: BaseException) -> str:
    """The first line of ``error``'s message (a DataLoader worker's error: its cause too), with
    Python argument names (``layout=``) replaced by the command-line options."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[0]
    if line.startswith("Caught ") and len(lines) > 1:
        line = f"{line.rstrip('.')}: {lines[-1]}"
    line = re.sub(r"(?<![-\w])layout=", "--layout ", line)
    return re.sub(r"(?<![-\w])layout (?=[A-Z])", "--layout ", line)


def run_cli(prog: str, body: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a subcommand's ``body``; report expected failures as one ``prog: error:`` line on
    stderr and return the exit status instead of a traceback: 0 success, 2 usage error or
    existing output, 1 unusable input or failure, 130 interrupted."""
    try:
        body(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (CliError, FileExistsError, OSError, ValueError, TypeError, RuntimeError) as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        if isinstance(error, CliError):
            return error.code
        return 2 if isinstance(error, FileExistsError) else 1
    return 0


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (counts where 0 means none)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def parse_numbers(text: str, option: str) -> list[float]:
    """``"0.5,2,5"`` -> ``[0.5, 2.0, 5.0]``; a ``CliError`` (exit 2) naming ``option`` otherwise.

    >>> parse_numbers("-0.3, 2,5", "--thresholds")
    [-0.3, 2.0, 5.0]
    """
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise CliError(f"{option}: {item.strip()!r} is not a number (in {text!r})", 2) from None
        if not math.isfinite(value):
            raise CliError(f"{option}: {item.strip()!r} is not a finite number", 2)
        values.append(value)
    return values


def cli_device(device: str | None) -> str:
    """``--device`` checked (exit status 2 naming the option), or the default device."""
    try:
        return pick_device(device, "--device")
    except ValueError as error:
        raise CliError(str(error), 2) from None


def check_targets(
    paths: Sequence[str | None], overwrite: bool, kind: str | None = None, option: str = "--out"
) -> None:
    """Fail before any work (exit status 2) if an output path exists and ``overwrite`` is
    false, or, with ``kind`` (see :mod:`convlstm._outputs`), if it is not an output of that kind
    (``option`` names the path in messages)."""
    for path in paths:
        if path is None:
            continue
        if kind is None:
            if os.path.lexists(path) and not overwrite:
                raise CliError(f"{path} already exists (pass --overwrite to replace it)", 2)
            continue
        try:
            check_output(path, kind, overwrite, option, "--overwrite")
        except FileExistsError as error:
            raise CliError(str(error), 2) from None


def refuse_inputs(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """A ``CliError`` (exit 2) when an output option names the same file as an input option."""
    for option, out in outputs.items():
        for source, path in inputs.items():
            if out is None or path is None or not os.path.exists(out) or not os.path.exists(path):
                continue
            if Path(out).resolve() == Path(path).resolve() or Path(out).samefile(path):
                raise CliError(f"{option} {out} is the {source} file: refusing to replace it", 2)


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: replace an existing output only when it is ``what`` (its help text)."""
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace an existing output, only if {what}"
    )


def add_model_source(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint CKPT`` or ``--pretrained NAME_OR_FOLDER``: exactly one (a one-line usage
    error, exit 2, otherwise); see :func:`convlstm.pretrained.load_pretrained_or_checkpoint`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="trained checkpoint (.pt)")
    source.add_argument(
        "--pretrained",
        metavar="NAME_OR_FOLDER",
        help="a model whose weights ship with convlstm (convlstm.pretrained.list_pretrained()) "
        "or a folder written by save_pretrained/export_pretrained, instead of --checkpoint",
    )


def load_model_source(
    args: argparse.Namespace, device: str, *, physical_units: bool = False
) -> tuple[Any, dict[str, Any]]:
    """``(model, config)`` of ``--checkpoint`` or ``--pretrained`` on ``device``, the config in
    the checkpoint's form (:func:`convlstm.pretrained.load_pretrained_or_checkpoint`; a rain
    checkpoint's model in mm/h with ``physical_units``)."""
    from convlstm.pretrained import load_pretrained_or_checkpoint

    return load_pretrained_or_checkpoint(
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        map_location=device,
        physical_units=physical_units,
    )


# ---------------------------------------------------------------------------------- --layout

# one vocabulary for predict and evaluate: the axes of a frames array, and evaluate's names
LAYOUT_CHOICES = ("THW", "TCHW", "NTHW", "NTCHW", "TNHW", "record", "samples", "moving_mnist")
_DATA_LAYOUTS = {
    "THW": "record",
    "TCHW": "record",
    "NTHW": "samples",
    "NTCHW": "samples",
    "TNHW": "moving_mnist",
}


def add_layout(parser: argparse.ArgumentParser) -> None:
    """The ``--layout`` option of ``predict`` and ``evaluate``."""
    parser.add_argument(
        "--layout",
        choices=LAYOUT_CHOICES,
        help="axes of a 3-, 4- or 5-D array file: THW or TCHW (one record, alias record), NTHW "
        "or NTCHW (sequences, alias samples), TNHW (the published Moving MNIST file, alias "
        "moving_mnist). Default: a 4-D uint8 .npy is TNHW unless the checkpoint was trained "
        "on arrays; otherwise guessed from the shape",
    )


def array_header(path: str) -> tuple[tuple[int, ...], Any]:
    """The shape and dtype of a ``.npy``/``.npz`` file (``((), None)`` for image folders or
    unreadable files, which :func:`~convlstm.predict.load_frames` then reports)."""
    from convlstm.predict import _read_array

    if not path.lower().endswith((".npy", ".npz")) or not os.path.isfile(path):
        return (), None
    try:
        array = _read_array(Path(path))
    except (OSError, ValueError, TypeError, EOFError, MemoryError, OverflowError):
        return (), None
    return tuple(array.shape), array.dtype


def data_layout(layout: str | None) -> str | None:
    """``--layout`` as :func:`convlstm.evaluation.resolve_dataset`'s ``layout``."""
    return None if layout is None else _DATA_LAYOUTS.get(layout, layout)


def frames_layout(
    layout: str | None, path: str, shape: tuple[int, ...], dtype: Any, trained: dict[str, Any]
) -> str | None:
    """``--layout`` as :func:`convlstm.predict.load_frames`' ``layout`` for an array of
    ``shape``; without ``--layout``, the layout ``convlstm evaluate`` would read the file in
    (``trained`` is the checkpoint's ``data`` configuration)."""
    ndim = len(shape)
    if layout is None:
        name = normalise_name(str(trained.get("name", "")))
        options = {**trained.get("options", {}), **trained.get("val_options", {})}
        if name == "array":  # read like the training arrays
            layout = options.get("layout") if ndim == 4 else None
            if layout not in ("samples", "record"):
                return None
        elif ndim == 4 and str(dtype) == "uint8" and path.lower().endswith(".npy"):
            return "TNHW" if shape[1] != 1 else None
        else:
            return None
    if layout == "moving_mnist":
        return "TNHW"
    if layout == "record":
        return "THW" if ndim == 3 else "TCHW"
    if layout == "samples":
        return "NTHW" if ndim == 4 else "NTCHW"
    return layout


# --------------------------------------------------------------------------------- --archive

_SCALARS = (bool, int, float, str, type(None))


def add_archive(parser: argparse.ArgumentParser, data: str) -> None:
    """The repeatable ``--archive KEY=VALUE`` option of ``predict`` and ``evaluate``: a
    :class:`~convlstm.data.RadarArchive` argument for the radar archive ``data`` names."""
    parser.add_argument(
        "--archive",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"how to read the radar archive {data}, repeatable: a RadarArchive argument "
        "(pattern, time_format, format, variable, units, quantity, timestep, zr, "
        "importer_kwargs) with a YAML value, such as time_format=%%Y%%m%%d%%H%%M, "
        "units=dBZ, zr=[200,1.6], timestep=5 (minutes)",
    )


def _archive_hints() -> dict[str, Any]:
    """The :class:`~convlstm.data.RadarArchive` arguments other than ``source``, typed by
    what a command line can write (numbers, not ``timedelta`` objects)."""
    from convlstm.data.archive import RadarArchive

    hints = typing.get_type_hints(RadarArchive.__init__)
    written = {}
    for key, hint in hints.items():
        if key in ("source", "return"):
            continue
        if typing.get_origin(hint) in (types.UnionType, typing.Union):
            members = typing.get_args(hint)
            kept = [m for m in members if m in _SCALARS or typing.get_origin(m) is not None]
            hint = functools.reduce(operator.or_, kept)
        written[key] = hint
    return written


def archive_options(
    items: Sequence[str], trained: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The :class:`~convlstm.data.RadarArchive` keyword arguments of ``--archive KEY=VALUE``
    items, each value parsed as a ``section.key=value`` override's is (YAML: ``[200, 1.6]``,
    ``none``; plain text where text is allowed) and checked against the argument's type.

    With ``trained`` (a checkpoint's ``data`` configuration), the archive arguments of its
    training data (``options`` and ``val_options`` of ``radar_archive`` data) come first, so
    that an archive like the training one needs no ``--archive``; the items override them.

    Raises:
        CliError: (exit status 2) an item that is not ``KEY=VALUE``, an unknown key or a value
            of the wrong type, naming ``--archive``, what was expected and what was given.

    >>> archive_options(["time_format=%Y%m%d%H%M", "zr=[300, 1.5]", "timestep=5"])
    {'time_format': '%Y%m%d%H%M', 'zr': (300.0, 1.5), 'timestep': 5.0}
    """
    from convlstm.config import ConfigError, _parse_text

    hints = _archive_hints()
    options: dict[str, Any] = {}
    if trained is not None and normalise_name(str(trained.get("name", ""))) == "radar_archive":
        used = {**trained.get("options", {}), **trained.get("val_options", {})}
        options = {key: value for key, value in used.items() if key in hints}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(
                f"--archive {item!r}: expected KEY=VALUE (such as time_format=%Y%m%d%H%M)", 2
            )
        if key not in hints:
            raise CliError(
                f"--archive {item}: unknown key {key!r}; expected one of {', '.join(hints)}", 2
            )
        try:
            options[key] = _parse_text(text, hints[key], key)
        except ConfigError as error:
            raise CliError(f"--archive {item}: {error}", 2) from None
    return options


# ------------------------------------------------------------------- the order of arguments

_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=.*", re.DOTALL)
_NUMBERS = re.compile(r"-[\d.][\d.eE+\-,\s]*")


def split_overrides(extras: Sequence[str], allowed: bool) -> list[str]:
    """The ``section.key=value`` overrides among argparse's leftovers; a ``CliError`` (exit 2)
    naming the first token that is neither a known option nor (where ``allowed``) an override.

    >>> split_overrides(["optim.lr=1e-3", "run.device=cpu"], allowed=True)
    ['optim.lr=1e-3', 'run.device=cpu']
    """
    for token in extras:
        if token.startswith("-"):
            raise CliError(f"unrecognized option {token!r}", 2)
        if not allowed:
            raise CliError(f"unrecognized argument {token!r}", 2)
        if not _OVERRIDE.fullmatch(token):
            raise CliError(
                f"{token!r} is neither an option nor an override section.key=value "
                "(such as optim.lr=3e-4)",
                2,
            )
    return list(extras)


def join_negative_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--option -0.3,2`` as ``--option=-0.3,2`` for options that take one value, so that
    argparse does not read a negative number (or list of numbers) as an option."""
    takes_value: set[str] = set()
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.option_strings and action.nargs is None:
                takes_value.update(action.option_strings)
    out: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if token in takes_value and following is not None and _NUMBERS.fullmatch(following):
            out.append(f"{token}={following}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out
