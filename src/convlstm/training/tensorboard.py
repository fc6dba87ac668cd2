"""TensorBoard logs of a training run (``run.tensorboard=true``; needs the ``tensorboard``
package, the ``[tensorboard]`` extra).

The run folder's ``tensorboard/`` then holds:

* ``train/loss`` and ``train/lr`` at every optimiser step;
* at every validation ``train/epoch_loss``, ``val/mse_frame``, ``val/best_mse_frame``,
  ``train/teacher_forcing``, ``throughput/seq_per_s`` and the image ``val/forecasts``: one row
  per fixed validation sequence (the first ones of the validation set), its input frames | the
  true future | the forecast;
* the configuration as hyperparameters, with the best and the final validation MSE per frame
  (``hparams/best_val_mse_frame``, ``hparams/final_val_mse_frame``), written when training ends.

The functions taking a ``writer`` (a :class:`torch.utils.tensorboard.SummaryWriter`, e.g. a
Lightning ``TensorBoardLogger``'s ``experiment``) can be used by other training loops::

    log_forecasts(writer, "val/forecasts", inputs, targets, forecast, step)
    log_hparams(writer, flat_hparams(config_to_dict(config)), {"hparams/best": 101.2})
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "FORECAST_SEQUENCES",
    "TrainingBoard",
    "available",
    "declare_hparams",
    "first_sequences",
    "flat_hparams",
    "forecast_grid",
    "log_forecasts",
    "log_hparams",
    "open_writer",
]

FORECAST_SEQUENCES = 4
"""Validation sequences shown in ``val/forecasts``."""
_GAP = 2  # white pixels between the input, truth and forecast panels and between sequences


def available() -> bool:
    """Whether the ``tensorboard`` package is installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def first_sequences(dataset: Dataset[Any]) -> tuple[Tensor, Tensor] | None:
    """The inputs ``(N, T_in, C, H, W)`` and the truth ``(N, T_out, C, H, W)`` (float32) of the
    first :data:`FORECAST_SEQUENCES` sequences of ``dataset``, whose items are ``(inputs,
    targets)`` or ``(inputs, targets, mask)``; ``None`` when it is empty."""
    count = min(FORECAST_SEQUENCES, len(dataset))  # type: ignore[arg-type]
    if not count:
        return None
    pairs = [dataset[i][:2] for i in range(count)]  # a third item is the mask (radar archives)
    inputs, truth = (torch.stack([torch.as_tensor(p[k]) for p in pairs]).float() for k in (0, 1))
    return inputs, truth


def open_writer(log_dir: str | Path, purge_step: int | None = None) -> Any:
    """A :class:`~torch.utils.tensorboard.SummaryWriter` into ``log_dir``; events at or after
    ``purge_step`` left by an interrupted run are hidden (pass the resumed step + 1).

    Raises:
        ImportError: the ``tensorboard`` package is missing (the message says how to install it).
    """
    if not available():
        raise ImportError(
            "TensorBoard logging needs the tensorboard package: pip install 'convlstm[tensorboard]'"
        )
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=purge_step)


def forecast_grid(inputs: Tensor, truth: Tensor, forecast: Tensor) -> Tensor:
    """One image of sequences: a row each, its input frames | truth | forecast, white gaps between.

    Frames with 3 channels are shown in colour, others by their first channel in grey. Values
    are scaled to [0, 1] by the range of inputs and truth when they leave it (forecasts clipped).

    Args:
        inputs: ``(N, T_in, C, H, W)``.
        truth: ``(N, T_out, C, H, W)``.
        forecast: ``(N, T_out, C, H, W)``.

    Returns:
        ``(3, N*H + (N-1)*gap, (T_in + 2*T_out)*W + 2*gap)`` in [0, 1], float32 on the CPU.

    >>> forecast_grid(torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8),
    ...               torch.rand(2, 2, 1, 8, 8)).shape
    torch.Size([3, 18, 60])
    """
    if truth.shape != forecast.shape or inputs.shape[0] != truth.shape[0]:
        raise ValueError(
            f"forecast_grid needs inputs (N, T_in, C, H, W) and truth and forecast of one shape "
            f"(N, T_out, C, H, W), got {tuple(inputs.shape)}, {tuple(truth.shape)} and "
            f"{tuple(forecast.shape)}"
        )
    panels = [t.detach().float().cpu() for t in (inputs, truth, forecast)]
    low = min(float(panels[0].min()), float(panels[1].min()))
    high = max(float(panels[0].max()), float(panels[1].max()))
    if low < 0 or high > 1:
        panels = [(p - low) / max(high - low, 1e-12) for p in panels]
    rows = []
    for sequence in range(inputs.shape[0]):
        strips = [torch.cat(list(_rgb(p[sequence])), dim=-1) for p in panels]
        rows.append(_join(strips, dim=-1))
    return _join(rows, dim=-2).clamp(0, 1)


def _rgb(frames: Tensor) -> Tensor:
    """``(T, C, H, W)`` -> ``(T, 3, H, W)``."""
    if frames.shape[1] == 3:
        return frames
    return frames[:, :1].expand(-1, 3, -1, -1)


def _join(images: list[Tensor], dim: int) -> Tensor:
    """``images`` concatenated along ``dim`` with white gaps between them."""
    shape = list(images[0].shape)
    shape[dim] = _GAP
    gap = torch.ones(shape)
    parts = [images[0]]
    for image in images[1:]:
        parts += [gap, image]
    return torch.cat(parts, dim=dim)


def log_forecasts(
    writer: Any, tag: str, inputs: Tensor, truth: Tensor, forecast: Tensor, step: int
) -> None:
    """Add :func:`forecast_grid` of the sequences as image ``tag`` at ``step``."""
    writer.add_image(tag, forecast_grid(inputs, truth, forecast), step)


def flat_hparams(
    config: Mapping[str, Any], prefix: str = ""
) -> dict[str, bool | int | float | str]:
    """A nested configuration (:func:`convlstm.config.config_to_dict`) as the flat
    ``section.key`` values TensorBoard's hyperparameters accept (others as JSON text).

    >>> flat_hparams({"optim": {"lr": 0.001, "betas": [0.9, 0.95]}, "run": {"max_minutes": None}})
    {'optim.lr': 0.001, 'optim.betas': '[0.9, 0.95]', 'run.max_minutes': 'null'}
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def declare_hparams(
    writer: Any, hparams: Mapping[str, bool | int | float | str], metric_names: Iterable[str]
) -> None:
    """Record ``hparams`` and the names of the scalars that score them in the writer's own event
    file (unlike ``SummaryWriter.add_hparams``, which starts another run folder). TensorBoard's
    HParams dashboard shows each metric's latest scalar value, and keeps the first record of a
    run: declare before any other code records hyperparameters (Lightning's logger does at the
    start of fitting), add the scores when they are known."""
    from torch.utils.tensorboard.summary import hparams as summary

    experiment, start, end = summary(dict(hparams), dict.fromkeys(metric_names, 0.0))
    for record in (experiment, start, end):
        writer.file_writer.add_summary(record)


def log_hparams(
    writer: Any,
    hparams: Mapping[str, bool | int | float | str],
    metrics: Mapping[str, float],
    step: int | None = None,
) -> None:
    """Record ``hparams`` with the run's final ``metrics`` (as scalars at ``step``) in the
    writer's own event file (:func:`declare_hparams`, then the scalars)."""
    declare_hparams(writer, hparams, metrics)
    for name, value in metrics.items():
        writer.add_scalar(name, value, step)


class TrainingBoard:
    """The TensorBoard log of one training run (rank 0 only; see the module docstring).

    Args:
        log_dir: the folder of the event files (``<run>/tensorboard``).
        val_set: the validation data; its first :data:`FORECAST_SEQUENCES` sequences are shown.
        purge_step: see :func:`open_writer`.
    """

    def __init__(
        self, log_dir: str | Path, val_set: Dataset[Any], purge_step: int | None = None
    ) -> None:
        self.writer = open_writer(log_dir, purge_step)
        sequences = first_sequences(val_set)
        self.inputs: Tensor | None = None if sequences is None else sequences[0]
        """The fixed sequences' input frames ``(N, T_in, C, H, W)``, or ``None`` without
        validation data."""
        self.truth: Tensor | None = None if sequences is None else sequences[1]
        """Their true future ``(N, T_out, C, H, W)``."""

    def scalars(self, values: Mapping[str, float | None], step: int) -> None:
        """Add each defined, finite value as a scalar at ``step``."""
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def epoch_scalars(self, row: Mapping[str, Any], step: int) -> None:
        """The scalars of an epoch's metrics row (``metrics.jsonl``) at ``step``."""
        names = {
            "train_loss": "train/epoch_loss",
            "val_mse_frame": "val/mse_frame",
            "best_val_mse_frame": "val/best_mse_frame",
            "teacher_forcing": "train/teacher_forcing",
            "seq_per_s": "throughput/seq_per_s",
        }
        self.scalars({tag: row[key] for key, tag in names.items()}, step)

    def forecasts(self, forecast: Tensor, step: int) -> None:
        """Add the grid of the fixed sequences (:attr:`inputs`, :attr:`truth`) and their
        ``forecast`` ``(N, T_out, C, H, W)``, made by the caller's model."""
        if self.inputs is not None and self.truth is not None:
            log_forecasts(self.writer, "val/forecasts", self.inputs, self.truth, forecast, step)

    def finish(
        self,
        hparams: Mapping[str, bool | int | float | str],
        metrics: Mapping[str, float | None],
        step: int,
    ) -> None:
        """Record the hyperparameters with the defined ``metrics`` (at the final ``step``)."""
        defined = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
        log_hparams(self.writer, hparams, defined, step)

    def flush(self) -> None:
        """Write pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
