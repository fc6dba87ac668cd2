"""Deprecated aliases of names that moved to another module (PEP 562 ``__getattr__``)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved"]


def moved(module: str, targets: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves each name of ``targets`` (name -> the module it
    moved to) from its new module, with a ``DeprecationWarning``, and raises ``AttributeError``
    for any other name.

    >>> __getattr__ = moved("old", {"sqrt": "math"})
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     __getattr__("sqrt")(4.0), str(caught[0].message)
    (2.0, 'old.sqrt moved to math.sqrt; the old name will be removed')
    """

    def __getattr__(name: str) -> Any:
        if name not in targets:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} moved to {targets[name]}.{name}; the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(targets[name]), name)

    return __getattr__
