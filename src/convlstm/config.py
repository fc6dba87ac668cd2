"""Training configuration: a typed, validated dataclass loaded from TOML, YAML or JSON.

A configuration has four sections::

    [model]   name of a registered model (convlstm.models.list_models()) and any of its
              constructor arguments (hidden_channels, kernel_size, patch_size, ...)
    [data]    dataset name (convlstm.data.list_datasets()), frames in and out, sizes
    [optim]   optimiser, schedule, loss, scheduled sampling
    [run]     seed, device, precision, time budget, early stopping, logging

Every key is typed by its dataclass field (model keys by the model's constructor); unknown keys
and wrong types raise :class:`ConfigError` naming the field. Command-line overrides are
``section.key=value`` strings, parsed by the field's type (``optim.lr=3e-4``,
``model.hidden_channels=[32,32]``, ``run.max_minutes=none``).

>>> config = apply_overrides(Config(), ["optim.lr=3e-4", "model.hidden_channels=[32, 32]"])
>>> config.optim.lr, config.model.options["hidden_channels"]
(0.0003, [32, 32])
>>> apply_overrides(Config(), ["optim.learning_rate=1"])
Traceback (most recent call last):
...
convlstm.config.ConfigError: unknown key optim.learning_rate; valid keys in [optim]: lr, ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from convlstm._atomic import atomic_write_text
from convlstm.models import MODEL_PARAMETERS, EncoderForecaster, list_models, model_config

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "validate_config",
]

LOSSES = ("mse", "l1", "mse+l1", "quantile", "bce")
SCHEDULES = ("cosine", "linear", "onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
NONFINITE = ("stop", "skip")
_MAX_INT = 2**31 - 1  # seeds and sample counts (numpy's legacy seeding takes 32 bits)


class ConfigError(ValueError):
    """An invalid configuration: the message names the offending field."""


@dataclass
class ModelConfig:
    """``name`` of a registered model; ``options`` are its constructor arguments that differ from
    the registered defaults (in files they sit beside ``name``: ``[model] hidden_channels = ...``).
    :func:`validate_config` fills in every argument, so a saved configuration is complete."""

    name: str = "moving_mnist"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """The dataset (``convlstm.data.get_dataset(name, **options)``) and its splits.

    ``train_options`` / ``val_options`` are added to ``options`` for each split (for
    ``moving_mnist`` the defaults are ``digits="train"`` and ``digits="val"``). Generated datasets
    (those taking a ``seed``) draw ``train_samples`` fresh sequences every epoch, from a seed that
    is a function of ``run.seed`` and the epoch; the validation set uses ``val_seed``. Datasets
    without a seed are reshuffled every epoch, and ``train_samples``/``val_samples`` cap their
    size (0: all).
    """

    name: str = "moving_mnist"
    input_len: int = 10
    horizon: int = 10
    train_samples: int = 4096
    val_samples: int = 256
    val_seed: int = 1
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    val_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW (``betas``: its moment decays), a learning-rate schedule over
    ``epochs * steps_per_epoch`` steps (``max_steps`` caps it), gradient clipping, the loss and
    scheduled sampling.

    ``schedule``: ``cosine`` (linear warm-up over ``warmup_steps``, then cosine decay to
    ``lr * min_lr_ratio``), ``linear`` (the same warm-up, then a straight line down to it),
    ``onecycle`` (:class:`torch.optim.lr_scheduler.OneCycleLR`'s shape)
    or ``constant`` (after warm-up). ``loss``: ``mse``, ``l1``, ``mse+l1``, ``quantile`` (the
    pinball loss at ``quantile``, in (0, 1); see :func:`convlstm.training.losses.forecast_loss`)
    or ``bce`` (pixels in [0, 1]).
    Scheduled sampling feeds the forecaster the ground truth with a probability that decays
    linearly from ``teacher_forcing`` to 0 over ``teacher_forcing_steps`` steps (0: off).
    ``input_loss_weight`` > 0 adds that times the loss of the one-step-ahead predictions of the
    input frames (``predict_inputs=True``; needs ``model.readout="top"``).
    ``rain_weights`` (rain data only): ``[[threshold_mm_h, weight], ...]`` with rising
    thresholds weights each pixel of the loss by the weight of the highest threshold its true
    rain rate reaches (1 below the first), as the balanced losses of Shi et al. (2017, HKO-7:
    ``[[2, 2], [5, 5], [10, 10], [30, 30]]``) do, so that heavy rain, rare but what forecasts
    are judged on, is not averaged away; ``[]``: every pixel weighs 1.
    ``ssim_weight`` > 0 adds that times ``1 - SSIM`` of the forecast frames (SSIM as the
    metrics compute it, data range 1; needs ``model.output_activation="sigmoid"``): a
    structural term beside the pixel loss that penalises grey haze, as in Zhao et al. (2017,
    "Loss functions for image restoration with neural networks").
    """

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    batch_size: int = 16
    epochs: int = 10
    max_steps: int | None = None
    schedule: str = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    loss: str = "mse"
    quantile: float = 0.5
    teacher_forcing: float = 0.0
    teacher_forcing_steps: int = 0
    input_loss_weight: float = 0.0
    rain_weights: list[list[float]] = field(default_factory=list)
    ssim_weight: float = 0.0


@dataclass
class RunConfig:
    """How the run is carried out.

    ``device``: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``threads``: CPU threads for torch (0: torch's default, one per core). On a shared machine
    1 can be much faster: busy cores make OpenMP threads wait for each other at every operation.
    ``precision``: ``auto`` (bf16 autocast on GPUs that support it and on CPUs with AMX-BF16,
    where it measured faster at the same accuracy; otherwise fp32), ``fp32`` or ``bf16``.
    ``compile``: ``torch.compile`` the model. The first steps compile it (about a minute on a
    small CPU, seconds from inductor's on-disk cache), and each new shape compiles again (the
    validation batches); the compiled step is then somewhat faster. Worth it for long runs, not
    for the default 14-minute budget (figures in ``benchmarks/README.md``).
    ``channels_last``: the memory format of the 2-D layers during training, as
    :func:`convlstm.fast.settings` (``channels_last=``) takes it: ``none`` (default) lets the
    per-shape plan choose, ``true`` forces channels-last (the weights are stored so too),
    ``false`` forces the standard layout.
    ``max_minutes`` bounds the training time: the step budget is re-planned from the measured
    speed so that the learning-rate schedule, the validations and the final report of
    ``eval_samples`` sequences (timed on one batch after the first validation) end in time;
    training stops at ``max_minutes`` in any case. ``patience``: stop after that many epochs
    without a better validation loss (0: never). ``nonfinite``: on a NaN/inf loss or gradient,
    ``stop`` (default) or ``skip`` the step, at most ``max_skips`` times. ``dist_timeout_s``
    bounds every collective under ``torchrun``. ``progress``: print a line per epoch (and,
    on a terminal, progress bars). ``tensorboard``: write TensorBoard logs to ``tensorboard/`` in
    the run folder (:mod:`convlstm.training.tensorboard`; needs the ``tensorboard`` package).
    """

    seed: int = 0
    device: str = "auto"
    threads: int = 0
    precision: str = "auto"
    compile: bool = False
    channels_last: bool | None = None
    max_minutes: float | None = None
    patience: int = 0
    nonfinite: str = "stop"
    max_skips: int = 10
    progress: bool = True
    tensorboard: bool = False
    dist_timeout_s: float = 600.0
    eval_samples: int = 1000
    eval_batch_size: int = 32


@dataclass
class Config:
    """A full training configuration; see the module docstring."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}
_DICT_FIELDS = ("options", "train_options", "val_options")


# ----------------------------------------------------------------------------- types


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
        return hint.__name__
    return str(hint).replace("NoneType", "None").replace("typing.", "")


def _takes_float(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


def _check_type(value: Any, hint: Any, name: str) -> Any:
    """``value`` if it has type ``hint`` (ints are accepted, as floats, where floats are), else
    raise :class:`ConfigError` naming ``name``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if isinstance(value, float) and not math.isfinite(value) and _takes_float(hint):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if origin in (types.UnionType, typing.Union):
        for member in typing.get_args(hint):
            try:
                return _check_type(value, member, name)
            except ConfigError:
                continue
    elif hint is type(None):
        if value is None:
            return None
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (bool, str):
        if isinstance(value, hint):
            return value
    elif origin is list:
        if isinstance(value, list | tuple):
            (item,) = typing.get_args(hint)
            return [_check_type(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        items = typing.get_args(hint)
        if isinstance(value, list | tuple) and len(value) == len(items):
            return tuple(
                _check_type(v, t, f"{name}[{i}]")
                for i, (v, t) in enumerate(zip(value, items, strict=True))
            )
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    raise ConfigError(f"{name} must be {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _parse_text(text: str, hint: Any, name: str) -> Any:
    """An override's text as a value of type ``hint``: YAML syntax (``[32, 32]``, ``true``,
    ``none``), numbers in any Python float syntax, and plain strings where strings are allowed."""
    stripped = text.strip()
    try:
        value: Any = (
            None if stripped.lower() in ("none", "null", "~") else yaml.safe_load(stripped or "''")
        )
    except yaml.YAMLError:  # not YAML: the plain text
        value = text
    try:
        return _check_type(value, hint, name)
    except ConfigError:
        pass
    try:
        number = float(stripped)
    except ValueError:
        number = None
    if isinstance(value, float) and not math.isfinite(value):
        number = value  # YAML's .inf / .nan
    if number is not None:
        if not math.isfinite(number) and _takes_float(hint):
            raise ConfigError(f"{name} must be a finite number, got {stripped!r}")
        try:
            return _check_type(number, hint, name)
        except ConfigError:
            pass
    return _check_type(text, hint, name)


def _fields(section: str) -> dict[str, Any]:
    cls = _SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _key_hint(section: str, key: str) -> Any:
    """The type of ``section.key``; model keys other than ``name`` are the model's arguments."""
    fields = _fields(section)
    if section == "model" and key != "name":
        if key not in MODEL_PARAMETERS:
            valid = ", ".join(["name", *MODEL_PARAMETERS])
            raise ConfigError(f"unknown key model.{key}; valid keys in [model]: {valid}")
        return MODEL_PARAMETERS[key]
    if key not in fields:
        raise ConfigError(
            f"unknown key {section}.{key}; valid keys in [{section}]: {', '.join(fields)}"
        )
    return fields[key]


# ----------------------------------------------------------------------------- dict <-> dataclass


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested plain values (as read from a file), type-checked.

    >>> config_from_dict({"optim": {"lr": 1}, "model": {"hidden_channels": [8]}}).optim.lr
    1.0
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"a configuration must be a mapping of sections, got {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)}; valid sections: {', '.join(_SECTIONS)}"
        )
    config = Config()
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {type(values).__name__}")
        for key, value in values.items():
            _set(
                config,
                section,
                str(key),
                _check_type(value, _key_hint(section, key), f"{section}.{key}"),
            )
    return config


def _set(config: Config, section: str, key: str, value: Any) -> None:
    target = getattr(config, section)
    if section == "model" and key != "name":
        target.options[key] = value
    else:
        setattr(target, key, value)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The configuration as nested plain values; model options sit beside ``name``.

    >>> config_to_dict(Config())["optim"]["lr"]
    0.001
    """
    out: dict[str, Any] = {}
    for section in _SECTIONS:
        values = dataclasses.asdict(getattr(config, section))
        if section == "model":
            values = {"name": values["name"], **values["options"]}
        out[section] = values
    return out


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """A copy of ``config`` with ``section.key=value`` overrides applied (see the module doc).

    ``data.options.KEY=value`` (and ``train_options``/``val_options``) sets one dataset argument.
    """
    config = config_from_dict(config_to_dict(config))
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(f"override {item!r} must look like section.key=value")
        section = parts[0]
        if section not in _SECTIONS:
            raise ConfigError(
                f"unknown section {section!r} in override {item!r}; valid sections: "
                f"{', '.join(_SECTIONS)}"
            )
        if section == "data" and len(parts) == 3 and parts[1] in _DICT_FIELDS:
            getattr(config.data, parts[1])[parts[2]] = _parse_text(text, Any, key)
            continue
        if len(parts) != 2:
            raise ConfigError(f"unknown key {key}; keys are section.key")
        _set(config, section, parts[1], _parse_text(text, _key_hint(section, parts[1]), key))
    return config


# ----------------------------------------------------------------------------- files


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Config:
    """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` configuration, then apply ``overrides``.

    Raises:
        ConfigError: unreadable file, bad syntax, unknown keys or wrong types.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"config file {path} is not valid {suffix[1:].upper()}: {first}"
        ) from None
    config = config_from_dict(data)
    return apply_overrides(config, overrides) if overrides else config


def save_config(config: Config, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``config`` atomically as YAML (``.yaml``/``.yml``) or JSON (``.json``).

    >>> import tempfile, pathlib
    >>> path = save_config(Config(), pathlib.Path(tempfile.mkdtemp()) / "config.yaml")
    >>> load_config(path) == Config()
    True
    """
    path = Path(path)
    data = config_to_dict(config)
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif path.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    else:
        raise ConfigError(f"save_config writes .yaml, .yml or .json files, got {path.name}")
    return atomic_write_text(path, text, overwrite=overwrite)


# ----------------------------------------------------------------------------- validation


def _check_rain_weights(levels: list[list[float]]) -> None:
    _require(
        all(len(level) == 2 for level in levels),
        "optim.rain_weights",
        "must be a list of [threshold_mm_h, weight] pairs",
        levels,
    )
    thresholds = [level[0] for level in levels]
    _require(
        all(t >= 0 for t in thresholds) and thresholds == sorted(set(thresholds)),
        "optim.rain_weights",
        "thresholds (mm/h) must be >= 0 and strictly rising",
        levels,
    )
    _require(
        all(level[1] > 0 for level in levels), "optim.rain_weights", "weights must be > 0", levels
    )


def _require(condition: bool, name: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{name} {message}, got {value!r}")


def validate_config(config: Config) -> Config:
    """Check every field's value and fill the model's options from its registered defaults.

    Returns a new, complete :class:`Config`. The dataset's frames are checked against the model
    when the data are built (:func:`convlstm.training.build_datasets`).

    >>> validate_config(Config()).model.options["patch_size"]
    8
    >>> validate_config(apply_overrides(Config(), ["data.horizon=0"]))
    Traceback (most recent call last):
    ...
    convlstm.config.ConfigError: data.horizon must be >= 1, got 0
    """
    from convlstm.data import list_datasets
    from convlstm.registry import normalise_name

    config = config_from_dict(config_to_dict(config))
    if config.model.name not in list_models():
        raise ConfigError(
            f"model.name: unknown model {config.model.name!r}; valid models: "
            f"{', '.join(list_models())}"
        )
    options = model_config(config.model.name, **config.model.options)
    try:
        with torch.device("meta"):  # the constructor's checks, without allocating the weights
            EncoderForecaster(**options)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model.{error}") from None
    config.model.options = options
    data, optim, run = config.data, config.optim, config.run
    datasets = list_datasets()
    if normalise_name(data.name) not in datasets:
        raise ConfigError(
            f"data.name: unknown dataset {data.name!r}; valid datasets: {', '.join(datasets)}"
        )
    for name in ("input_len", "horizon"):
        _require(getattr(data, name) >= 1, f"data.{name}", "must be >= 1", getattr(data, name))
    for name in ("train_samples", "val_samples", "val_seed", "num_workers"):
        value = getattr(data, name)
        _require(0 <= value <= _MAX_INT, f"data.{name}", f"must be in [0, {_MAX_INT}]", value)
    _require(optim.lr > 0, "optim.lr", "must be > 0", optim.lr)
    _require(
        len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas),
        "optim.betas",
        "must be two numbers in [0, 1) (AdamW's moment decays)",
        optim.betas,
    )
    _require(optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0", optim.weight_decay)
    _require(optim.batch_size >= 1, "optim.batch_size", "must be >= 1", optim.batch_size)
    _require(optim.epochs >= 1, "optim.epochs", "must be >= 1", optim.epochs)
    _require(
        optim.max_steps is None or optim.max_steps >= 1,
        "optim.max_steps",
        "must be >= 1 or none",
        optim.max_steps,
    )
    _require(
        optim.schedule in SCHEDULES,
        "optim.schedule",
        f"must be one of {list(SCHEDULES)}",
        optim.schedule,
    )
    _require(optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", optim.warmup_steps)
    _require(
        0 <= optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]", optim.min_lr_ratio
    )
    _require(optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0: off)", optim.grad_clip)
    _require(optim.loss in LOSSES, "optim.loss", f"must be one of {list(LOSSES)}", optim.loss)
    _require(0 < optim.quantile < 1, "optim.quantile", "must be in (0, 1)", optim.quantile)
    _require(
        optim.quantile == 0.5 or optim.loss == "quantile",
        "optim.quantile",
        "applies to optim.loss='quantile' only",
        optim.quantile,
    )
    _check_rain_weights(optim.rain_weights)
    if optim.loss == "bce":
        _require(
            options["output_activation"] == "sigmoid",
            "optim.loss",
            "'bce' needs model.output_activation='sigmoid' (predictions in [0, 1]); "
            "model.output_activation",
            options["output_activation"],
        )
    _require(
        0 <= optim.teacher_forcing <= 1,
        "optim.teacher_forcing",
        "must be in [0, 1]",
        optim.teacher_forcing,
    )
    _require(
        optim.teacher_forcing_steps >= 0,
        "optim.teacher_forcing_steps",
        "must be >= 0",
        optim.teacher_forcing_steps,
    )
    _require(
        optim.input_loss_weight >= 0,
        "optim.input_loss_weight",
        "must be >= 0",
        optim.input_loss_weight,
    )
    if optim.input_loss_weight:
        _require(
            options["readout"] == "top",
            "optim.input_loss_weight",
            "> 0 needs model.readout='top'",
            optim.input_loss_weight,
        )
    _require(optim.ssim_weight >= 0, "optim.ssim_weight", "must be >= 0", optim.ssim_weight)
    if optim.ssim_weight:
        _require(
            options["output_activation"] == "sigmoid",
            "optim.ssim_weight",
            "> 0 needs frames in [0, 1] (model.output_activation='sigmoid')",
            optim.ssim_weight,
        )
    _require(0 <= run.seed <= _MAX_INT, "run.seed", f"must be in [0, {_MAX_INT}]", run.seed)
    _require(run.threads >= 0, "run.threads", "must be >= 0 (0: torch's default)", run.threads)
    device = run.device
    _require(
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()),
        "run.device",
        "must be auto, cpu, cuda or cuda:N",
        device,
    )
    _require(
        run.precision in PRECISIONS,
        "run.precision",
        f"must be one of {list(PRECISIONS)}",
        run.precision,
    )
    _require(
        run.max_minutes is None or run.max_minutes > 0,
        "run.max_minutes",
        "must be > 0 or none",
        run.max_minutes,
    )
    _require(run.patience >= 0, "run.patience", "must be >= 0 (0: off)", run.patience)
    _require(
        run.nonfinite in NONFINITE,
        "run.nonfinite",
        f"must be one of {list(NONFINITE)}",
        run.nonfinite,
    )
    _require(run.max_skips >= 0, "run.max_skips", "must be >= 0", run.max_skips)
    _require(run.dist_timeout_s > 0, "run.dist_timeout_s", "must be > 0", run.dist_timeout_s)
    _require(
        0 <= run.eval_samples <= _MAX_INT,
        "run.eval_samples",
        f"must be in [0, {_MAX_INT}] (0: no report)",
        run.eval_samples,
    )
    _require(run.eval_batch_size >= 1, "run.eval_batch_size", "must be >= 1", run.eval_batch_size)
    return config
