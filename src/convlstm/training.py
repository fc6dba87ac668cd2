"""Training loop: AdamW with warm-up and a cosine, linear or one-cycle schedule, gradient
clipping, bf16 autocast, scheduled sampling, early stopping, a wall-clock budget, checkpoints,
resume, signals and DistributedDataParallel under ``torchrun``.

Run folder written by :func:`train` (only rank 0 writes)::

    config.yaml      the resolved configuration (every field explicit)
    metrics.jsonl    one JSON object per epoch: losses, learning rate, throughput, timings
                     (strict JSON: an undefined value, such as the loss of an epoch whose
                     steps were all skipped, is null)
    last.pt          checkpoint at the end of the latest epoch (or at an interruption)
    best.pt          checkpoint with the lowest validation loss so far
    tensorboard/     TensorBoard scalars, when the ``tensorboard`` package is installed

Reproducibility: the model is initialised from ``run.seed``; each epoch's data (fresh sequences
for generated datasets, an order for fixed ones) is a function of ``(run.seed, epoch)``; a
checkpoint stores the optimiser, schedule, RNG states, the exact step and the running sums of the
epoch in progress, so a resumed run ends with the same weights as an uninterrupted one (bitwise on
CPU) and logs the same metrics rows. Hidden temporary files that a crash leaves while writing the
run's files (``.last.pt.1a2b3c4d.tmp``) count as the run's and are removed when it (re)starts.

The validation loss is the MSE per frame (squared error summed over a frame's pixels, averaged
over frames and sequences), the Moving MNIST literature's metric.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shlex
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from convlstm._atomic import atomic_write_text, check_parent, is_temporary
from convlstm.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_state_checked,
    make_checkpoint,
    restore_rng,
    save_checkpoint,
)
from convlstm.config import Config, ConfigError, config_to_dict, save_config, validate_config
from convlstm.distributed import DistContext, init_distributed
from convlstm.models import EncoderForecaster, create_model

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "TrainingInterrupted",
    "build_datasets",
    "lr_factor",
    "resolve_precision",
    "resume_command",
    "train",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
_RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, "last.pt", "best.pt")
_REPORT_FILES_S = 5.0
"""Seconds the final report needs beyond scoring: loading ``best.pt``, curves, GIFs (about 2)."""
# Arguments that select each split of a dataset, unless the configuration sets them.
_SPLITS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "moving_mnist": ({"digits": "train"}, {"digits": "val"}),
    "array": ({"split": "train"}, {"split": "val"}),
}


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved.

    ``exit_code`` is ``128 + signal`` (130 for SIGINT, 143 for SIGTERM); ``resume_command`` is
    the command line that continues the run (printed in the message).
    """

    def __init__(self, signum: int, checkpoint: Path, step: int, world_size: int = 1) -> None:
        name = signal.Signals(signum).name
        self.resume_command = resume_command(checkpoint.parent, world_size)
        super().__init__(
            f"interrupted by {name} at step {step}; checkpoint saved to {checkpoint}; "
            f"continue with: {self.resume_command}"
        )
        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum


def resume_command(out_dir: str | Path, world_size: int = 1) -> str:
    """The shell command that continues the run in ``out_dir`` (under ``torchrun`` with as many
    processes when ``world_size`` > 1).

    >>> resume_command("runs/my run")
    "convlstm train --out 'runs/my run' --resume"
    """
    program = (
        f"torchrun --nproc_per_node={world_size} -m convlstm.cli" if world_size > 1 else "convlstm"
    )
    return f"{program} train --out {shlex.quote(str(out_dir))} --resume"


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite loss or gradient (``run.nonfinite="stop"``, or too many skipped)."""


@dataclass
class TrainResult:
    """What :func:`train` did. ``stop_reason``: ``completed``, ``early_stopping``,
    ``time_budget``."""

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    epochs: int
    steps: int
    best_metric: float | None
    stop_reason: str
    seconds: float


@dataclass
class _State:
    """The trainer's bookkeeping, saved in checkpoints."""

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0
    total_steps: int = 0
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    # the epoch in progress, so that a run resumed in its middle logs the same row
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epoch_steps: int = 0
    epoch_seconds: float = 0.0


# ----------------------------------------------------------------------------- schedule


class _Schedule:
    """Learning-rate factor per step (a callable object, so ``LambdaLR`` saves its fields)."""

    def __init__(self, kind: str, warmup: int, total: int, min_ratio: float) -> None:
        self.kind, self.warmup, self.total, self.min_ratio = kind, warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.kind, self.warmup, self.total, self.min_ratio)


def lr_factor(step: int, kind: str, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimiser ``step`` (0-based) of ``total``.

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


def _teacher_forcing(config: Config, step: int) -> float:
    optim = config.optim
    if not optim.teacher_forcing or not optim.teacher_forcing_steps:
        return 0.0
    return optim.teacher_forcing * max(0.0, 1.0 - step / optim.teacher_forcing_steps)


def _loss(kind: str, pred: Tensor, target: Tensor) -> Tensor:
    pred = pred.float()
    if kind == "bce":  # written out so that NaN propagates to the non-finite policy
        p = pred.clamp(1e-6, 1 - 1e-6)
        return -(target * torch.log(p) + (1 - target) * torch.log1p(-p)).mean()
    loss = F.mse_loss(pred, target)
    return loss + F.l1_loss(pred, target) if kind == "mse+l1" else loss


# ----------------------------------------------------------------------------- devices


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA devices that support it and on CPUs with AMX-BF16 (where
    oneDNN's bf16 convolutions measured faster than fp32), else ``fp32``.

    >>> resolve_precision("fp32", torch.device("cpu"))
    'fp32'
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.cpu._is_amx_tile_supported() else "fp32"
    return "fp32"


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- data


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 31-bit seed for epoch ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)


def _split_options(config: Config, split: str) -> dict[str, Any]:
    data = config.data
    defaults = _SPLITS.get(data.name.strip().lower().replace("-", "_"), ({}, {}))
    index, extra = (0, data.train_options) if split == "train" else (1, data.val_options)
    return {
        **defaults[index],
        **data.options,
        **extra,
        "input_len": data.input_len,
        "output_len": data.horizon,
    }


def _generated(dataset: Dataset[Any]) -> bool:
    return hasattr(dataset, "seed") and hasattr(dataset, "num_samples")


def build_datasets(config: Config, epoch: int = 0) -> tuple[Dataset[Any], Dataset[Any]]:
    """The training data of ``epoch`` and the validation data, checked against the model.

    Generated datasets get ``num_samples`` and a seed (per epoch for training, ``data.val_seed``
    for validation) unless ``data`` options fix them; fixed datasets are capped to
    ``train_samples`` / ``val_samples`` sequences (0: all).

    Raises:
        ConfigError: the frames do not fit the model (channels, patch size) or the dataset cannot
            be built from the options.
    """
    from convlstm.data import get_dataset

    datasets = []
    for split in ("train", "val"):
        options = _split_options(config, split)
        count = config.data.train_samples if split == "train" else config.data.val_samples
        try:
            dataset = get_dataset(config.data.name, **options)
            if _generated(dataset):
                seed = (
                    _epoch_seed(config.run.seed, epoch)
                    if split == "train"
                    else config.data.val_seed
                )
                dataset = get_dataset(
                    config.data.name, **{"num_samples": count, "seed": seed, **options}
                )
            elif count and count < len(dataset):  # type: ignore[arg-type]
                dataset = Subset(dataset, range(count))
            if split == "train":
                _check_frames(config, dataset)
        except ConfigError:
            raise
        except (TypeError, ValueError, OSError, IndexError, MemoryError, OverflowError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ConfigError(f"data ({split} split of {config.data.name!r}): {reason}") from None
        datasets.append(dataset)
    return datasets[0], datasets[1]


def _check_frames(config: Config, dataset: Dataset[Any]) -> None:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ConfigError("data: the training split is empty (data.train_samples, data options)")
    inputs, _ = dataset[0]
    options = config.model.options
    channels, height, width = inputs.shape[-3:]
    if channels != options["in_channels"]:
        raise ConfigError(
            f"model.in_channels={options['in_channels']} but the {config.data.name!r} frames have "
            f"{channels} channels"
        )
    patch = options["patch_size"]
    if height % patch or width % patch:
        raise ConfigError(
            f"model.patch_size={patch} must divide the frame size {height}x{width} of "
            f"{config.data.name!r}"
        )


def _batches(
    dataset: Dataset[Any], indices: list[int], batch_size: int, workers: int, seed: int
) -> DataLoader[Any]:
    """A loader over ``indices`` in order; it has its own generator, so creating it does not
    draw from torch's global RNG (which resumed runs must replay exactly)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


# ----------------------------------------------------------------------------- output folder


def _leftovers(out_dir: Path) -> list[Path]:
    """Hidden temporary files and folders that a crash during one of the run's atomic writes
    left in ``out_dir`` (``.last.pt.1a2b3c4d.tmp``, ``.report.1a2b3c4d.tmp``, ...)."""
    if not out_dir.is_dir():
        return []
    names = (*_RUN_MARKERS, "report")
    return [
        entry for entry in out_dir.iterdir() if any(is_temporary(entry, name) for name in names)
    ]


def _check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless asked; read-only (every rank runs it).

    Temporary files that a crash left behind while writing the run's files count as the run's
    (a folder that holds nothing else is treated as empty; they are removed when it starts)."""
    check_parent(out_dir)
    if resume:
        if not (out_dir / "last.pt").is_file():
            raise FileNotFoundError(
                f"cannot resume: {out_dir / 'last.pt'} does not exist (the run saved no "
                "checkpoint yet; start it again with --overwrite)"
            )
        return
    leftovers = _leftovers(out_dir)
    if not out_dir.exists() or (
        out_dir.is_dir() and all(entry in leftovers for entry in out_dir.iterdir())
    ):
        return
    if not overwrite:
        raise FileExistsError(
            f"output directory {out_dir} already exists; pass --resume to continue that run or "
            "--overwrite to replace it"
        )
    marked = leftovers or any((out_dir / name).exists() for name in _RUN_MARKERS)
    if not out_dir.is_dir() or not marked:
        raise FileExistsError(
            f"refusing to overwrite {out_dir}: it does not look like a training run folder "
            f"(none of {', '.join(_RUN_MARKERS)} in it)"
        )
    here = Path.cwd().resolve()
    if out_dir.resolve() == here or out_dir.resolve() in here.parents:
        raise FileExistsError(f"refusing to overwrite {out_dir}: it contains the current directory")


# ----------------------------------------------------------------------------- signals


class _Signals:
    """Turn the first SIGINT/SIGTERM into a flag checked between steps; a second one aborts."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)


# ----------------------------------------------------------------------------- the trainer


class _Trainer:
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

        self.model: EncoderForecaster = create_model(config.model.name, **config.model.options)
        self.model.to(self.device)
        if config.run.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.optim.lr,
            betas=(config.optim.betas[0], config.optim.betas[1]),
            weight_decay=config.optim.weight_decay,
        )
        self.schedule = _Schedule(
            config.optim.schedule, config.optim.warmup_steps, planned, config.optim.min_lr_ratio
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.state = _State(total_steps=planned)
        self.rng: dict[str, Any] | None = None
        if resume:
            self._load(out_dir / "last.pt")

        module: nn.Module = self.model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(self.model, device_ids=ids)
        self.module: nn.Module = (
            cast(nn.Module, torch.compile(module)) if config.run.compile else module
        )
        self.tensorboard: Any = None
        self.val_seconds: float | None = None
        self.report_seconds: float | None = None  # the final report's cost, probed once

    def header(self, resume: bool) -> str:
        """One line saying what this run will do (printed by rank 0 at the start)."""
        config, state = self.config, self.state
        parameters = sum(p.numel() for p in self.model.parameters())
        budget = config.run.max_minutes
        line = (
            f"training {config.model.name} ({parameters:,} parameters) on {self.device} "
            f"({self.precision}, {self.ctx.world_size} process"
            f"{'es' if self.ctx.world_size > 1 else ''}) into {self.out_dir}: "
            f"{self.configured_steps} steps of {config.optim.batch_size} sequences "
            f"({self.steps_per_epoch} per epoch), "
            + (f"time budget {budget:g} min" if budget is not None else "no time budget")
        )
        if resume:
            line += f"; resuming at step {state.step} (epoch {state.epoch + 1})"
        return line

    # -- checkpoints

    def _load(self, path: Path) -> None:
        checkpoint = load_checkpoint(path, map_location="cpu")
        load_state_checked(self.model, checkpoint["model_state"], f"checkpoint {path}")
        known = {f.name for f in fields(_State)}
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            trainer = checkpoint["trainer"]
            self.state = _State(**{k: v for k, v in trainer.items() if k in known})
            self.rng = checkpoint["rng"]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(
                f"checkpoint {path} cannot continue a training run (a weights-only export, or "
                f"damaged training state): {type(error).__name__} {error}"
            ) from None
        # The configured length applies (epochs may have been raised); a time budget re-plans it.
        self.state.total_steps = self.schedule.total = self.configured_steps

    def _save(self, name: str) -> Path:
        path = self.out_dir / name
        if not self.ctx.is_main:
            return path
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise NonFiniteLossError(
                f"refusing to save {name}: the weights hold NaN/inf at step {self.state.step}"
            )
        checkpoint = make_checkpoint(
            self.model,
            self.config.model.name,
            config_to_dict(self.config),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            grad_scaler=None,
            epoch=self.state.epoch,
            epoch_step=self.state.epoch_step,
            step=self.state.step,
            best_metric=self.state.best_metric,
            rng=capture_rng(),
            trainer=asdict(self.state),
            precision=self.precision,
        )
        return save_checkpoint(path, checkpoint)

    # -- the loop

    def _train_set(self, epoch: int) -> Dataset[Any]:
        if epoch == 0 or not _generated(self.first_train_set):
            return self.first_train_set
        return build_datasets(self.config, epoch)[0]  # fresh sequences every epoch

    def _indices(self, dataset: Dataset[Any], epoch: int) -> list[int]:
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

    def run(self, signals: _Signals) -> TrainResult:
        state, config = self.state, self.config
        started = time.perf_counter()
        base_elapsed = state.elapsed_s
        if self.rng is not None:
            restore_rng(self.rng)
        stop_reason = "completed"
        timed_steps = 0
        timed_seconds = 0.0
        while state.step < state.total_steps and stop_reason == "completed":
            dataset = self._train_set(state.epoch)
            indices = self._indices(dataset, state.epoch)
            loader = _batches(
                dataset, indices, self.local_batch, config.data.num_workers, state.epoch
            )
            steps_in_epoch = min(
                self.steps_per_epoch, state.total_steps - state.step + state.epoch_step
            )
            bar = tqdm(
                total=steps_in_epoch,
                initial=state.epoch_step,
                desc=f"epoch {state.epoch + 1}",
                unit="batch",
                dynamic_ncols=True,
                disable=not (self.ctx.is_main and config.run.progress),
                leave=False,
            )
            # the epoch's running sums start from the checkpoint's (zero at an epoch's start)
            epoch_start = time.perf_counter() - state.epoch_seconds
            for inputs, targets in loader:
                if state.step >= state.total_steps:
                    break
                tick = time.perf_counter()
                loss = self._step(inputs, targets)
                state.epoch_steps += 1
                if self.on_step is not None:
                    self.on_step(state.step)
                elapsed = base_elapsed + time.perf_counter() - started
                state.elapsed_s = elapsed
                out_of_time = (
                    config.run.max_minutes is not None and elapsed > config.run.max_minutes * 60
                )
                flags = self.ctx.all_reduce(
                    torch.tensor(
                        [loss, float(signals.received is not None), float(out_of_time)],
                        dtype=torch.float64,
                    )
                )
                loss = float(flags[0]) / self.ctx.world_size
                if not math.isnan(loss):  # NaN: a skipped step
                    state.epoch_loss_sum += loss
                    state.epoch_loss_count += 1
                state.epoch_seconds = time.perf_counter() - epoch_start
                step_seconds = time.perf_counter() - tick
                if state.step > 2:  # the first steps include warm-up costs
                    timed_steps += 1
                    timed_seconds += step_seconds
                if timed_steps == 10:
                    self._plan(timed_seconds / timed_steps, elapsed)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.4g}", seq_s=f"{config.optim.batch_size / step_seconds:.1f}"
                )
                if flags[1] > 0:
                    bar.close()
                    signum = signals.received or signal.SIGTERM
                    path = self._save("last.pt")
                    self.ctx.barrier()
                    raise TrainingInterrupted(signum, path, state.step, self.ctx.world_size)
                if flags[2] > 0:
                    stop_reason = "time_budget"
                    break
            bar.close()
            epoch_seconds = time.perf_counter() - epoch_start
            train_loss = (
                state.epoch_loss_sum / state.epoch_loss_count if state.epoch_loss_count else None
            )
            steps_done = state.epoch_steps
            state.epoch += 1
            state.epoch_step = 0
            state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
            state.epoch_steps, state.epoch_seconds = 0, 0.0
            stop_reason = self._end_epoch(train_loss, steps_done, epoch_seconds, stop_reason)
            if timed_steps:
                self._plan(timed_seconds / timed_steps, state.elapsed_s)
        if stop_reason == "completed" and state.total_steps < self.configured_steps:
            stop_reason = "time_budget"  # the budget shortened the schedule
        return TrainResult(
            out_dir=self.out_dir,
            best_checkpoint=self.out_dir / "best.pt",
            last_checkpoint=self.out_dir / "last.pt",
            epochs=state.epoch,
            steps=state.step,
            best_metric=state.best_metric,
            stop_reason=stop_reason,
            seconds=state.elapsed_s,
        )

    def _step(self, inputs: Tensor, targets: Tensor) -> float:
        config, state = self.config, self.state
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        self.module.train()
        teacher = _teacher_forcing(config, state.step)
        weight = config.optim.input_loss_weight
        with _autocast(self.device, self.precision):
            pred = self.module(
                inputs,
                config.data.horizon,
                targets=targets,
                teacher_forcing=teacher,
                predict_inputs=bool(weight),
            )
        seen = inputs.shape[1] - 1
        loss = _loss(config.optim.loss, pred[:, seen:] if weight else pred, targets)
        if weight:
            loss = loss + weight * _loss(config.optim.loss, pred[:, :seen], inputs[:, 1:])
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
            tqdm.write(f"warning: skipped the step {where} ({state.skipped} skipped so far)")

    def _plan(self, seconds_per_step: float, elapsed: float) -> None:
        """Shrink (or restore) the step budget so that training, its validations and the final
        report (estimated from the validation speed) end within ``max_minutes``."""
        budget = self.config.run.max_minutes
        if budget is None:
            return
        state = self.state
        remaining_epochs = math.ceil((state.total_steps - state.step) / self.steps_per_epoch)
        per_validation = self.val_seconds or 0.0
        report = self.report_seconds
        if report is None:  # not probed yet: a validation's speed (too low a guess on CPUs)
            samples = max(len(self.val_set), 1)  # type: ignore[arg-type]
            report = per_validation * self.config.run.eval_samples / samples
        validation = per_validation * max(remaining_epochs, 1) + report
        # Every rank must plan the same number of steps.
        seconds_per_step, validation = (
            float(v)
            for v in self.ctx.all_reduce(
                torch.tensor([seconds_per_step, validation], dtype=torch.float64), "max"
            )
        )
        affordable = int((budget * 60 - elapsed - validation) / seconds_per_step)
        total = min(self.configured_steps, state.step + max(affordable, 1))
        if total > state.total_steps and state.step > state.total_steps // 2:
            return  # no lengthening once the learning rate is past half its decay
        if abs(total - state.total_steps) > 0.02 * state.total_steps:
            state.total_steps = total
            self.schedule.total = total

    def _probe_report(self) -> float:
        """Seconds the final report will take: score one batch of validation sequences the way
        :func:`convlstm.evaluation.evaluate` does (the model in float32 and the baselines, SSIM
        and all), scaled to ``run.eval_samples``, plus ``_REPORT_FILES_S``. On a 2-core CPU
        the report of the default job took 53 s where a validation's speed promised 8, and a
        single cold batch about 120."""
        from convlstm import evaluation

        count = min(self.config.run.eval_batch_size, len(self.val_set))  # type: ignore[arg-type]
        if not count:
            return _REPORT_FILES_S
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # training's random stream stays as it was
            for _ in range(2):  # the second, warm call: one-off costs would be scaled up too
                tick = time.perf_counter()
                evaluation.evaluate(
                    self.model,
                    Subset(self.val_set, range(count)),
                    batch_size=count,
                    device=self.device,
                    progress=False,
                )
                seconds = time.perf_counter() - tick
        return seconds / count * self.config.run.eval_samples + _REPORT_FILES_S

    @torch.no_grad()
    def validate(self) -> float:
        """Validation MSE per frame, reduced over ranks."""
        self.model.eval()
        indices = list(range(self.ctx.rank, len(self.val_set), self.ctx.world_size))  # type: ignore[arg-type]
        loader = _batches(
            self.val_set, indices, self.config.run.eval_batch_size, self.config.data.num_workers, 0
        )
        total = torch.zeros(2, dtype=torch.float64)
        for inputs, targets in loader:
            inputs = inputs.to(self.device)
            with _autocast(self.device, self.precision):
                pred = self.model(inputs, targets.shape[1])
            error = (pred.float().cpu() - targets).square().sum()
            total += torch.tensor([float(error), targets.shape[0] * targets.shape[1]])
        total = self.ctx.all_reduce(total)
        return float(total[0] / total[1]) if total[1] else math.nan

    def _end_epoch(self, train_loss: float | None, steps: int, seconds: float, reason: str) -> str:
        state, config = self.state, self.config
        tick = time.perf_counter()
        val = self.validate()
        self.val_seconds = time.perf_counter() - tick
        budgeted = config.run.max_minutes and reason != "time_budget"  # the plan will use it
        if self.report_seconds is None and budgeted and config.run.eval_samples:
            self.report_seconds = self._probe_report()
        improved = math.isfinite(val) and (state.best_metric is None or val < state.best_metric)
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = val, state.epoch, 0
        else:
            state.bad_epochs += 1
        if (
            config.run.patience
            and state.bad_epochs >= config.run.patience
            and reason == "completed"
        ):
            reason = "early_stopping"
        row = {
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": train_loss,
            "val_mse_frame": val,
            "best_val_mse_frame": state.best_metric,
            "lr": self.optimizer.param_groups[0]["lr"],
            "teacher_forcing": _teacher_forcing(config, state.step),
            "seq_per_s": steps * config.optim.batch_size / seconds if seconds else None,
            "epoch_s": round(seconds, 3),
            "val_s": round(self.val_seconds, 3),
            "elapsed_s": round(state.elapsed_s, 3),
            "skipped": state.skipped,
            "total_steps": state.total_steps,
        }
        row = {key: _finite_or_none(value) for key, value in row.items()}  # strict JSON
        if self.ctx.is_main:
            # The row goes first: a resumed run drops rows past its checkpoint's epoch.
            with open(self.out_dir / METRICS_FILE, "a", encoding="utf-8") as log:
                log.write(json.dumps(row, allow_nan=False) + "\n")
            if improved:
                self._save("best.pt")
            self._save("last.pt")
            if self.tensorboard is not None:
                for key in ("train_loss", "val_mse_frame", "lr", "seq_per_s"):
                    if row[key] is not None:
                        self.tensorboard.add_scalar(key, row[key], state.step)
                self.tensorboard.flush()
            if config.run.progress:
                tqdm.write(
                    f"epoch {state.epoch}: step {state.step}/{state.total_steps} train loss "
                    f"{_fmt(train_loss, '.5g')}, val MSE/frame {_fmt(val, '.2f')} (best "
                    f"{_fmt(state.best_metric, '.2f')}), {row['seq_per_s'] or 0:.1f} seq/s"
                )
        self.ctx.barrier()
        return reason


def _finite_or_none(value: Any) -> Any:
    """``None`` for NaN and infinities (invalid in JSON), other values as they are."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _tidy(out_dir: Path, epoch: int) -> None:
    """Remove temporary files of interrupted writes, and the metrics rows (and any partial line)
    past ``epoch``, the epoch of the checkpoint a run resumes from."""
    for stale in _leftovers(out_dir):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    log = out_dir / METRICS_FILE
    if not log.exists():
        return
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if line.endswith("\n") and isinstance(row, dict) and row.get("epoch", math.inf) <= epoch:
            kept.append(line)
    if kept != lines:
        atomic_write_text(log, "".join(kept), overwrite=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (third-party code may use the global generator)
    torch.manual_seed(seed)


def _tensorboard(out_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the configured model, writing the run folder ``out_dir`` (see the module docstring).

    Under ``torchrun`` every process calls this; they train one model with
    DistributedDataParallel and only rank 0 writes files.

    Args:
        config: the configuration (validated here).
        out_dir: the run folder; an existing non-empty one is an error unless ``resume`` (continue
            from its ``last.pt``) or ``overwrite`` (delete it first).
        on_step: called with the global step after every optimiser step (for tests and hooks).

    Raises:
        ConfigError: invalid configuration (before any training).
        FileExistsError / FileNotFoundError: output folder conflicts, nothing to resume.
        TrainingInterrupted: SIGINT/SIGTERM; ``last.pt`` holds the exact step reached.
        NonFiniteLossError: NaN/inf loss; no checkpoint is written with the bad state.
        CheckpointError: ``resume`` from a corrupt or mismatching checkpoint.

    Example:
        >>> import tempfile, pathlib
        >>> from convlstm.config import apply_overrides
        >>> config = apply_overrides(Config(), [
        ...     "model.hidden_channels=[4]", "data.input_len=2", "data.horizon=2",
        ...     "data.train_samples=4", "data.val_samples=2", "optim.batch_size=2",
        ...     "optim.epochs=1", "run.progress=false", "run.eval_samples=0"])
        >>> result = train(config, pathlib.Path(tempfile.mkdtemp()) / "run")
        >>> result.steps, sorted(p.name for p in result.out_dir.iterdir())
        (2, ['best.pt', 'config.yaml', 'last.pt', 'metrics.jsonl'])
    """
    config = validate_config(config)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, resume, overwrite)
    ctx = init_distributed(config.run.device, config.run.dist_timeout_s)
    trainer = None
    threads = torch.get_num_threads()
    if config.run.threads:
        torch.set_num_threads(config.run.threads)

    def close() -> None:
        if trainer is not None and trainer.tensorboard is not None:
            trainer.tensorboard.close()
            trainer.tensorboard = None
        torch.set_num_threads(threads)
        ctx.close()

    try:
        trainer = _Trainer(config, out_dir, ctx, resume, on_step)
        ctx.barrier()
        if ctx.is_main:
            if overwrite and not resume and out_dir.exists():
                shutil.rmtree(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            _tidy(out_dir, trainer.state.epoch if resume else 0)
            save_config(config, out_dir / CONFIG_FILE, overwrite=True)
            trainer.tensorboard = _tensorboard(out_dir)
            if config.run.progress:
                tqdm.write(trainer.header(resume))
        ctx.barrier()
        with _Signals().installed() as signals:
            try:
                return trainer.run(signals)
            finally:
                # still under the handlers: under torchrun, the SIGTERM that follows another
                # rank's failure must not kill this process before it reports its own error
                close()
    finally:
        close()
