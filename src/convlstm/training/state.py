"""The trainer's bookkeeping and the training checkpoints that carry it.

A training checkpoint (:mod:`convlstm.checkpoint`'s format) holds, besides the weights and the
configuration, the optimiser, the schedule, the RNG states and :class:`TrainState`: enough for a
resumed run to end with the same weights as an uninterrupted one and log the same metrics rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from convlstm.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_state_checked,
    make_checkpoint,
    save_checkpoint,
)
from convlstm.config import Config, config_to_dict
from convlstm.models import EncoderForecaster

__all__ = ["TrainState", "load_training_checkpoint", "save_training_checkpoint"]


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint (``trainer``)."""

    epoch: int = 0
    """Epochs completed."""
    epoch_step: int = 0
    """Optimiser steps done inside the epoch in progress (0 at an epoch boundary)."""
    step: int = 0
    """Optimiser steps done in all."""
    total_steps: int = 0
    """Steps planned (a time budget may re-plan them)."""
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    # the epoch in progress, so that a run resumed in its middle logs the same row
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epoch_seconds: float = 0.0


def save_training_checkpoint(
    path: Path,
    model: EncoderForecaster,
    config: Config,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    precision: str,
    data_transform: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint that :func:`load_training_checkpoint` can continue from (atomically).

    ``data_transform`` (rain data: ``RainTransform.to_dict()`` of the training data, see
    :mod:`convlstm.units`) is stored when given, so the loaded model can work in mm/h."""
    extra = {} if data_transform is None else {"data_transform": data_transform}
    checkpoint = make_checkpoint(
        model,
        config.model.name,
        config_to_dict(config),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        epoch=state.epoch,
        epoch_step=state.epoch_step,
        step=state.step,
        best_metric=state.best_metric,
        rng=capture_rng(),
        trainer=asdict(state),
        precision=precision,
        **extra,
    )
    return save_checkpoint(path, checkpoint)


def load_training_checkpoint(
    path: Path,
    model: EncoderForecaster,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[TrainState, dict[str, Any]]:
    """Load ``path`` into ``model``, ``optimizer`` and ``scheduler``; returns the trainer's state
    and the RNG states to restore when training continues.

    Entries that older versions wrote and no longer read (``grad_scaler``; ``epoch_steps`` in
    ``trainer``, a copy of ``epoch_step``) are ignored.

    Raises:
        CheckpointError: unreadable, of another model, or without training state (an export).
    """
    checkpoint = load_checkpoint(path, map_location="cpu")
    load_state_checked(model, checkpoint["model_state"], f"checkpoint {path}")
    known = {f.name for f in fields(TrainState)}
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        trainer = checkpoint["trainer"]
        state = TrainState(**{k: v for k, v in trainer.items() if k in known})
        rng = checkpoint["rng"]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"checkpoint {path} cannot continue a training run (a weights-only export, or "
            f"damaged training state): {type(error).__name__} {error}"
        ) from None
    return state, rng
