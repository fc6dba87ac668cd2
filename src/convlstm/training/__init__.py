"""Training: AdamW with warm-up and a cosine, linear or one-cycle schedule, gradient clipping,
bf16 autocast, scheduled sampling, early stopping, a wall-clock budget, checkpoints, resume,
signals, TensorBoard and DistributedDataParallel under ``torchrun``.

:func:`train` is the entry point (``convlstm train`` calls it). The package's modules, in the
order a run meets them:

=================  ==========================================================================
``rundir``         the run folder: ``--resume`` / ``--overwrite`` rules, leftovers, metrics log
``datasets``       the training data of each epoch and the validation data (:func:`build_datasets`)
``loop``           the trainer: the step, the epoch, validation, checkpoints at each epoch's end
``losses``         the training loss ``optim.loss`` (:func:`~convlstm.training.losses.forecast_loss`)
``schedule``       the learning-rate schedule (:func:`lr_factor`) and scheduled sampling
``budget``         the wall-clock budget: the number of steps the time left affords
``state``          the trainer's bookkeeping and the training checkpoints that carry it
``signals``        SIGINT/SIGTERM: save ``last.pt`` and stop (:class:`TrainingInterrupted`)
``precision``      ``run.precision`` (``auto``: bf16 where it pays) and its autocast
``progress``       progress bars (on a terminal only) and one line per epoch
``tensorboard``    the optional TensorBoard log (``run.tensorboard=true``)
=================  ==========================================================================

Run folder written by :func:`train` (only rank 0 writes)::

    config.yaml      the resolved configuration (every field explicit)
    metrics.jsonl    one JSON object per epoch: losses, learning rate, throughput, timings
                     (strict JSON: an undefined value, such as the loss of an epoch whose
                     steps were all skipped, is null)
    last.pt          checkpoint at the end of the latest epoch (or at an interruption)
    best.pt          checkpoint with the lowest validation loss so far; not written when no
                     validation loss is finite (no validation data, data.val_samples=0 with a
                     generated dataset): TrainResult.best_checkpoint is then last.pt, and the
                     final report of ``convlstm train`` scores last.pt
    tensorboard/     TensorBoard event files, with run.tensorboard=true

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

from collections.abc import Callable
from pathlib import Path

import torch

from convlstm import fast
from convlstm.config import Config, ConfigError, validate_config
from convlstm.distributed import init_distributed
from convlstm.training import progress, rundir
from convlstm.training import tensorboard as _tensorboard
from convlstm.training.datasets import build_datasets
from convlstm.training.loop import NonFiniteLossError, Trainer, TrainResult
from convlstm.training.precision import resolve_precision
from convlstm.training.rundir import resume_command
from convlstm.training.schedule import lr_factor
from convlstm.training.signals import Signals, TrainingInterrupted

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


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the configured model, writing the run folder ``out_dir`` (see the package docstring).

    Under ``torchrun`` every process calls this; they train one model with
    DistributedDataParallel and only rank 0 writes files.

    Args:
        config: the configuration (validated here).
        out_dir: the run folder; an existing non-empty one is an error unless ``resume`` (continue
            from its ``last.pt``) or ``overwrite`` (delete it first; only a training run's
            folder is ever deleted).
        resume: continue the run in ``out_dir`` from its ``last.pt``.
        overwrite: replace the run in ``out_dir``.
        on_step: called with the global step after every optimiser step (for tests and hooks).

    Returns:
        What was done (:class:`TrainResult`).

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
    rundir.check_out_dir(out_dir, resume, overwrite)
    if config.run.tensorboard and not _tensorboard.available():
        raise ConfigError(
            "run.tensorboard=true needs the tensorboard package: "
            "pip install 'convlstm[tensorboard]'"
        )
    ctx = init_distributed(config.run.device, config.run.dist_timeout_s)
    trainer = None
    threads = torch.get_num_threads()
    if config.run.threads:
        torch.set_num_threads(config.run.threads)

    def close() -> None:
        if trainer is not None and trainer.board is not None:
            trainer.board.close()
            trainer.board = None
        torch.set_num_threads(threads)
        ctx.close()

    try:
        trainer = Trainer(config, out_dir, ctx, resume, on_step)
        ctx.barrier()
        if ctx.is_main:
            epoch = trainer.state.epoch if resume else 0
            rundir.prepare(out_dir, config, epoch=epoch, replace=overwrite and not resume)
            if config.run.tensorboard:
                purge = trainer.state.step + 1 if resume else None
                trainer.board = _tensorboard.TrainingBoard(
                    out_dir / "tensorboard", trainer.val_set, purge_step=purge
                )
            if config.run.progress:
                progress.say(trainer.header(resume))
        ctx.barrier()
        layout = fast.settings(channels_last=config.run.channels_last)
        with Signals().installed() as signals, layout:
            try:
                return trainer.run(signals)
            finally:
                # still under the handlers: under torchrun, the SIGTERM that follows another
                # rank's failure must not kill this process before it reports its own error
                close()
    finally:
        close()
