"""The learning-rate schedule and scheduled sampling, both functions of the optimiser step.

>>> [round(lr_factor(s, "cosine", 2, 6), 2) for s in range(6)]
[0.5, 1.0, 0.9, 0.65, 0.35, 0.1]
"""

from __future__ import annotations

import math

from convlstm.config import Config

__all__ = ["Schedule", "lr_factor", "teacher_forcing"]


class Schedule:
    """Learning-rate factor per step, for :class:`torch.optim.lr_scheduler.LambdaLR` (a callable
    object, so that the scheduler's ``state_dict`` saves its fields). ``total`` changes when a
    time budget re-plans the run."""

    def __init__(self, kind: str, warmup: int, total: int, min_ratio: float) -> None:
        self.kind, self.warmup, self.total, self.min_ratio = kind, warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.kind, self.warmup, self.total, self.min_ratio)


def lr_factor(step: int, kind: str, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimiser ``step`` (0-based) of ``total``.

    Args:
        step: the optimiser step (0-based).
        kind: ``cosine``, ``linear``, ``onecycle`` or ``constant`` (``optim.schedule``).
        warmup: steps of linear warm-up (for ``onecycle``: steps to the peak).
        total: the planned number of steps.
        min_ratio: the factor at the end of the decay.

    Returns:
        The factor, in ``(0, 1]``.

    >>> [round(lr_factor(s, "cosine", 2, 6), 2) for s in range(6)]
    [0.5, 1.0, 0.9, 0.65, 0.35, 0.1]
    >>> [round(lr_factor(s, "linear", 2, 6), 2) for s in range(6)]
    [0.5, 1.0, 0.8, 0.6, 0.4, 0.2]
    >>> round(lr_factor(0, "onecycle", 2, 6), 2), lr_factor(1, "onecycle", 2, 6)
    (0.04, 1.0)
    """
    if kind == "onecycle":
        start, low = 1 / 25, max(min_ratio, 1 / 25e4)
        peak = max(warmup - 1, 1)
        if step < peak:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / peak))
        progress = min((step - peak) / max(total - 1 - peak, 1), 1.0)
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min((step - warmup + 1) / (max(total - warmup, 0) + 1), 1.0)
    if kind == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def teacher_forcing(config: Config, step: int) -> float:
    """Probability of feeding the forecaster the ground truth at ``step``: decays linearly from
    ``optim.teacher_forcing`` to 0 over ``optim.teacher_forcing_steps`` steps (0 when off).

    >>> from convlstm.config import apply_overrides
    >>> config = apply_overrides(
    ...     Config(), ["optim.teacher_forcing=1", "optim.teacher_forcing_steps=4"])
    >>> [teacher_forcing(config, s) for s in (0, 2, 4, 9)]
    [1.0, 0.5, 0.0, 0.0]
    """
    optim = config.optim
    if not optim.teacher_forcing or not optim.teacher_forcing_steps:
        return 0.0
    return optim.teacher_forcing * max(0.0, 1.0 - step / optim.teacher_forcing_steps)
