"""The training loop: one optimiser step, one epoch, and the validation that ends it.

Read in order: :meth:`Trainer.__init__` builds the data, the model, AdamW and the schedule (or
restores them from ``last.pt``); :meth:`Trainer.run` trains epoch after epoch; each epoch
(:meth:`Trainer._train_epoch`) takes optimiser steps (:meth:`Trainer._step`: forward under
autocast, loss, backward, clipping, a step unless the loss or gradient is not finite), and after
each step the ranks agree, in one all-reduce, on the mean loss and on whether to stop (a signal,
the time budget). :meth:`Trainer._end_epoch` validates, logs a metrics row and saves checkpoints;
the time budget (:mod:`.budget`) then re-plans the number of steps.
"""

from __future__ import annotations

import math
import random
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from convlstm.checkpoint import restore_rng
from convlstm.config import Config, ConfigError, config_to_dict
from convlstm.distributed import DistContext
from convlstm.models import EncoderForecaster, create_model
from convlstm.training import budget as _budget
from convlstm.training import progress, rundir
from convlstm.training.datasets import batches, build_datasets, is_generated
from convlstm.training.losses import training_loss, validation_sums
from convlstm.training.precision import autocast, resolve_precision
from convlstm.training.schedule import Schedule, teacher_forcing
from convlstm.training.signals import Signals, TrainingInterrupted
from convlstm.training.state import (
    TrainState,
    load_training_checkpoint,
    save_training_checkpoint,
)
from convlstm.training.tensorboard import TrainingBoard, flat_hparams
from convlstm.units import data_transform

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer"]

_now = time.perf_counter
"""The loop's clock (tests replace it with a fake one)."""


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite loss or gradient (``run.nonfinite="stop"``, or too many skipped)."""


@dataclass
class TrainResult:
    """What :func:`~convlstm.training.train` did. ``stop_reason``: ``completed``,
    ``early_stopping``, ``time_budget``. ``best_checkpoint`` is ``best.pt``, or ``last.pt`` when
    no validation loss was ever finite (no validation data: ``best.pt`` is then not written)."""

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    epochs: int
    steps: int
    best_metric: float | None
    stop_reason: str
    seconds: float


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (third-party code may use the global generator)
    torch.manual_seed(seed)


class Trainer:
    """One training run's model, optimiser, data and bookkeeping (every rank has one).

    Args:
        config: a validated configuration.
        out_dir: the run folder (rank 0 writes it).
        ctx: this process's place in the process group.
        resume: continue from ``out_dir/last.pt``.
        on_step: called with the global step after every optimiser step.
    """

    def __init__(
        self,
        config: Config,
        out_dir: Path,
        ctx: DistContext,
        resume: bool,
        on_step: Callable[[int], None] | None,
    ) -> None:
        self.config = config
        self.out_dir = out_dir
        self.ctx = ctx
        self.on_step = on_step
        self.device = ctx.device
        self.precision = resolve_precision(config.run.precision, self.device)

        _seed_everything(config.run.seed)
        train_set, self.val_set = build_datasets(config, epoch=0)
        # rain data: the transform is stored in checkpoints, so the model works in mm/h
        self.data_transform = data_transform(train_set)
        world = ctx.world_size
        if config.optim.batch_size % world:
            raise ConfigError(
                f"optim.batch_size={config.optim.batch_size} must be a multiple of the number of "
                f"processes ({world})"
            )
        self.local_batch = config.optim.batch_size // world
        self.steps_per_epoch = len(train_set) // world // self.local_batch  # type: ignore[arg-type]
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"data.train_samples gives {len(train_set)} training sequences, fewer than one "  # type: ignore[arg-type]
                f"batch (optim.batch_size={config.optim.batch_size})"
            )
        self.first_train_set = train_set
        planned = config.optim.epochs * self.steps_per_epoch
        if config.optim.max_steps is not None:
            planned = min(planned, config.optim.max_steps)
        self.configured_steps = planned
        self.budget = _budget.Budget(
            config.run.max_minutes,
            planned,
            self.steps_per_epoch,
            len(self.val_set),  # type: ignore[arg-type]
            config.run.eval_samples,
        )

        self.model: EncoderForecaster = create_model(config.model.name, **config.model.options)
        self.model.to(self.device)
        if config.run.channels_last:  # the layers run channels-last (train() forces it)
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.optim.lr,
            betas=(config.optim.betas[0], config.optim.betas[1]),
            weight_decay=config.optim.weight_decay,
        )
        self.schedule = Schedule(
            config.optim.schedule, config.optim.warmup_steps, planned, config.optim.min_lr_ratio
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.state = TrainState(total_steps=planned)
        self.rng: dict[str, Any] | None = None
        if resume:
            path = out_dir / "last.pt"
            self.state, self.rng = load_training_checkpoint(
                path, self.model, self.optimizer, self.scheduler
            )
            # The configured length applies (epochs may have been raised); a budget re-plans it.
            self.state.total_steps = self.schedule.total = self.configured_steps

        module: nn.Module = self.model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(self.model, device_ids=ids)
        self.module: nn.Module = (
            cast(nn.Module, torch.compile(module)) if config.run.compile else module
        )
        self.last_val: float | None = None
        """The latest validation loss (``None`` before the first validation of this process)."""
        self.board: TrainingBoard | None = None
        """The TensorBoard log (rank 0 with ``run.tensorboard``), opened by train()."""

    def header(self, resume: bool) -> str:
        """One line saying what this run will do (printed by rank 0 at the start)."""
        return progress.header_line(
            self.config,
            sum(p.numel() for p in self.model.parameters()),
            f"{self.device} ({self.precision}, {self.ctx.world_size} process"
            f"{'es' if self.ctx.world_size > 1 else ''})",
            self.out_dir,
            self.configured_steps,
            self.steps_per_epoch,
            (self.state.step, self.state.epoch) if resume else None,
        )

    # -- the loop

    def run(self, signals: Signals) -> TrainResult:
        """Train until the planned steps are done, early stopping, or the time budget.

        Raises:
            TrainingInterrupted: ``signals`` caught SIGINT/SIGTERM (``last.pt`` saved first).
            NonFiniteLossError: see ``run.nonfinite``.
        """
        state = self.state
        started, base_elapsed = _now(), state.elapsed_s

        def elapsed() -> float:
            return base_elapsed + _now() - started

        if self.rng is not None:
            restore_rng(self.rng)
        stop_reason = "completed"
        while state.step < state.total_steps and stop_reason == "completed":
            stop_reason = self._train_epoch(signals, elapsed)
            train_loss = (
                state.epoch_loss_sum / state.epoch_loss_count if state.epoch_loss_count else None
            )
            steps, seconds = state.epoch_step, state.epoch_seconds
            state.epoch += 1
            state.epoch_step = 0
            state.epoch_loss_sum, state.epoch_loss_count, state.epoch_seconds = 0.0, 0, 0.0
            stop_reason = self._end_epoch(train_loss, steps, seconds, stop_reason)
            self._replan()
        if stop_reason == "completed" and state.total_steps < self.configured_steps:
            stop_reason = "time_budget"  # the budget shortened the schedule
        best = "best.pt" if state.best_metric is not None else "last.pt"
        if self.board is not None:
            self.board.finish(
                flat_hparams(config_to_dict(self.config)),
                {
                    "hparams/best_val_mse_frame": state.best_metric,
                    "hparams/final_val_mse_frame": self.last_val,
                },
                state.step,
            )
        return TrainResult(
            out_dir=self.out_dir,
            best_checkpoint=self.out_dir / best,
            last_checkpoint=self.out_dir / "last.pt",
            epochs=state.epoch,
            steps=state.step,
            best_metric=state.best_metric,
            stop_reason=stop_reason,
            seconds=state.elapsed_s,
        )

    def _train_epoch(self, signals: Signals, elapsed: Callable[[], float]) -> str:
        """Take the steps of the epoch in progress, from where it stands, until its end or the
        planned total (``"completed"``) or the time budget (``"time_budget"``)."""
        config, state = self.config, self.state
        dataset = self._train_set(state.epoch)
        indices = self._indices(dataset, state.epoch)
        loader = batches(dataset, indices, self.local_batch, config.data.num_workers, state.epoch)
        bar = progress.epoch_bar(
            state.epoch + 1,
            min(self.steps_per_epoch, state.total_steps - state.step + state.epoch_step),
            state.epoch_step,
            self.ctx.is_main and config.run.progress,
        )
        # the epoch's running sums start from the checkpoint's (zero at an epoch's start)
        epoch_start = _now() - state.epoch_seconds
        with bar:
            for inputs, targets, *mask in loader:  # a mask when the data have one
                if state.step >= state.total_steps:
                    break
                tick = _now()
                loss = self._step(inputs, targets, *mask)
                if self.on_step is not None:
                    self.on_step(state.step)
                state.elapsed_s = elapsed()
                loss, interrupted, out_of_time = self._agree(
                    loss, signals, self.budget.out_of_time(state.elapsed_s)
                )
                if not math.isnan(loss):  # NaN: a skipped step
                    state.epoch_loss_sum += loss
                    state.epoch_loss_count += 1
                state.epoch_seconds = _now() - epoch_start
                step_seconds = _now() - tick
                if self.budget.time_step(state.step, step_seconds):
                    self._replan()
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.4g}", seq_s=f"{config.optim.batch_size / step_seconds:.1f}"
                )
                if self.board is not None:
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.board.scalars({"train/loss": loss, "train/lr": lr}, state.step)
                if interrupted:
                    bar.close()
                    path = self._save("last.pt")
                    self.ctx.barrier()
                    raise TrainingInterrupted(
                        signals.received or signal.SIGTERM, path, state.step, self.ctx.world_size
                    )
                if out_of_time:
                    state.epoch_seconds = _now() - epoch_start
                    return "time_budget"
        state.epoch_seconds = _now() - epoch_start
        return "completed"

    def _agree(self, loss: float, signals: Signals, out_of_time: bool) -> tuple[float, bool, bool]:
        """In one all-reduce: the step's loss averaged over the ranks (NaN if any skipped it),
        and whether any rank received a signal or ran out of time."""
        flags = self.ctx.all_reduce(
            torch.tensor(
                [loss, float(signals.received is not None), float(out_of_time)],
                dtype=torch.float64,
            )
        )
        return float(flags[0]) / self.ctx.world_size, bool(flags[1] > 0), bool(flags[2] > 0)

    def _step(self, inputs: Tensor, targets: Tensor, mask: Tensor | None = None) -> float:
        """One optimiser step on a batch; returns its loss (NaN if the step was skipped).
        ``mask`` ``(B, T_in + T_out, C, H, W)`` (1 valid, 0 no data): the loss ignores the
        masked pixels."""
        config, state = self.config, self.state
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        self.module.train()
        weight = config.optim.input_loss_weight
        with autocast(self.device, self.precision):
            pred = self.module(
                inputs,
                config.data.horizon,
                targets=targets,
                teacher_forcing=teacher_forcing(config, state.step),
                predict_inputs=bool(weight),
            )
        loss = training_loss(
            config.optim, pred, inputs, targets, mask, transform=self.data_transform
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = config.optim.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        value = float(loss.detach())
        finite = math.isfinite(value) and bool(torch.isfinite(norm))
        finite = not bool(self.ctx.all_reduce(torch.tensor([0.0 if finite else 1.0]))[0])
        if finite:
            self.optimizer.step()
        else:
            self._nonfinite(value)
        with warnings.catch_warnings():
            # a skipped step still advances the schedule, so that it follows the step count; if
            # no optimizer step has run yet, torch warns about the order, which is intended here
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        state.step += 1
        state.epoch_step += 1
        return value if finite else math.nan

    def _nonfinite(self, value: float) -> None:
        state = self.state
        where = (
            f"at step {state.step} (epoch {state.epoch + 1}, batch {state.epoch_step + 1} of the "
            f"epoch; loss {value})"
        )
        last = self.out_dir / "last.pt"
        keep = (
            f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        )
        if self.config.run.nonfinite == "stop":
            raise NonFiniteLossError(f"non-finite loss or gradient {where}; stopped, {keep}")
        state.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        if state.skipped > self.config.run.max_skips:
            raise NonFiniteLossError(
                f"non-finite loss or gradient {where}: more than run.max_skips="
                f"{self.config.run.max_skips} skipped steps; stopped, {keep}"
            )
        if self.ctx.is_main:
            progress.say(f"warning: skipped the step {where} ({state.skipped} skipped so far)")

    def _train_set(self, epoch: int) -> Dataset[Any]:
        if epoch == 0 or not is_generated(self.first_train_set):
            return self.first_train_set
        return build_datasets(self.config, epoch)[0]  # fresh sequences every epoch

    def _indices(self, dataset: Dataset[Any], epoch: int) -> list[int]:
        """This rank's sequences of ``epoch`` still to train on, in order."""
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            shuffle=True,
            seed=self.config.run.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        used = self.steps_per_epoch * self.local_batch
        return list(sampler)[self.state.epoch_step * self.local_batch : used]

    # -- the time budget

    def _replan(self) -> None:
        """Let the time budget re-plan the number of steps (a collective)."""
        state = self.state
        total = self.budget.plan(
            state.step, state.total_steps, state.epoch_step, state.elapsed_s, self.ctx
        )
        state.total_steps = self.schedule.total = total

    def _probe_report(self) -> float:
        """Seconds the final report will take (:func:`.budget.probe_report`)."""
        return _budget.probe_report(
            self.model,
            self.val_set,
            self.device,
            self.config.run.eval_batch_size,
            self.config.run.eval_samples,
            self.data_transform,
        )

    # -- the end of an epoch

    @torch.no_grad()
    def validate(self) -> float:
        """Validation MSE per frame, reduced over ranks (NaN without validation data)."""
        self.model.eval()
        indices = list(range(self.ctx.rank, len(self.val_set), self.ctx.world_size))  # type: ignore[arg-type]
        loader = batches(
            self.val_set, indices, self.config.run.eval_batch_size, self.config.data.num_workers, 0
        )
        total = torch.zeros(2, dtype=torch.float64)
        for inputs, targets, *mask in loader:  # pixels without data count no error
            inputs = inputs.to(self.device)
            with autocast(self.device, self.precision):
                pred = self.model(inputs, targets.shape[1])
            total += validation_sums(pred.float().cpu(), targets, *mask)
        total = self.ctx.all_reduce(total)
        return float(total[0] / total[1]) if total[1] else math.nan

    def _end_epoch(self, train_loss: float | None, steps: int, seconds: float, reason: str) -> str:
        """Validate, log the epoch's row, save ``best.pt`` (if better) and ``last.pt``; returns
        the stop reason (``early_stopping`` once ``run.patience`` epochs brought no gain)."""
        state, config = self.state, self.config
        tick = _now()
        val = self.last_val = self.validate()
        self.budget.val_seconds = _now() - tick
        budgeted = config.run.max_minutes and reason != "time_budget"  # the plan will use it
        if self.budget.report_seconds is None and budgeted and config.run.eval_samples:
            self.budget.report_seconds = self._probe_report()
        improved = math.isfinite(val) and (state.best_metric is None or val < state.best_metric)
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = val, state.epoch, 0
        else:
            state.bad_epochs += 1
        if config.run.patience and state.bad_epochs >= config.run.patience:
            reason = "early_stopping" if reason == "completed" else reason
        row = {
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": train_loss,
            "val_mse_frame": val,
            "best_val_mse_frame": state.best_metric,
            "lr": self.optimizer.param_groups[0]["lr"],
            "teacher_forcing": teacher_forcing(config, state.step),
            "seq_per_s": steps * config.optim.batch_size / seconds if seconds else None,
            "epoch_s": round(seconds, 3),
            "val_s": round(self.budget.val_seconds, 3),
            "elapsed_s": round(state.elapsed_s, 3),
            "skipped": state.skipped,
            "total_steps": state.total_steps,
        }
        if self.ctx.is_main:
            rundir.append_row(self.out_dir, row)  # first: a resumed run drops rows past it
            if improved:
                self._save("best.pt")
            self._save("last.pt")
            if self.board is not None:
                self._log_epoch(row)
            if config.run.progress:
                progress.say(
                    progress.epoch_line(
                        state.epoch,
                        state.step,
                        state.total_steps,
                        train_loss,
                        val,
                        state.best_metric,
                        row["seq_per_s"],
                    )
                )
        self.ctx.barrier()
        return reason

    def _log_epoch(self, row: dict[str, Any]) -> None:
        """The epoch's scalars and the forecasts of the fixed validation sequences."""
        assert self.board is not None
        board, step = self.board, self.state.step
        board.epoch_scalars(row, step)
        if board.inputs is not None and board.truth is not None:
            self.model.eval()
            with torch.no_grad(), autocast(self.device, self.precision):
                forecast = self.model(board.inputs.to(self.device), board.truth.shape[1])
            board.forecasts(forecast, step)
        board.flush()

    def _save(self, name: str) -> Path:
        """Write checkpoint ``name`` (rank 0; others return its path)."""
        path = self.out_dir / name
        if not self.ctx.is_main:
            return path
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise NonFiniteLossError(
                f"refusing to save {name}: the weights hold NaN/inf at step {self.state.step}"
            )
        return save_training_checkpoint(
            path,
            self.model,
            self.config,
            self.optimizer,
            self.scheduler,
            self.state,
            self.precision,
            None if self.data_transform is None else self.data_transform.to_dict(),
        )
