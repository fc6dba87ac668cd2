"""Argument checks shared by the modules: each error names the argument, what was expected and
what was received."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def check_positive(value: object, name: str) -> int:
    """Return ``value`` if it is an int > 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return value


def check_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` after checking it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_choice(value: T, choices: Sequence[object], name: str) -> T:
    """Return ``value`` if it is one of ``choices``, else raise naming ``name`` and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_probability(value: object, name: str) -> float:
    """Return ``value`` as a float if it lies in [0, 1), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def to_tuple(value: object, n: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """``value`` (an int or ``n`` ints, each ``>= minimum``) as a tuple of ``n`` ints."""
    items = [value] * n if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, Sequence)
        or isinstance(items, str)
        or len(items) != n
        or any(isinstance(v, bool) or not isinstance(v, int) for v in items)
    ):
        raise TypeError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    return tuple(items)
