"""Deprecated: the benchmark moved to :mod:`convlstm.bench`, a tool beside the library.

This alias re-exports :mod:`convlstm.bench`'s public names and warns on import; it will be
removed in a future release. Use ``from convlstm.bench import run_suite`` (or ``convlstm
benchmark`` / ``python benchmarks/bench.py``).
"""

from __future__ import annotations

import warnings

from convlstm.bench import SHAPES, Shape, add_parser, format_shape, main, parse_shape, run_suite

__all__ = ["SHAPES", "Shape", "add_parser", "format_shape", "main", "parse_shape", "run_suite"]

warnings.warn(
    "convlstm.benchmark is deprecated; use convlstm.bench (the same names)",
    DeprecationWarning,
    stacklevel=2,
)
