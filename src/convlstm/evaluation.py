"""Evaluation of a forecaster against baselines over a dataset (the library behind
``convlstm evaluate``, whose command line is :mod:`convlstm.cli.evaluate`).

:func:`evaluate` runs a model and baseline forecasters over a dataset of ``(inputs, targets)``
pairs (``(T_in, C, H, W)``, ``(T_out, C, H, W)``) in a fixed order, feeding one
:class:`~convlstm.metrics.ForecastMetrics` per forecaster, and returns plain JSON-ready results.
:func:`~convlstm.report.write_report` turns them into a report folder;
:func:`evaluate_checkpoint` does both for a saved checkpoint.

Metric conventions (also written into every result): MSE/MAE per frame are summed over the
pixels (and channels) of a frame, then averaged over frames and sequences; per pixel is the
plain mean. SSIM and PSNR use ``data_range`` (1 for [0, 1] data) on predictions clipped to
``clip`` (``[0, 1]`` by default). Categorical scores (CSI, POD, FAR, HSS, bias) count an event
where ``value >= threshold``, on unclipped predictions, pooled over all lead times for the
overall value. Undefined scores (zero denominators) and infinite PSNR (a perfect frame) are
``None``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

import convlstm
from convlstm._atomic import atomic_dir, check_parent
from convlstm._checks import check_positive
from convlstm._deprecated import moved
from convlstm._outputs import REPORT_MARKER, check_output
from convlstm.data import ArrayDataset, MovingMNISTFile, get_dataset, list_datasets
from convlstm.devices import check_device, default_device, inference, model_device
from convlstm.metrics import DEFAULT_CLIP
from convlstm.metrics.functional import HKO7_THRESHOLDS
from convlstm.models import EncoderForecaster
from convlstm.registry import normalise_name
from convlstm.units import RAIN_UNITS, PhysicalUnits, untransformed

if TYPE_CHECKING:  # the report module draws figures (matplotlib): imported where it is used
    from convlstm.data.transforms import RainTransform
    from convlstm.metrics import ForecastMetrics
    from convlstm.report import Sample

__all__ = [
    "CONVENTIONS",
    "DATA_LAYOUTS",
    "GENERATED_DATASETS",
    "add_units",
    "check_fit",
    "collect_samples",
    "evaluate",
    "evaluate_checkpoint",
    "masked_entry",
    "resolve_dataset",
    "sample_indices",
    "score_batch",
    "value_settings",
    "value_units",
]

Forecaster = Callable[[Tensor, int], Tensor]

CONVENTIONS: dict[str, str] = {
    "mse_frame, mae_frame": "squared/absolute error summed over the pixels and channels of a "
    "frame, averaged over frames and sequences (Moving MNIST literature convention)",
    "mse_pixel, mae_pixel": "plain mean over pixels, channels, frames and sequences",
    "ssim, psnr": "per frame (torchmetrics; SSIM 11x11 Gaussian window, sigma 1.5), averaged "
    "over frames, with data_range from settings on predictions clipped to settings.clip",
    "categorical": "csi/pod/far/hss/bias@threshold: event where value >= threshold, on "
    "unclipped predictions; overall = scores of the contingency table pooled over lead times",
    "overall": "mean over all frames of all lead times; per_lead_time[k] is lead time k + 1",
    "null": "undefined (zero denominator) or infinite (PSNR of a perfect frame)",
}


def _resolve_baselines(
    baselines: Sequence[str] | Mapping[str, Forecaster],
) -> dict[str, Forecaster]:
    """Names (looked up with :func:`convlstm.baselines.get_baseline`) or a name -> callable map."""
    if isinstance(baselines, Mapping):
        return dict(baselines)
    if isinstance(baselines, str):
        baselines = (baselines,)
    from convlstm.baselines import get_baseline

    return {name: get_baseline(name) for name in baselines}


def _first_pair(dataset: Dataset) -> tuple[Tensor, Tensor]:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the dataset is empty")
    inputs, targets = dataset[0][:2]  # a third item is the mask (radar archives)
    inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
    if inputs.ndim != 4 or targets.ndim != 4 or inputs.shape[1:] != targets.shape[1:]:
        raise ValueError(
            "dataset items must be (inputs (T_in, C, H, W), targets (T_out, C, H, W)); "
            f"got {tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    return inputs, targets


def _limit(dataset: Dataset, num_samples: int | None) -> Dataset:
    if num_samples is None:
        return dataset
    check_positive(num_samples, "num_samples")
    return Subset(dataset, range(min(num_samples, len(dataset))))  # type: ignore[arg-type]


def _run(forecaster: Forecaster, name: str, inputs: Tensor, horizon: int) -> Tensor:
    forecast = forecaster(inputs, horizon)
    expected = (inputs.shape[0], horizon, *inputs.shape[2:])
    if not isinstance(forecast, Tensor) or tuple(forecast.shape) != expected:
        got = tuple(forecast.shape) if isinstance(forecast, Tensor) else type(forecast).__name__
        raise ValueError(f"forecaster {name!r} returned {got}, expected shape {expected}")
    return forecast


def score_batch(
    forecasters: Mapping[str, Forecaster],
    metrics: Mapping[str, ForecastMetrics],
    inputs: Tensor,
    targets: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Score one batch, as :func:`evaluate` (and :class:`convlstm.lightning.ForecastModule`'s
    test) does: each forecaster forecasts ``targets.shape[1]`` frames from ``inputs`` and its
    metrics (same name in ``metrics``) take the forecast, leaving out the target pixels that
    ``mask`` marks as without data.

    Args:
        forecasters: ``{name: forecaster(inputs (B, T_in, C, H, W), horizon) -> (B, horizon,
            C, H, W)}``.
        metrics: ``{name: ForecastMetrics}`` with the names of ``forecasters``.
        inputs: ``(B, T_in, C, H, W)``.
        targets: ``(B, horizon, C, H, W)``, on the device of ``inputs``.
        mask: the windows' mask ``(B, T_in + T_out, C or 1, H, W)`` with ``T_out >= horizon``
            (a radar archive's third item, batched; 1 where there are data), or ``None``.

    Returns:
        ``[masked target pixels, all target pixels]`` (float64, on the CPU; zeros without a
        mask); their sums over the batches give :func:`masked_entry`.

    Raises:
        ValueError: a forecast whose shape is not ``targets``' shape.
    """
    horizon = targets.shape[1]
    counts = torch.zeros(2, dtype=torch.float64)
    if mask is not None:
        start = inputs.shape[1]
        mask = mask[:, start : start + horizon].to(targets.device)
        invalid = (mask <= 0).expand(targets.shape)
        counts = torch.tensor([float(invalid.sum()), float(invalid.numel())], dtype=torch.float64)
    for name, forecaster in forecasters.items():
        metrics[name].update(_run(forecaster, name, inputs, horizon).float(), targets, mask)
    return counts


def masked_entry(counts: Tensor) -> dict[str, float]:
    """``{"masked_fraction": masked / all}`` of the target pixels, from the sums of
    :func:`score_batch`'s counts ``[masked, all]`` (``(2,)``), for ``results["dataset"]``;
    ``{}`` when no batch had a mask.

    >>> masked_entry(torch.tensor([25.0, 100.0])), masked_entry(torch.zeros(2))
    ({'masked_fraction': 0.25}, {})
    """
    masked, total = (float(c) for c in counts)
    return {"masked_fraction": masked / total} if total else {}


def evaluate(
    forecaster: Forecaster,
    dataset: Dataset,
    *,
    horizon: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    baselines: Sequence[str] | Mapping[str, Forecaster] = ("persistence", "zeros"),
    thresholds: Sequence[float] | None = None,
    num_samples: int | None = None,
    progress: bool = True,
    data_range: float = 1.0,
    clip: tuple[float, float] | None = DEFAULT_CLIP,
    name: str = "model",
) -> dict[str, Any]:
    """Score ``forecaster`` and baselines on ``dataset``; return JSON-ready results.

    Args:
        forecaster: ``forecaster(inputs (B, T_in, C, H, W), horizon) -> (B, horizon, C, H, W)``;
            an ``nn.Module`` runs in eval mode (its mode is restored afterwards).
        dataset: items ``(inputs (T_in, C, H, W), targets (T_out, C, H, W))``, read in index
            order, or ``(inputs, targets, mask (T_in + T_out, C, H, W))`` (radar archives,
            1 where there are data): every metric then ignores the masked target pixels and
            ``results["dataset"]["masked_fraction"]`` is the fraction of them.
        horizon: lead times to score, at most ``T_out`` (default ``T_out``); targets are cut to it.
        batch_size: sequences per forecaster call.
        device: where the forecasters run; default the model's device.
        baselines: names for :func:`convlstm.baselines.get_baseline`, or a ``{name: forecaster}``
            mapping; each is scored like the model.
        thresholds: event thresholds for categorical scores (radar data), or ``None``.
        num_samples: score only the first ``num_samples`` sequences.
        progress: show a progress bar (on stderr, when it is a terminal).
        data_range, clip: for SSIM/PSNR and the clipping of predictions (see
            :class:`~convlstm.metrics.ForecastMetrics`); ``clip=None`` for radar data.
        name: the model's name in the results.

    Returns:
        ``{"convlstm_version", "dataset": {...}, "settings": {...}, "conventions": {...},
        "forecasters": {name: {metric: {"overall": float | None, "per_lead_time": [...]}}}}``
        with the model first, then the baselines in the given order.

    >>> from torch import nn
    >>> class Last(nn.Module):
    ...     def forward(self, x, horizon):
    ...         return x[:, -1:].expand(-1, horizon, -1, -1, -1)
    >>> data = [(torch.rand(3, 1, 8, 8), torch.rand(2, 1, 8, 8)) for _ in range(5)]
    >>> zeros = lambda x, horizon: x.new_zeros(x.shape[0], horizon, *x.shape[2:])
    >>> r = evaluate(Last(), data, baselines={"zeros": zeros}, progress=False)
    >>> list(r["forecasters"]), len(r["forecasters"]["model"]["ssim"]["per_lead_time"])
    (['model', 'zeros'], 2)
    """
    check_positive(batch_size, "batch_size")
    inputs0, targets0 = _first_pair(dataset)
    horizon = targets0.shape[0] if horizon is None else check_positive(horizon, "horizon")
    if horizon > targets0.shape[0]:
        raise ValueError(f"horizon {horizon} exceeds the dataset's {targets0.shape[0]} targets")
    others = _resolve_baselines(baselines)
    if name in others:
        raise ValueError(f"a baseline is named {name!r} like the model; pass another name=")
    forecasters = {name: forecaster} | others
    device = torch.device(device) if device is not None else model_device(forecaster)
    from convlstm.metrics import ForecastMetrics  # torchmetrics (and with it matplotlib) on use

    metrics = {
        key: ForecastMetrics(data_range=data_range, clip=clip, thresholds=thresholds)
        for key in forecasters
    }
    subset = _limit(dataset, num_samples)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
    masked = torch.zeros(2, dtype=torch.float64)  # masked and all target pixels
    with inference(forecaster):
        bar = tqdm(loader, desc="evaluate", unit="batch", disable=None if progress else True)
        for inputs, targets, *mask in bar:  # a mask when the data have one (radar archives)
            inputs = inputs.to(device, torch.float32)
            targets = targets[:, :horizon].to(device, torch.float32)
            masked += score_batch(forecasters, metrics, inputs, targets, *mask)
    from convlstm.report import json_safe

    return json_safe(
        {
            "convlstm_version": convlstm.__version__,
            "dataset": {
                "name": getattr(dataset, "name", type(dataset).__name__),
                "num_sequences": len(subset),  # type: ignore[arg-type]
                "input_len": inputs0.shape[0],
                "horizon": horizon,
                "frame_shape": list(inputs0.shape[1:]),
                **masked_entry(masked),
            },
            "settings": {
                "data_range": float(data_range),
                "clip": None if clip is None else [float(c) for c in clip],
                "thresholds": None if thresholds is None else [float(t) for t in thresholds],
            },
            "conventions": CONVENTIONS,
            "forecasters": {key: m.compute() for key, m in metrics.items()},
        }
    )


def sample_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)`` (first and last included).

    >>> sample_indices(100, 3), sample_indices(2, 5)
    ([0, 50, 99], [0, 1])
    """
    if length <= 0 or count <= 0:
        return []
    return sorted({round(float(i)) for i in np.linspace(0, length - 1, min(count, length))})


def collect_samples(
    forecaster: Forecaster,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    horizon: int | None = None,
    device: str | torch.device | None = None,
) -> list[Sample]:
    """Forecasts of ``forecaster`` for the sequences ``indices`` of ``dataset``, as
    :class:`~convlstm.report.Sample` arrays for :func:`~convlstm.report.write_report`."""
    from convlstm.report import Sample

    device = torch.device(device) if device is not None else model_device(forecaster)
    samples = []
    with inference(forecaster):
        for index in indices:
            inputs, targets = (torch.as_tensor(a) for a in dataset[index][:2])
            steps = targets.shape[0] if horizon is None else horizon
            batch = inputs[None].to(device, torch.float32)
            forecast = _run(forecaster, "model", batch, steps)[0].float().cpu()
            samples.append(Sample(index, inputs.numpy(), targets[:steps].numpy(), forecast.numpy()))
    return samples


GENERATED_DATASETS = ("moving_mnist", "radar")
"""Dataset names :func:`evaluate_checkpoint` generates (with the validation seed and digits)."""

DATA_LAYOUTS = ("moving_mnist", "samples", "record")
_FILE_OPTIONS = {"moving_mnist_file": "path", "array": "source", "radar_archive": "source"}
_RANGE_PROBE = 16  # sequences whose largest target sets data_range for unbounded models


def _is_moving_mnist_file(path: Path) -> bool:
    """A 4-D ``uint8`` ``.npy``: the published Moving MNIST layout ``(T, N, H, W)``."""
    if path.suffix.lower() != ".npy":
        return False
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read it as .npy ({error})") from None
    return array.ndim == 4 and array.dtype == np.uint8


def _same_file(a: str | os.PathLike[str], b: object) -> bool:
    return isinstance(b, str | os.PathLike) and Path(b).exists() and Path(a).samefile(b)


def _file_dataset(
    path: Path,
    cfg: Mapping[str, Any],
    input_len: int,
    output_len: int,
    layout: str | None,
    archive: Mapping[str, Any] | None,
) -> Dataset:
    """A file's dataset: a radar archive over the whole domain, the training file's validation
    split as in training, the Moving MNIST layout, or the user's arrays read like the training
    arrays."""
    trained = normalise_name(cfg["name"], "dataset")
    options = {**cfg.get("options", {}), **cfg.get("val_options", {})}
    if layout is None and (trained == "radar_archive" or archive is not None):
        kept = {}  # the training archive's options, over the whole domain: no crop
        if trained == "radar_archive":
            kept = {k: v for k, v in options.items() if k not in ("source", "crop")}
            if not _same_file(path, options.get("source")):
                kept.pop("split", None)
        kept |= archive or {}
        return get_dataset(
            "radar_archive", source=path, **kept, input_len=input_len, output_len=output_len
        )
    if layout is None and _same_file(path, options.get(_FILE_OPTIONS.get(trained, ""))):
        split = {"split": "val"} if trained == "array" else {}
        return get_dataset(trained, **split, **options, input_len=input_len, output_len=output_len)
    if layout == "moving_mnist" or (
        layout is None and trained != "array" and _is_moving_mnist_file(path)
    ):
        return MovingMNISTFile(path, input_len, output_len)
    reading = ("layout", "key", "dataset", "scale", "transform")
    extra = {k: options[k] for k in reading if k in options} if trained == "array" else {}
    if layout is not None:
        extra["layout"] = layout
    return ArrayDataset(path, input_len, output_len, **extra)


def resolve_dataset(
    data: str | os.PathLike[str],
    config: Mapping[str, Any],
    *,
    num_samples: int | None = None,
    horizon: int | None = None,
    layout: str | None = None,
    seed: int | None = None,
    archive: Mapping[str, Any] | None = None,
) -> Dataset:
    """The dataset named or stored at ``data``, cut like the checkpoint's training data.

    * the file the checkpoint was trained on (``layout=None``): its validation split, built
      with the training options (as :func:`convlstm.training.build_datasets` does);
    * for a checkpoint trained on a radar archive (``radar_archive``), any archive path
      (``layout=None``): read with the training options but over the whole domain (no
      ``crop``), items carrying their mask; with ``archive``
      (:class:`~convlstm.data.RadarArchive` arguments, overriding the training ones), any
      path is read so, whatever the checkpoint was trained on;
    * another existing path: ``layout="moving_mnist"``, or (unless the checkpoint was trained
      on arrays) a ``.npy`` holding a 4-D ``uint8`` array, is read as the published Moving
      MNIST layout ``(T, N, H, W)`` (:class:`~convlstm.data.MovingMNISTFile`); any other file
      is the user's arrays (:class:`~convlstm.data.ArrayDataset`, ``layout`` ``"samples"`` for
      ``(N, T, [C,] H, W)`` or ``"record"`` for ``(T, [C,] H, W)``), read with the training
      arrays' ``layout``, ``key``, ``scale`` and ``transform`` when the checkpoint was trained
      on arrays;
    * a name in :data:`GENERATED_DATASETS`: generated with the validation seed (and, for
      ``moving_mnist``, the validation digits, never seen in training); with the training
      data's options when it is the dataset the checkpoint was trained on.

    ``config`` is the checkpoint's configuration (``config["data"]["input_len"]`` etc.);
    ``num_samples`` sizes a generated dataset (default ``config["data"]["val_samples"]``);
    ``horizon`` (default ``config["data"]["horizon"]``) is the number of target frames;
    ``seed`` (default the validation seed, ``config["data"]["val_seed"]``) seeds a generated
    dataset, so a seed that neither training nor validation used scores the model on sequences
    it never saw; it is refused for files.
    """
    cfg = config["data"]
    input_len, output_len = cfg["input_len"], horizon or cfg["horizon"]
    if layout is not None and layout not in DATA_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(DATA_LAYOUTS)}, got {layout!r}")
    if archive is not None and layout is not None:
        raise ValueError(f"layout {layout!r} reads array files, not a radar archive (archive=)")
    path = Path(data)
    if path.exists():
        if seed is not None:
            raise ValueError(f"seed applies to generated datasets only, not to the file {data}")
        return _file_dataset(path, cfg, input_len, output_len, layout, archive)
    if archive is not None:
        raise FileNotFoundError(f"{data}: no such radar archive (archive= reads a path)")
    name = normalise_name(str(data))
    if name in GENERATED_DATASETS:
        options: dict[str, Any] = {
            "num_samples": cfg.get("val_samples") or 256,
            "seed": cfg.get("val_seed", 1) if seed is None else seed,
        }
        if name == "moving_mnist":
            options["digits"] = "val"
        if name == normalise_name(cfg["name"], "dataset"):
            options |= {**cfg.get("options", {}), **cfg.get("val_options", {})}
        if num_samples is not None:
            options["num_samples"] = num_samples
        return get_dataset(name, **options, input_len=input_len, output_len=output_len)
    if name in list_datasets():
        raise ValueError(f"dataset {data!r} reads a file: pass the file's path as the data")
    raise FileNotFoundError(
        f"{data}: no such file, and not a generated dataset ({', '.join(GENERATED_DATASETS)})"
    )


def check_fit(model: EncoderForecaster, dataset: Dataset, source: str) -> tuple[int, ...]:
    """Raise ``ValueError`` naming ``source`` and the field unless the dataset's frames fit the
    checkpoint's model (channels, and frame size a multiple of the patch size). Returns the
    frame shape ``(C, H, W)``."""
    inputs, _ = _first_pair(dataset)
    channels, height, width = inputs.shape[1:]
    if channels != model.in_channels:
        raise ValueError(
            f"{source}: frames have {channels} channel(s) (C of (T, C, H, W) = "
            f"{tuple(inputs.shape)}) but the checkpoint's model takes "
            f"model_config.in_channels = {model.in_channels}"
        )
    patch = model.patch_size
    if height % patch or width % patch:
        raise ValueError(
            f"{source}: frame size {height}x{width} (H, W of (T, C, H, W) = "
            f"{tuple(inputs.shape)}) is not a multiple of the checkpoint's "
            f"model_config.patch_size = {patch}"
        )
    return tuple(inputs.shape[1:])


# what the values of radar data are in, by transform (convlstm.data.transforms)
_UNITS = {
    "log_rain": "log10(R + 0.01) of the rain rate R in mm/h (transform 'log'), not mm/h",
    "rain_to_dbz": "reflectivity in dBZ, from the rain rate in mm/h with Z = 200 R^1.6 "
    "(transform 'dbz'), not mm/h",
}


def value_units(dataset: Dataset) -> str | None:
    """What the values of ``dataset`` measure, for radar data and transformed arrays (the report
    states it: errors and event thresholds are in these units); ``None`` when unknown."""
    from convlstm.data.radar import SyntheticRadar

    transform = getattr(dataset, "transform", None)
    if transform is not None:
        name = getattr(transform, "__name__", type(transform).__name__)
        return _UNITS.get(name, f"the output of the transform {name}")
    if isinstance(dataset, SyntheticRadar):
        return "rain rate in mm/h"
    return None


def add_units(
    results: dict[str, Any], dataset: Dataset, transform: RainTransform | None = None
) -> None:
    """State in ``results`` (those of :func:`evaluate`) what the scored values measure:
    ``dataset.units`` (:func:`value_units`; rain rates in mm/h for a rain model scored in
    physical units) and, for such a model (``transform``, the data transform it was trained
    with), ``settings.units`` (mm/h) and ``settings.model_transform``
    (``transform.to_dict()``), as :func:`evaluate_checkpoint` reports them."""
    units = "rain rate in mm/h" if transform is not None else value_units(dataset)
    if units is not None:
        results["dataset"]["units"] = units
    if transform is not None:
        results["settings"]["units"] = RAIN_UNITS
        results["settings"]["model_transform"] = transform.to_dict()


def value_settings(
    model: EncoderForecaster,
    dataset: Dataset,
    data_range: float | None = None,
    rain: bool = False,
) -> tuple[float, tuple[float, float] | None]:
    """The SSIM/PSNR ``data_range`` and the clipping of predictions with which ``convlstm
    evaluate`` (and :class:`convlstm.lightning.ForecastModule`'s test) score ``model`` on
    ``dataset``, for :class:`~convlstm.metrics.ForecastMetrics`.

    Args:
        model: the model; its ``output_activation`` says the value range.
        dataset: items ``(inputs (T_in, C, H, W), targets (T_out, C, H, W))`` or ``(inputs,
            targets, mask (T_in + T_out, C, H, W))``; read only for an unbounded model without
            ``data_range``.
        data_range: the user's data range, or ``None`` for the default.
        rain: scored in mm/h (a rain model wrapped in :class:`~convlstm.units.PhysicalUnits`):
            never clipped, whatever the model's output activation.

    Returns:
        ``(data_range, clip)``: for a sigmoid model (data in [0, 1]) ``data_range`` (default 1)
        and ``(0, 1)``; for an unbounded one ``data_range`` (default the largest target value
        of the first 16 sequences, at pixels with data, 1 when that is not positive) and
        ``None`` (no clipping).

    >>> model = EncoderForecaster(1, [4], 3, output_activation="identity")
    >>> value_settings(model, [(torch.zeros(2, 1, 4, 4), torch.full((1, 1, 4, 4), 7.0))])
    (7.0, None)
    """
    if model.output_activation == "sigmoid" and not rain:
        return (1.0 if data_range is None else data_range), DEFAULT_CLIP
    if data_range is None:
        count = min(len(dataset), _RANGE_PROBE)  # type: ignore[arg-type]
        largest = max(_largest_target(dataset[i]) for i in range(count))
        data_range = largest if largest > 0 else 1.0
    return data_range, None


def _largest_target(item: Sequence[Any]) -> float:
    """The largest target value of a dataset item ``(inputs, targets[, mask])`` among the
    pixels that have data (``mask`` ``(T_in + T_out, C, H, W)``: its last ``T_out`` frames;
    ``-inf`` when none has)."""
    targets = torch.as_tensor(item[1])
    if len(item) > 2:  # the values at pixels without data are no data
        valid = torch.as_tensor(item[2])[-targets.shape[0] :] > 0
        targets = targets[valid.expand(targets.shape)]
    return float(targets.max()) if targets.numel() else -math.inf


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str] | None,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    device: str | None = None,
    batch_size: int = 16,
    num_samples: int | None = None,
    overwrite: bool = False,
    thresholds: Sequence[float] | None = None,
    horizon: int | None = None,
    layout: str | None = None,
    baselines: Sequence[str] | None = None,
    num_gifs: int = 3,
    data_range: float | None = None,
    progress: bool = True,
    pretrained: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    archive: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a saved checkpoint (or a pretrained model) on ``data`` and write a report
    folder to ``out_dir``.

    The model comes from ``checkpoint`` (a ``convlstm train`` checkpoint) or ``pretrained`` (a
    shipped name or a folder written by :func:`~convlstm.pretrained.save_pretrained`): exactly
    one is given (:func:`~convlstm.pretrained.load_pretrained_or_checkpoint`).

    ``data`` (with ``seed``, for generated data, and ``archive``, the
    :class:`~convlstm.data.RadarArchive` arguments of a radar archive read by a rain
    checkpoint) is resolved by
    :func:`resolve_dataset`; the frames are checked against the model
    (:func:`check_fit`). Data of sigmoid models are taken to lie in [0, 1] (``data_range=1``,
    predictions clipped to [0, 1]); for unbounded models predictions are not clipped and
    ``data_range`` defaults to the largest target value among the first 16 sequences.
    ``num_gifs`` sequences, spread over the data, are animated. Other arguments are those of
    :func:`evaluate` and :func:`~convlstm.report.write_report`.

    **Rain in mm/h.** A checkpoint that carries its rain data transform (``data_transform``,
    written by training on rain data; see :mod:`convlstm.units`) is evaluated in physical
    units: the data are read in mm/h (without the training transform), the model is wrapped
    in :class:`~convlstm.units.PhysicalUnits` (mm/h in, mm/h out), predictions are not
    clipped, ``thresholds`` are in mm/h and default to :data:`~convlstm.metrics.HKO7_THRESHOLDS`
    (0.5, 2, 5, 10, 30), and the baselines run on the same mm/h inputs (so ``zeros`` is no
    rain). ``baselines=None`` (default) means :func:`~convlstm.baselines.default_baselines`:
    persistence and zeros, plus pysteps' optical flow and S-PROG for rain data where pysteps
    is installed; each is described with its settings in ``results["baselines"]``.

    Returns:
        the results written to ``out_dir/metrics.json``: those of :func:`evaluate`, plus
        ``checkpoint`` (the checkpoint's path or the pretrained name or folder, and the
        model's name), ``provenance`` (the command line, torch's version) and
        ``config`` (the checkpoint's training configuration), which the report shows.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false, or it is not a report
            folder (a training run, other files, a link: never replaced), before any work.
        convlstm.checkpoint.CheckpointError: unreadable checkpoint or pretrained folder.
        ValueError: neither or both of ``checkpoint`` and ``pretrained``; data that cannot be
            read or do not fit the model; a ``seed`` for a file.
    """
    from convlstm.pretrained import load_pretrained_or_checkpoint

    if (checkpoint is None) == (pretrained is None):
        raise ValueError("give exactly one of checkpoint (a .pt file) and pretrained= (a name)")
    check_output(out_dir, "report", overwrite, "out_dir")
    check_parent(out_dir)  # before any work
    device = default_device(device)
    check_device(device, "device")
    model, config = load_pretrained_or_checkpoint(
        checkpoint=checkpoint, pretrained=pretrained, map_location=device, physical_units=True
    )
    transform = model.transform if isinstance(model, PhysicalUnits) else None
    if archive is not None and transform is None:
        raise ValueError(
            "archive= reads a radar archive in mm/h, which needs a rain checkpoint (trained on "
            "radar data, carrying its data transform); this one forecasts in its own units"
        )
    data_config = config if transform is None else untransformed(config)
    dataset = resolve_dataset(
        data,
        data_config,
        num_samples=num_samples,
        horizon=horizon,
        layout=layout,
        seed=seed,
        archive=archive,
    )
    check_fit(model, dataset, str(data))
    # rain: scored in mm/h, unclipped, HKO-7 thresholds, the field's baselines
    data_range, clip = value_settings(model, dataset, data_range, rain=transform is not None)
    if transform is not None and thresholds is None:
        thresholds = HKO7_THRESHOLDS
    from convlstm.baselines import default_baselines, describe_baseline

    if baselines is None:
        baselines = default_baselines(rain=transform is not None)
    results = evaluate(
        model,
        dataset,
        batch_size=batch_size,
        device=device,
        baselines=baselines,
        thresholds=thresholds,
        num_samples=num_samples,
        progress=progress,
        data_range=data_range,
        clip=clip,
    )
    results["dataset"]["name"] = str(data)
    add_units(results, dataset, transform)
    results["baselines"] = {name: describe_baseline(name) for name in baselines}
    source = checkpoint if checkpoint is not None else pretrained
    results["checkpoint"] = {"path": str(source), "model": config["model"]["name"]}
    from convlstm.report import command_line, json_safe

    results["provenance"] = {"command": command_line(), "torch version": torch.__version__}
    results["config"] = json_safe(config)
    count = results["dataset"]["num_sequences"]
    samples = collect_samples(model, dataset, sample_indices(count, num_gifs), device=device)
    if transform is not None and "optical_flow" in results["forecasters"]:
        samples = _with_optical_flow(samples)
    _write_report(results, out_dir, samples, overwrite)
    return results


def _with_optical_flow(samples: list[Sample]) -> list[Sample]:
    """The samples with pysteps' optical-flow forecast beside the model's (rain maps)."""
    from dataclasses import replace

    from convlstm.baselines import get_baseline

    flow = get_baseline("optical_flow")
    out = []
    for s in samples:
        forecast = flow(torch.from_numpy(s.inputs)[None].double(), len(s.target))[0].numpy()
        out.append(replace(s, others={"optical flow": forecast}))
    return out


def _write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    samples: list[Sample],
    overwrite: bool,
) -> None:
    """:func:`~convlstm.report.write_report` plus the marker file that lets a later
    ``overwrite`` recognise the folder as a report (:mod:`convlstm._outputs`), atomically."""
    from convlstm.report import report_files

    files = report_files(results, samples)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for relative, data in files.items():
            path = tmp / relative
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
        (tmp / REPORT_MARKER).write_text(
            "A report folder written by convlstm; `convlstm evaluate --overwrite` may replace it.\n"
        )


# command-line helpers that moved to convlstm.cli (deprecated here)
__getattr__ = moved(
    __name__, {"parse_numbers": "convlstm.cli._args", "add_parser": "convlstm.cli.evaluate"}
)
