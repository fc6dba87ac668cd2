"""Switches of the fast paths, process-wide (a module global, which torch.compile can read).

:func:`convlstm.fast.settings` and :func:`convlstm.fast.plain` are the public way to change them;
the core reads :func:`current`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

__all__ = ["Settings", "current", "override"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Which fast paths the core may take.

    Attributes:
        fused_gates: compute the sigmoid/tanh gate arithmetic of a step with one autograd node
            (:mod:`convlstm._gates`) instead of plain autograd.
        fused_loop: run a layer's whole time loop as one autograd node
            (:mod:`convlstm._recurrence`) where it applies.
        channels_last: ``None`` lets the per-shape plan choose; ``True``/``False`` forces 2-D
            layers into or out of the channels-last memory format.
        input_conv: ``None`` lets the plan choose; ``"batched"`` convolves the whole sequence at
            once, ``"joint"`` convolves ``[x_t, h]`` with ``[W_ih, W_hh]`` at each step.
    """

    fused_gates: bool = True
    fused_loop: bool = True
    channels_last: bool | None = None
    input_conv: str | None = None


_current = Settings()


def current() -> Settings:
    """The settings in force."""
    return _current


@contextlib.contextmanager
def override(**changes: Any) -> Iterator[Settings]:
    """Within the block, replace the named fields of the current settings (``dataclasses.replace``
    checks their names)."""
    if changes.get("input_conv") not in (None, "batched", "joint"):
        raise ValueError(
            f"input_conv must be None, 'batched' or 'joint', got {changes['input_conv']!r}"
        )
    global _current
    previous = _current
    _current = dataclasses.replace(previous, **changes)
    try:
        yield _current
    finally:
        _current = previous
