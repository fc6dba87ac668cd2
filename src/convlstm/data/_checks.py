"""Argument checks shared by the datasets (internal).

Every check raises with the argument's name, what was expected and what was received.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import numpy as np

from convlstm._checks import check_int

#: Largest float32 sample (inputs and targets together) a dataset agrees to build: 1 GiB.
MAX_SAMPLE_BYTES = 1 << 30


def check_float(
    value: object,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite ``float`` within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if not math.isfinite(v) or too_low or too_high:
        lo = f"{'(' if low_open else '['}{low:g}"
        hi = f"{high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {value!r}")
    return v


def check_range(value: object, name: str, *, low: float = 0.0) -> tuple[float, float]:
    """Return ``(lo, hi)`` after checking ``low <= lo <= hi`` and both finite."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (low, high), got {value!r}")
    lo = check_float(value[0], f"{name}[0]", low=low)
    hi = check_float(value[1], f"{name}[1]", low=low)
    if lo > hi:
        raise ValueError(f"{name} must satisfy low <= high, got {value!r}")
    return lo, hi


def check_size(value: object, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Return ``(H, W)`` from an int (square) or a pair of ints, each ``>= minimum``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        side = check_int(value, name, minimum=minimum)
        return side, side
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{name} must be an int or a pair (height, width), got {value!r}")
    return (
        check_int(value[0], f"{name}[0]", minimum=minimum),
        check_int(value[1], f"{name}[1]", minimum=minimum),
    )


def check_sample_bytes(shape: Sequence[int], name: str) -> None:
    """Refuse samples whose float32 frames would exceed :data:`MAX_SAMPLE_BYTES`."""
    nbytes = math.prod(shape) * 4
    if nbytes > MAX_SAMPLE_BYTES:
        raise ValueError(
            f"{name}: one sample of shape {tuple(shape)} would take {nbytes / 2**30:.1f} GiB "
            f"as float32, more than the {MAX_SAMPLE_BYTES / 2**30:.0f} GiB limit; check the sizes"
        )


def check_index(index: object, length: int, name: str) -> int:
    """Return ``index`` as an int in ``[0, length)``; negative indices count from the end."""
    try:
        i = operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} indices must be integers, got {index!r} ({type(index).__name__})"
        ) from None
    if not -length <= i < length:
        raise IndexError(f"{name} index {i} is out of range for {length} samples")
    return i % length


def check_seed(value: object, name: str = "seed") -> int:
    """Return a non-negative integer seed."""
    return check_int(value, name, minimum=0)


def require_numeric(dtype: np.dtype, where: str) -> None:
    """Raise ``TypeError`` unless ``dtype`` is bool, integer or floating point."""
    if dtype.kind not in "biuf":
        hint = " (object arrays need pickle, which stays disabled)" if dtype.kind == "O" else ""
        raise TypeError(
            f"{where}: expected a numeric array (bool, integer or float), got dtype {dtype}{hint}"
        )
