"""PyTorch Lightning integration: a ``LightningModule`` for the encoder-forecaster and
``LightningDataModule``s, built on the pieces of ``convlstm train`` (optional extra
``convlstm[lightning]``).

:class:`ForecastModule` trains an :class:`~convlstm.models.EncoderForecaster` from a
:class:`~convlstm.config.Config` exactly as ``convlstm train`` does: the model initialised from
``run.seed``, AdamW with the configured betas and weight decay, the warm-up + cosine / linear /
one-cycle schedule (:func:`convlstm.training.lr_factor`) stepped per optimiser step over the
trainer's planned steps, the configured loss (with the input-frame loss and scheduled sampling),
gradient clipping at ``optim.grad_clip`` and the ``run.nonfinite`` policy. It logs
``train_loss``, ``lr``, ``teacher_forcing`` and the validation MSE per frame ``val_mse_frame``
(summed over the ranks, every sequence counted once), to TensorBoard when it is installed
(Lightning's default logger). With a TensorBoard logger it also adds, as ``convlstm train
run.tensorboard=true`` does (:mod:`convlstm.training.tensorboard`), at each validation the image
``val/forecasts`` (input | truth | forecast of the first validation sequences) and the
configuration as hyperparameters scored by ``hparams/best_val_mse_frame`` and
``hparams/final_val_mse_frame`` (recorded when fitting starts, before Lightning's own record,
which TensorBoard then ignores; the scores when it ends); ``tensorboard=False`` leaves them out. ``Trainer.test`` scores the model and the baselines with
:class:`~convlstm.metrics.ForecastMetrics` like ``convlstm evaluate`` (float32, same data range
and clipping), aggregated over processes; the full results are in
:attr:`ForecastModule.test_results` and, with ``report_dir``, in a report folder.

Radar data: batches of a radar archive carry a validity mask ``(B, T_in + T_out, 1, H, W)``
(1 where there are data) as a third tensor, and, as in ``convlstm train`` and ``convlstm
evaluate``, the training loss, the validation MSE and every test metric ignore the pixels
without data (the test results state their fraction, ``dataset.masked_fraction``). A model
trained on rain data keeps the data's transform (:func:`convlstm.units.data_transform`;
:attr:`ForecastModule.data_transform`) in its checkpoints, so it loads in mm/h
(``load_model(path, physical_units=True)``), and ``Trainer.test`` scores it in mm/h on rain
rates read without the transform (HKO-7 thresholds by default), as ``convlstm evaluate`` does.

Checkpoints: a Lightning checkpoint also holds every entry of a ``convlstm train`` checkpoint
(:mod:`convlstm.checkpoint`: ``format``, ``model_config``, ``model_state``, ``config``,
``optimizer``, ``scheduler``, ``step``, ``best_metric``, ``rng``, ``data_transform`` for rain
data, ...; ``epoch`` and ``global_step`` keep Lightning's meaning), so
:func:`convlstm.checkpoint.load_model` reads it;
:meth:`ForecastModule.from_convlstm_checkpoint` builds the module from a ``convlstm train``
checkpoint (or a Lightning one).

What the ``[run]`` section says about carrying the run out (``device``, ``threads``, ``compile``,
``channels_last``, ``max_minutes``, ``patience``) is the trainer's business here: pass the
matching ``lightning.Trainer`` arguments and callbacks (``accelerator``, ``max_time``,
``EarlyStopping("val_mse_frame", patience=...)``).

>>> import lightning as L
>>> from convlstm.config import Config, apply_overrides
>>> config = apply_overrides(Config(), ["model.hidden_channels=[4]", "data.input_len=2",
...     "data.horizon=2", "data.train_samples=4", "data.val_samples=2", "optim.batch_size=2"])
>>> trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False,
...     enable_progress_bar=False, enable_model_summary=False)
>>> trainer.fit(ForecastModule(config), MovingMNISTDataModule(config))
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import lightning as L
except ImportError as error:  # the optional extra
    raise ImportError(
        "convlstm.lightning needs PyTorch Lightning (lightning>=2.2), which is not installed: "
        "pip install 'convlstm[lightning]'",
        name="lightning",
    ) from error
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

import convlstm
from convlstm.checkpoint import (
    capture_rng,
    checkpoint_transform,
    load_checkpoint,
    load_state_checked,
    make_checkpoint,
)
from convlstm.config import Config, ConfigError, config_from_dict, config_to_dict
from convlstm.data.transforms import RainTransform
from convlstm.lightning.data import (
    ArrayDataModule,
    ForecastDataModule,
    MovingMNISTDataModule,
    RadarDataModule,
    _as_config,
)
from convlstm.models import EncoderForecaster, create_model
from convlstm.training import resolve_precision
from convlstm.training.losses import training_loss, validation_sums
from convlstm.training.schedule import Schedule, teacher_forcing
from convlstm.training.tensorboard import (
    declare_hparams,
    first_sequences,
    flat_hparams,
    log_forecasts,
)
from convlstm.units import PhysicalUnits, data_transform

__all__ = [
    "ArrayDataModule",
    "ForecastDataModule",
    "ForecastModule",
    "MovingMNISTDataModule",
    "RadarDataModule",
    "trainer_options",
]

_PRECISIONS = {"bf16": "bf16-mixed", "fp32": "32-true"}
# the scores of the hyperparameters in TensorBoard, as convlstm train names them
_HPARAM_SCORES = ("hparams/best_val_mse_frame", "hparams/final_val_mse_frame")


def trainer_options(config: Config | Mapping[str, Any]) -> dict[str, Any]:
    """``lightning.Trainer`` arguments that train as ``convlstm train`` would with ``config``:
    ``max_epochs`` (``optim.epochs``), ``max_steps`` (``optim.max_steps``), ``precision``
    (``run.precision`` resolved for the device) and ``reload_dataloaders_every_n_epochs=1``
    (fresh generated sequences every epoch).

    >>> trainer_options(Config())["max_epochs"], trainer_options(Config())["max_steps"]
    (10, -1)
    """
    config = _as_config(config)
    device = config.run.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(config.run.precision, torch.device(device))
    return {
        "max_epochs": config.optim.epochs,
        "max_steps": -1 if config.optim.max_steps is None else config.optim.max_steps,
        "precision": _PRECISIONS[precision],
        "reload_dataloaders_every_n_epochs": 1,
    }


def _precision_name(trainer: L.Trainer) -> str:
    """``convlstm train``'s name of the trainer's precision (``bf16``, ``fp32``, or Lightning's)."""
    names = {value: key for key, value in _PRECISIONS.items()}
    return names.get(str(trainer.precision), str(trainer.precision))


class ForecastModule(L.LightningModule):
    """The encoder-forecaster of ``config`` trained, validated and tested like ``convlstm
    train`` and ``convlstm evaluate`` (see the module docstring).

    Args:
        config: the configuration (``Config``, nested plain values as in ``config.yaml``, or
            ``None`` for the defaults); validated here.
        baselines: baseline names (:func:`convlstm.baselines.list_baselines`) scored beside the
            model in ``Trainer.test``.
        thresholds: event thresholds for the categorical scores in ``Trainer.test``, or
            ``None`` (for a rain model, scored in mm/h:
            :data:`~convlstm.metrics.HKO7_THRESHOLDS`, as ``convlstm evaluate``).
        data_range: SSIM/PSNR data range in ``Trainer.test`` for unbounded models (default as
            ``convlstm evaluate``: the largest target of the first 16 test sequences); sigmoid
            models use 1 and clip predictions to [0, 1].
        report_dir: if set, rank 0 writes the ``convlstm evaluate`` report folder of the test
            (``metrics.json``, ``summary.html``, curves, animations) there, replacing an
            earlier report (any other existing path is an error).
        num_gifs: test sequences animated in the report.
        tensorboard: with a TensorBoard logger (its ``experiment`` a ``SummaryWriter``), log the
            forecast image at each validation and the hyperparameters with the final scores
            (rank 0); scalars go through ``self.log`` either way.

    Shapes: ``forward(inputs (B, T_in, C, H, W), horizon) -> (B, horizon, C, H, W)`` in the
    model's units; batches are ``(inputs, targets (B, horizon, C, H, W))`` or, from a radar
    archive, ``(inputs, targets, mask (B, T_in + horizon, 1, H, W))`` (1 where there are data).

    Attributes:
        data_transform: the :class:`~convlstm.data.transforms.RainTransform` of the rain data
            the model is trained on (:func:`convlstm.units.data_transform` of the training
            data, taken when training starts), or of the checkpoint it was loaded from;
            ``None`` for other data. Saved in checkpoints (``data_transform``, as ``convlstm
            train`` saves it); with it, ``Trainer.test`` scores the model in mm/h.
        test_results: the results of the last ``Trainer.test`` (those of
            :func:`convlstm.evaluation.evaluate`), or ``None``.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | None = None,
        *,
        baselines: Sequence[str] = ("persistence", "zeros"),
        thresholds: Sequence[float] | None = None,
        data_range: float | None = None,
        report_dir: str | os.PathLike[str] | None = None,
        num_gifs: int = 3,
        tensorboard: bool = True,
    ) -> None:
        super().__init__()
        self.config = _as_config(config)
        if isinstance(baselines, str):
            baselines = (baselines,)
        self.baselines = list(baselines)
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.data_range = None if data_range is None else float(data_range)
        self.report_dir = None if report_dir is None else str(report_dir)
        if num_gifs < 0:
            raise ValueError(f"num_gifs must be >= 0, got {num_gifs}")
        self.num_gifs = num_gifs
        self.tensorboard = bool(tensorboard)
        self.save_hyperparameters(
            {
                "config": config_to_dict(self.config),
                "baselines": self.baselines,
                "thresholds": self.thresholds,
                "data_range": self.data_range,
                "report_dir": self.report_dir,
                "num_gifs": num_gifs,
                "tensorboard": self.tensorboard,
            }
        )
        with torch.random.fork_rng(devices=[]):  # the weights of `convlstm train` with run.seed
            torch.manual_seed(self.config.run.seed)
            self.model: EncoderForecaster = create_model(
                self.config.model.name, **self.config.model.options
            )
        self.best_metric: float | None = None
        self.skipped = 0
        self.data_transform: RainTransform | None = None
        self.test_results: dict[str, Any] | None = None
        self._loss_value = math.nan
        self._val_sums = torch.zeros(2, dtype=torch.float64)
        self._last_val: float | None = None
        self._board: tuple[Tensor, Tensor] | None = None  # the fixed validation sequences
        self._epoch_start = time.perf_counter()

    @classmethod
    def from_convlstm_checkpoint(
        cls, path: str | os.PathLike[str], **kwargs: Any
    ) -> ForecastModule:
        """The module with the weights, configuration and rain data transform
        (:attr:`data_transform`) of a checkpoint written by ``convlstm train`` (or by this
        module); ``kwargs`` go to the constructor. The optimiser state is not carried over:
        ``Trainer.fit`` starts a new schedule.

        Raises:
            convlstm.checkpoint.CheckpointError: unreadable checkpoint, weights that do not fit
                its model, or an invalid ``data_transform``.
        """
        checkpoint = load_checkpoint(path)
        config = config_from_dict(checkpoint["config"] or {})
        config.model.name = checkpoint["model_name"]
        config.model.options = dict(checkpoint["model_config"])
        module = cls(config, **kwargs)
        load_state_checked(module.model, checkpoint["model_state"], f"checkpoint {path}")
        module.data_transform = checkpoint_transform(checkpoint, f"checkpoint {path}")
        return module

    def forward(self, inputs: Tensor, horizon: int | None = None) -> Tensor:
        """Forecast ``horizon`` frames (default ``data.horizon``) after ``inputs``."""
        return self.model(inputs, self.config.data.horizon if horizon is None else horizon)

    # -- training

    def configure_optimizers(self) -> Any:
        """AdamW and the per-step schedule over the trainer's planned optimiser steps."""
        optim = self.config.optim
        optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=optim.lr,
            betas=(optim.betas[0], optim.betas[1]),
            weight_decay=optim.weight_decay,
        )
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError(
                "the trainer has no finite length; pass max_epochs or max_steps "
                "(lightning.Trainer(**trainer_options(config)))"
            )
        schedule = Schedule(optim.schedule, optim.warmup_steps, int(total), optim.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_train_start(self) -> None:
        """Take the data transform of the training data (:attr:`data_transform`; rain data
        only), as ``convlstm train`` does, to save it in the checkpoints."""
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if dataset is not None:
            self.data_transform = data_transform(dataset)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """The loss of ``batch`` (``(inputs, targets)``, or with a radar archive's ``mask``,
        whose pixels without data it then ignores; see the class docstring)."""
        inputs, targets, *mask = batch
        config = self.config
        teacher = teacher_forcing(config, self.global_step)
        weight = config.optim.input_loss_weight
        pred = self.model(
            inputs,
            config.data.horizon,
            targets=targets,
            teacher_forcing=teacher,
            predict_inputs=bool(weight),
        )
        loss = training_loss(
            config.optim, pred, inputs, targets, *mask, transform=self.data_transform
        )
        self._loss_value = float(loss.detach())
        size = inputs.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True, batch_size=size)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("lr", lr, on_step=True, on_epoch=False, batch_size=size)
        self.log("teacher_forcing", teacher, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip at ``optim.grad_clip`` (unless the trainer sets ``gradient_clip_val``) and apply
        ``run.nonfinite`` to a NaN/inf loss or gradient, agreed over all ranks: ``stop`` raises
        :class:`~convlstm.training.NonFiniteLossError`; ``skip`` drops the gradients (the
        schedule still advances, as in ``convlstm train``)."""
        from convlstm.training import NonFiniteLossError

        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if gradient_clip_val is not None and str(gradient_clip_algorithm) == "value":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            clip = math.inf
        else:
            clip = (
                gradient_clip_val if gradient_clip_val is not None else self.config.optim.grad_clip
            )
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip or math.inf)
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # float16: the gradient scaler skips non-finite steps itself
        bad = not (math.isfinite(self._loss_value) and bool(torch.isfinite(norm)))
        flag = torch.tensor(float(bad), device=self.device)
        if float(self.trainer.strategy.reduce(flag, reduce_op="sum")) == 0:
            return
        run = self.config.run
        where = f"at step {self.global_step} (loss {self._loss_value})"
        if run.nonfinite == "stop":
            raise NonFiniteLossError(f"non-finite loss or gradient {where}; stopped")
        self.skipped += 1
        optimizer.zero_grad(set_to_none=True)
        if self.skipped > run.max_skips:
            raise NonFiniteLossError(
                f"non-finite loss or gradient {where}: more than run.max_skips={run.max_skips} "
                "skipped steps; stopped"
            )

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        steps = self.trainer.num_training_batches
        if seconds > 0 and math.isfinite(steps):
            batch = self.config.optim.batch_size
            self.log("seq_per_s", steps * batch / seconds, on_epoch=True, rank_zero_only=True)

    # -- validation: convlstm train's MSE per frame

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Add the batch's squared error (target pixels without data count none) and its
        frames to the validation MSE per frame."""
        inputs, targets, *mask = batch
        pred = self.model(inputs, targets.shape[1])
        self._val_sums += validation_sums(pred, targets, *mask)

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        value = float(total[0] / total[1]) if float(total[1]) else math.nan
        if self.trainer.sanity_checking:
            return
        if math.isfinite(value) and (self.best_metric is None or value < self.best_metric):
            self.best_metric = value
        self._last_val = value
        # every rank holds the same value: the mean over ranks just keeps Lightning content
        self.log("val_mse_frame", value, sync_dist=True)
        writer = self._writer()
        sequences = None if writer is None else self._board_sequences()
        if writer is not None and sequences is not None:
            inputs, truth = sequences
            with torch.no_grad():
                forecast = self.model(inputs.to(self.device), truth.shape[1])
            log_forecasts(writer, "val/forecasts", inputs, truth, forecast, self.global_step)

    # -- TensorBoard: the forecast image and the hyperparameters, as convlstm train logs them

    def _writer(self) -> Any | None:
        """The ``SummaryWriter`` of the trainer's first TensorBoard logger on rank 0, or
        ``None`` (other ranks, ``tensorboard=False``, no such logger)."""
        if not self.tensorboard or not self.trainer.is_global_zero:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # no tensorboard package: Lightning logs elsewhere
            return None
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if isinstance(experiment, SummaryWriter):
                return experiment
        return None

    def _board_sequences(self) -> tuple[Tensor, Tensor] | None:
        """Inputs ``(N, T_in, C, H, W)`` and truth ``(N, T_out, C, H, W)`` of the first
        validation sequences (:func:`~convlstm.training.tensorboard.first_sequences`), read
        once (the same sequences at every validation); ``None`` without validation data."""
        if self._board is None:
            loaders = self.trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, list | tuple) and loaders else loaders
            dataset = getattr(loader, "dataset", None)
            self._board = None if dataset is None else first_sequences(dataset)
        return self._board

    def setup(self, stage: str) -> None:
        """Before fitting: record the configuration as hyperparameters scored by the best and
        the final validation MSE per frame (TensorBoard, rank 0), ahead of Lightning's record."""
        writer = self._writer() if stage == "fit" else None
        if writer is not None:
            declare_hparams(writer, flat_hparams(config_to_dict(self.config)), _HPARAM_SCORES)

    def on_fit_end(self) -> None:
        """The scores of the hyperparameters: the best and the final validation MSE per frame,
        where defined, at the last step (TensorBoard, rank 0)."""
        writer = self._writer()
        if writer is None:
            return
        best, final = _HPARAM_SCORES
        for tag, value in ((best, self.best_metric), (final, self._last_val)):
            if value is not None and math.isfinite(value):
                writer.add_scalar(tag, value, self.global_step)
        writer.flush()

    # -- test: convlstm evaluate's metrics and baselines

    def _test_dataset(self) -> Dataset[Any]:
        loaders = self.trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"ForecastModule.test needs a torch DataLoader, got {type(loader).__name__}"
            )
        return loader.dataset

    def on_test_epoch_start(self) -> None:
        from convlstm.baselines import get_baseline
        from convlstm.evaluation import value_settings
        from convlstm.metrics import HKO7_THRESHOLDS, ForecastMetrics

        if "model" in self.baselines:
            raise ValueError("a baseline is named 'model' like the model; rename it")
        report = None if self.report_dir is None else Path(self.report_dir)
        if report is not None and report.exists() and not (report / "metrics.json").is_file():
            raise FileExistsError(
                f"report_dir {report} exists and is not a report folder (no metrics.json); "
                "refusing to replace it"
            )
        dataset = self._test_dataset()
        transform = self.data_transform
        model: torch.nn.Module = self.model
        thresholds = self.thresholds
        if transform is not None:  # a rain model: scored in mm/h, as convlstm evaluate does
            given = data_transform(dataset)
            if given is not None and given != RainTransform("none"):
                raise ValueError(
                    f"the test data of a rain model must be rain rates in mm/h (the model works "
                    f"through {transform!r} and is scored in mm/h; ForecastDataModule reads "
                    f"them so), got data transformed with {given!r}"
                )
            model = PhysicalUnits(self.model, transform)
            thresholds = list(HKO7_THRESHOLDS) if thresholds is None else thresholds
        self._forecasters = {"model": model} | {b: get_baseline(b) for b in self.baselines}
        data_range, clip = value_settings(
            self.model, dataset, self.data_range, rain=transform is not None
        )
        self._data_range, self._clip, self._thresholds = data_range, clip, thresholds
        self._metrics = {}
        for name in self._forecasters:
            metric = ForecastMetrics(data_range=data_range, clip=clip, thresholds=thresholds)
            if isinstance(metric, torch.nn.Module):  # a torchmetrics.Metric: its state's device
                metric = metric.to(self.device)
            self._metrics[name] = metric
        self._count = torch.zeros((), dtype=torch.float64, device=self.device)
        self._masked = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._shapes: tuple[int, list[int], int] | None = None

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Score the model and the baselines on ``batch`` (``(inputs, targets)`` or ``(inputs,
        targets, mask)``: target pixels without data are left out of every metric)."""
        from convlstm.evaluation import score_batch

        inputs, targets, *mask = (x.float() for x in batch)
        horizon = targets.shape[1]
        self._shapes = (inputs.shape[1], list(inputs.shape[2:]), horizon)
        self._count += inputs.shape[0]
        with torch.autocast(self.device.type, enabled=False):  # scored in float32, as evaluate
            counts = score_batch(self._forecasters, self._metrics, inputs, targets, *mask)
        self._masked += counts.to(self.device)

    def _computed(self, metric: Any) -> dict[str, Any]:
        """The metric's results over all ranks (a torchmetrics ``Metric`` syncs in compute)."""
        import torchmetrics

        if not isinstance(metric, torchmetrics.Metric):
            metric.reduce_()
        return metric.compute()

    def on_test_epoch_end(self) -> None:
        from convlstm.evaluation import (
            CONVENTIONS,
            add_units,
            collect_samples,
            masked_entry,
            sample_indices,
        )
        from convlstm.report import command_line, json_safe, write_report

        dataset = self._test_dataset()
        count = int(self.trainer.strategy.reduce(self._count, reduce_op="sum"))
        masked = self.trainer.strategy.reduce(self._masked, reduce_op="sum")
        forecasters = {name: self._computed(m) for name, m in self._metrics.items()}
        input_len, frame_shape, horizon = self._shapes or (0, [], 0)
        clip = self._clip
        results = {
            "convlstm_version": convlstm.__version__,
            "dataset": {
                "name": getattr(dataset, "name", type(dataset).__name__),
                "num_sequences": count,
                "input_len": input_len,
                "horizon": horizon,
                "frame_shape": frame_shape,
                **masked_entry(masked.cpu()),
            },
            "settings": {
                "data_range": float(self._data_range),
                "clip": None if clip is None else [float(c) for c in clip],
                "thresholds": self._thresholds,
            },
            "conventions": CONVENTIONS,
            "forecasters": forecasters,
            "provenance": {
                "command": command_line(),
                "lightning version": L.__version__,
                "torch version": torch.__version__,
                "processes": self.trainer.world_size,
            },
            "config": config_to_dict(self.config),
        }
        add_units(results, dataset, self.data_transform)
        self.test_results = json_safe(results)
        for name, scores in self.test_results["forecasters"].items():
            for metric, value in scores.items():
                if value["overall"] is not None:
                    self.log(f"test/{name}/{metric}", value["overall"], sync_dist=True)
        if self.report_dir is not None and self.trainer.is_global_zero:
            indices = sample_indices(min(count, len(dataset)), self.num_gifs)  # type: ignore[arg-type]
            model = self._forecasters["model"]  # in mm/h for a rain model
            with torch.autocast(self.device.type, enabled=False):
                samples = collect_samples(model, dataset, indices, horizon=horizon)
            write_report(self.test_results, self.report_dir, samples=samples, overwrite=True)

    # -- checkpoints: also convlstm's layout

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the entries of a ``convlstm train`` checkpoint (see the module docstring)."""
        optimizers = checkpoint.get("optimizer_states") or [None]
        schedulers = checkpoint.get("lr_schedulers") or [None]
        total = self.trainer.estimated_stepping_batches
        entries = make_checkpoint(
            self.model,
            self.config.model.name,
            config_to_dict(self.config),
            optimizer=optimizers[0],
            scheduler=schedulers[0],
            grad_scaler=None,
            epoch_step=0,
            step=self.global_step,
            best_metric=self.best_metric,
            rng=capture_rng(),
            trainer={
                "epoch": self.current_epoch,
                "step": self.global_step,
                "total_steps": int(total) if math.isfinite(total) else None,
                "best_metric": self.best_metric,
                "skipped": self.skipped,
            },
            precision=_precision_name(self.trainer),
        )
        if self.data_transform is not None:  # rain data: the model loads in mm/h
            entries["data_transform"] = self.data_transform.to_dict()
        # the weights once: model_state shares the tensors of Lightning's state_dict
        state = checkpoint.get("state_dict", {})
        shared = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        if shared.keys() == entries["model_state"].keys():
            entries["model_state"] = shared
        for key in ("epoch", "global_step"):  # Lightning's meaning, used when it resumes
            entries.pop(key, None)
        checkpoint.update(entries)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_metric = checkpoint.get("best_metric", self.best_metric)
        self.skipped = int((checkpoint.get("trainer") or {}).get("skipped", 0))
        self.data_transform = checkpoint_transform(checkpoint, "the Lightning checkpoint")
