"""The wall-clock budget (``run.max_minutes``): how many steps the time left affords.

Training, its validations (one at the end of every epoch, and one when training stops) and the
final report must all end within the budget. After ten timed steps, and again after every
validation, :meth:`Budget.plan` re-plans the number of steps from the measured speeds: the most
steps ``n`` whose cost ::

    n * seconds_per_step + validations(n) * seconds_per_validation + report_seconds

fits in the time left (:func:`affordable_steps`), where ``validations(n)`` counts the epoch ends
that ``n`` more steps reach. The learning-rate schedule is then stretched or shrunk to that
length; it never grows past the configured ``optim.epochs`` / ``optim.max_steps``, nor once the
run is past half of it. Training also stops at ``max_minutes`` in any case.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from convlstm.data.transforms import RainTransform
from convlstm.distributed import DistContext

__all__ = ["REPORT_FILES_S", "Budget", "affordable_steps", "probe_report"]

REPORT_FILES_S = 5.0
"""Seconds the final report needs beyond scoring: loading ``best.pt``, curves, GIFs (about 2)."""
_FIRST_PLAN_STEPS = 10
"""Steps timed (after the first two, which include warm-up costs) before the first plan."""


def affordable_steps(
    seconds_left: float,
    seconds_per_step: float,
    seconds_per_validation: float,
    report_seconds: float,
    steps_per_epoch: int,
    epoch_step: int = 0,
) -> int:
    """The most further steps ``n >= 0`` whose training, validations and report fit in
    ``seconds_left``.

    Args:
        seconds_left: the budget's seconds not spent yet.
        seconds_per_step: the measured time of one optimiser step.
        seconds_per_validation: the time of one validation (0 if not measured yet).
        report_seconds: the time of the final report.
        steps_per_epoch: optimiser steps in a full epoch.
        epoch_step: steps already done in the epoch in progress (its validation is still due).

    Returns:
        ``n``, 0 when not even the pending validation and the report fit.

    >>> affordable_steps(48.0, 1.0, 4.0, 0.0, steps_per_epoch=2)  # 16 steps + 8 validations
    16
    >>> affordable_steps(48.0, 1.0, 4.0, 0.0, steps_per_epoch=2, epoch_step=1)  # 15 + 8
    15
    """

    def cost(steps: int) -> float:
        validations = math.ceil((epoch_step + steps) / steps_per_epoch)
        return steps * seconds_per_step + validations * seconds_per_validation + report_seconds

    low, high = 0, max(int(seconds_left / max(seconds_per_step, 1e-9)), 0)
    while low < high:  # the cost grows with the steps: bisect for the last that fits
        middle = (low + high + 1) // 2
        if cost(middle) <= seconds_left:
            low = middle
        else:
            high = middle - 1
    return low


class Budget:
    """Step timings and the costs of validation and the report, and the plan made from them.

    Args:
        max_minutes: the budget (``None``: no budget; :meth:`plan` then keeps the schedule).
        configured_steps: the steps the configuration asks for (the plan never exceeds them).
        steps_per_epoch: optimiser steps in a full epoch.
        val_count: sequences in the validation set.
        eval_samples: sequences the final report scores (``run.eval_samples``).
    """

    def __init__(
        self,
        max_minutes: float | None,
        configured_steps: int,
        steps_per_epoch: int,
        val_count: int,
        eval_samples: int,
    ) -> None:
        self.max_minutes = max_minutes
        self.configured_steps = configured_steps
        self.steps_per_epoch = steps_per_epoch
        self.val_count = val_count
        self.eval_samples = eval_samples
        self.val_seconds: float | None = None
        """The latest validation's seconds."""
        self.report_seconds: float | None = None
        """The final report's seconds, once probed (:func:`probe_report`)."""
        self._timed_steps = 0
        self._timed_seconds = 0.0

    def out_of_time(self, elapsed: float) -> bool:
        """Whether ``elapsed`` seconds of training exceed the budget."""
        return self.max_minutes is not None and elapsed > self.max_minutes * 60

    def time_step(self, step: int, seconds: float) -> bool:
        """Record that global ``step`` took ``seconds``; returns whether the first plan is due."""
        if step > 2:  # the first steps include warm-up costs
            self._timed_steps += 1
            self._timed_seconds += seconds
        return self._timed_steps == _FIRST_PLAN_STEPS

    @property
    def timed(self) -> bool:
        """Whether a step's speed has been measured."""
        return self._timed_steps > 0

    def plan(
        self, step: int, total_steps: int, epoch_step: int, elapsed: float, ctx: DistContext
    ) -> int:
        """The number of steps to train for (``total_steps`` when unchanged): see the module
        docstring. A collective: every rank calls it, and all get the same answer.

        Args:
            step: the global step reached.
            total_steps: the current plan.
            epoch_step: steps done in the epoch in progress.
            elapsed: seconds of training so far (before a resume included).
            ctx: the process group (speeds are reduced to the slowest rank's).
        """
        if self.max_minutes is None or not self.timed:
            return total_steps
        per_validation = self.val_seconds or 0.0
        report = self.report_seconds
        if report is None:  # not probed yet: a validation's speed (too low a guess on CPUs)
            report = per_validation * self.eval_samples / max(self.val_count, 1)
        seconds_per_step, per_validation, report = (
            float(v)
            for v in ctx.all_reduce(
                torch.tensor(
                    [self._timed_seconds / self._timed_steps, per_validation, report],
                    dtype=torch.float64,
                ),
                "max",
            )
        )
        affordable = affordable_steps(
            self.max_minutes * 60 - elapsed,
            seconds_per_step,
            per_validation,
            report,
            self.steps_per_epoch,
            epoch_step,
        )
        total = min(self.configured_steps, step + max(affordable, 1))
        if total > total_steps and step > total_steps // 2:
            return total_steps  # no lengthening once the learning rate is past half its decay
        if abs(total - total_steps) > 0.02 * total_steps:
            return total
        return total_steps


def probe_report(
    model: nn.Module,
    val_set: Dataset[Any],
    device: torch.device,
    batch_size: int,
    eval_samples: int,
    transform: RainTransform | None = None,
) -> float:
    """Seconds the final report will take: score one batch of validation sequences the way
    :func:`convlstm.evaluation.evaluate` does (the model in float32 and the baselines, SSIM
    and all), scaled to ``eval_samples``, plus :data:`REPORT_FILES_S`: a validation's speed
    (the model alone, maybe in bf16) promises far less than the report takes, and a single cold
    batch far more. For rain data (``transform``, the data's :class:`RainTransform`) the
    report scores in mm/h against the field's baselines (pysteps' optical flow and S-PROG cost
    far more than the model), and so does the probe. Torch's random state is left as it was."""
    from convlstm import evaluation
    from convlstm.baselines import default_baselines

    count = min(batch_size, len(val_set))  # type: ignore[arg-type]
    if not count:
        return REPORT_FILES_S
    data: Dataset[Any] = Subset(val_set, range(count))
    if transform is not None:
        from convlstm.units import PhysicalUnits

        model = PhysicalUnits(model, transform)
        data = [
            tuple(transform.inverse(torch.as_tensor(a)) for a in val_set[i][:2])
            for i in range(count)
        ]  # type: ignore[assignment]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # training's random stream stays as it was
        for _ in range(2):  # the second, warm call: one-off costs would be scaled up too
            tick = time.perf_counter()
            evaluation.evaluate(
                model,
                data,
                batch_size=count,
                device=device,
                baselines=default_baselines(rain=transform is not None),
                progress=False,
            )
            seconds = time.perf_counter() - tick
    return seconds / count * eval_samples + REPORT_FILES_S
