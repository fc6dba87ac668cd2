"""Trained models as folders in the Hugging Face Hub layout: weights in safetensors, the
configuration in JSON, a model card; no pickle, so no code runs on load.

A pretrained folder holds::

    model.safetensors   the weights (``model.state_dict()``, float32), read with safetensors
    config.json         format, architecture, the model's constructor arguments
                        (``EncoderForecaster(**model_config)``), the registered model name, the
                        data the model expects (input_len, horizon, dataset and its transform),
                        the frame geometry and value range/units, a rain model's data transform
                        (``data_transform``: the model then works in mm/h through
                        :class:`~convlstm.units.PhysicalUnits`), the weights' SHA-256, and
                        (for exported runs) the full training configuration and the card fields
    README.md           the model card: data, compute, command, seed, scores against the
                        baselines with their per-lead-time values
    metrics.json        (optional) the evaluation results the card's scores come from

Weights that ship with the package live in ``convlstm/pretrained/<name>/``
(:func:`list_pretrained`); ``create_model(name, pretrained=True)`` and
:meth:`EncoderForecaster.from_pretrained(name) <convlstm.models.EncoderForecaster.from_pretrained>`
load them, :func:`export_pretrained` turns a ``convlstm train`` run folder into one.

>>> import tempfile, pathlib, torch
>>> from convlstm.models import EncoderForecaster
>>> model = EncoderForecaster(1, [4], 3, patch_size=2)
>>> folder = model.save_pretrained(pathlib.Path(tempfile.mkdtemp()) / "tiny")
>>> sorted(p.name for p in folder.iterdir())
['README.md', 'config.json', 'model.safetensors']
>>> x = torch.rand(1, 3, 1, 8, 8)
>>> bool(torch.equal(EncoderForecaster.from_pretrained(folder)(x, 2), model.eval()(x, 2)))
True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from convlstm._atomic import atomic_dir
from convlstm.checkpoint import CheckpointError, _check_fit, load_model
from convlstm.models import EncoderForecaster, list_models
from convlstm.registry import normalise_name
from convlstm.units import PhysicalUnits, rain_transform

__all__ = [
    "FORMAT_VERSION",
    "SHIPPED_FOLDER",
    "PretrainedError",
    "export_pretrained",
    "list_pretrained",
    "load_pretrained",
    "load_pretrained_or_checkpoint",
    "model_card",
    "save_pretrained",
]

FORMAT = "convlstm.pretrained"
FORMAT_VERSION = 1
ARCHITECTURE = "EncoderForecaster"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
SHIPPED_FOLDER = Path(__file__).with_name("pretrained")
"""Where the package's shipped weights live: one folder per registered model name."""

# Files that a pickle-based loader (torch.load, pickle, joblib) would read, and so run code.
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib")
# (value range, units) of the frames the generated datasets give a model
_UNITS = {"moving_mnist": "grey level / 255 (0 black, 1 white)", "radar": "rain rate in mm/h"}
_CARD_FIELDS = ("title", "summary", "data", "compute", "command", "seed", "limitations", "notes")


class PretrainedError(CheckpointError):
    """A pretrained folder or name that is missing, unsafe, damaged or not understood."""


# ----------------------------------------------------------------------------- names


def list_pretrained() -> list[str]:
    """Names whose trained weights ship with the package (``create_model(name,
    pretrained=True)``): the folders of :data:`SHIPPED_FOLDER` holding a ``config.json``.

    >>> set(list_pretrained()) <= set(list_models())
    True
    """
    if not SHIPPED_FOLDER.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_FOLDER.iterdir() if (p / CONFIG_FILE).is_file())


def _resolve(name_or_folder: str | os.PathLike[str]) -> Path:
    """The folder of a shipped name or a path; a clear error naming the shipped names."""
    path = Path(name_or_folder)
    if (path / CONFIG_FILE).is_file():
        return path
    name = str(name_or_folder)
    if name in list_pretrained():
        return SHIPPED_FOLDER / name
    shipped = ", ".join(list_pretrained()) or "none in this installation"
    if path.is_dir():
        raise PretrainedError(
            f"{path} is not a pretrained folder: it has no {CONFIG_FILE} (write one with "
            f"save_pretrained or export_pretrained); names with shipped weights: {shipped}"
        )
    if name in list_models():
        raise PretrainedError(
            f"no trained weights ship for the model {name!r}; names with shipped weights: "
            f"{shipped} (or pass a folder written by save_pretrained)"
        )
    raise PretrainedError(
        f"{name!r} is neither a folder nor a name with shipped weights ({shipped})"
    )


# ----------------------------------------------------------------------------- saving


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _frames(model: EncoderForecaster, data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The frames the model expects: channels, size, value range and units, transform."""
    frames: dict[str, Any] = {
        "channels": model.in_channels,
        "size": None,
        "value_range": [0.0, 1.0] if model.output_activation == "sigmoid" else None,
        "units": None,
        "transform": None,
    }
    if not data:
        return frames
    options = {**data.get("options", {}), **data.get("val_options", {})}
    frames["transform"] = options.get("transform")
    if "scale" in options:
        frames["scale"] = options["scale"]
    name = normalise_name(str(data.get("name", "")))
    if name in _UNITS:
        from convlstm.data import get_dataset
        from convlstm.evaluation import value_units

        sample = get_dataset(
            name,
            **{"num_samples": 1, **options},
            input_len=data["input_len"],
            output_len=data["horizon"],
        )
        frames["size"] = list(torch.as_tensor(sample[0][0]).shape[-2:])
        frames["units"] = value_units(sample) or _UNITS[name]
    return frames


def _check_data(data: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("name", "input_len", "horizon"):
        if key not in data:
            raise ValueError(
                f"data must give name, input_len and horizon (the training configuration's "
                f"[data] section), got the keys {sorted(data)}"
            )
    return json.loads(json.dumps(dict(data)))  # plain JSON values, a copy


def save_pretrained(
    model: EncoderForecaster,
    folder: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    data: Mapping[str, Any] | None = None,
    card: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    data_transform: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` to ``folder`` in the pretrained layout (see the module docstring),
    atomically: the folder appears complete or not at all.

    Args:
        model: the model; its weights are saved as float32 on the CPU.
        folder: the folder to create.
        model_name: the registered name the model's architecture comes from, if any.
        data: the data the model expects, as the training configuration's ``[data]`` section
            (``name``, ``input_len``, ``horizon``, ``options`` with its ``transform``, ...);
            needed by ``convlstm predict/evaluate --pretrained``.
        card: model card fields (``title``, ``summary``, ``data``, ``compute``, ``command``,
            ``seed``, ``limitations``, ``notes``; see :func:`model_card`).
        metrics: evaluation results (``convlstm.evaluation.evaluate``'s) to state on the card.
        training: the full training configuration, kept for reproducibility.
        data_transform: a rain model's data transform
            (:meth:`~convlstm.data.transforms.RainTransform.to_dict`), so that loading with
            ``physical_units=True`` gives a model in mm/h.
        overwrite: replace an existing ``folder``.

    Returns:
        the folder's path.
    """
    from safetensors.torch import save_file

    if not isinstance(model, EncoderForecaster):
        raise TypeError(f"model must be an EncoderForecaster, got {type(model).__name__}")
    unknown = sorted(set(card or {}) - set(_CARD_FIELDS))
    if unknown:
        raise ValueError(f"unknown card field(s) {', '.join(unknown)}; valid: {_CARD_FIELDS}")
    data = None if data is None else _check_data(data)
    state = {
        key: value.detach().to("cpu", torch.float32 if value.is_floating_point() else None)
        for key, value in model.state_dict().items()
    }
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "model_name": model_name,
        "model_config": json.loads(json.dumps(model.config)),
        "data": data,
        "frames": _frames(model, data),
        "card": dict(card or {}),
        "training": None if training is None else json.loads(json.dumps(training)),
        "data_transform": None
        if data_transform is None
        else json.loads(json.dumps(data_transform)),
        "torch_version": str(torch.__version__),
    }
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        # contiguous copies: safetensors refuses views and tensors that share memory
        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        config["weights_sha256"] = _sha256(tmp / WEIGHTS_FILE)
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
        (tmp / CONFIG_FILE).write_text(text, encoding="utf-8")
        if metrics is not None:
            text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
            (tmp / METRICS_FILE).write_text(text, encoding="utf-8")
        (tmp / CARD_FILE).write_text(model_card(config, metrics), encoding="utf-8")
    return Path(folder)


# ----------------------------------------------------------------------------- loading


def _read_config(folder: Path) -> dict[str, Any]:
    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix.lower() in _PICKLE_SUFFIXES)
    if pickles:
        raise PretrainedError(
            f"pretrained folder {folder} is refused: it holds pickle file(s) "
            f"{', '.join(pickles)}, which could run code when loaded; a pretrained folder "
            f"holds its weights only in {WEIGHTS_FILE}"
        )
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedError(f"{folder / CONFIG_FILE} is unreadable: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PretrainedError(f"{folder / CONFIG_FILE} has no format={FORMAT!r} entry")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PretrainedError(
            f"{folder / CONFIG_FILE} has format version {version!r}; this convlstm reads "
            f"versions up to {FORMAT_VERSION}"
        )
    if config.get("architecture") != ARCHITECTURE:
        raise PretrainedError(
            f"{folder / CONFIG_FILE} is for the architecture {config.get('architecture')!r}; "
            f"this convlstm builds {ARCHITECTURE!r} only"
        )
    return config


def load_pretrained(
    name_or_folder: str | os.PathLike[str],
    map_location: Any = "cpu",
    *,
    physical_units: bool = False,
) -> tuple[EncoderForecaster, dict[str, Any]]:
    """The model of a pretrained folder or shipped name, in eval mode, and its ``config.json``.

    Args:
        name_or_folder: a folder written by :func:`save_pretrained` (a folder path wins), or a
            name of :func:`list_pretrained`.
        map_location: device for the weights.
        physical_units: for a rain model (one saved with its ``data_transform``), return it
            wrapped in :class:`~convlstm.units.PhysicalUnits`: rain rates in mm/h in and out.

    Returns:
        ``(model, config)``; ``config["data"]``, ``config["frames"]`` describe the data.

    Raises:
        PretrainedError: no such name or folder, a folder with pickle files, an unknown
            architecture or format, weights that fail their checksum or do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = _resolve(name_or_folder)
    config = _read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise PretrainedError(f"pretrained folder {folder} has no {WEIGHTS_FILE}")
    expected = config.get("weights_sha256")
    if expected is not None and _sha256(weights) != expected:
        raise PretrainedError(
            f"{weights} is corrupt: its SHA-256 differs from the one in {CONFIG_FILE}"
        )
    source = f"pretrained folder {folder}"
    try:
        with torch.device("meta"):  # check the configuration before allocating anything
            skeleton = EncoderForecaster(**config.get("model_config", {}))
    except (TypeError, ValueError) as error:
        raise PretrainedError(f"{source} has an invalid model_config: {error}") from None
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise PretrainedError(f"{weights} is unreadable: {error}") from None
    try:
        _check_fit(skeleton.state_dict(), state, source)
    except CheckpointError as error:
        raise PretrainedError(str(error)) from None
    model = EncoderForecaster(**config["model_config"])
    model.load_state_dict(state)
    model = model.to(map_location).eval()
    try:
        transform = rain_transform(config)  # config.json keeps it as a checkpoint does
    except (TypeError, ValueError) as error:
        raise PretrainedError(f"{source} has an invalid data_transform: {error}") from None
    if physical_units and transform is not None:
        return PhysicalUnits(model, transform).eval(), config  # type: ignore[return-value]
    return model, config


def load_pretrained_or_checkpoint(
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    map_location: Any = "cpu",
    physical_units: bool = False,
) -> tuple[EncoderForecaster, dict[str, Any]]:
    """The model for ``convlstm predict/evaluate``: from a training ``checkpoint`` (as
    :func:`convlstm.checkpoint.load_model`) or a ``pretrained`` name or folder (as
    :func:`load_pretrained`), exactly one; with ``physical_units`` a rain model of either
    source comes in mm/h.

    Returns:
        ``(model, config)`` in the checkpoint's form either way: ``config["model"]["name"]``,
        ``config["data"]["input_len"]``, ``["horizon"]``, ``["name"]``, ``["options"]``
        (with the ``transform``), ``["val_options"]``, ``["val_seed"]``; for a pretrained
        model also ``config["frames"]`` (size, value range, units).

    Raises:
        ValueError: neither or both sources given.
        CheckpointError: an unreadable checkpoint or pretrained folder (a
            :class:`PretrainedError`), or one that does not say what data it expects.
    """
    if (checkpoint is None) == (pretrained is None):
        raise ValueError("give exactly one of checkpoint= (a .pt file) and pretrained= (a name)")
    if checkpoint is not None:
        return load_model(checkpoint, map_location=map_location, physical_units=physical_units)
    assert pretrained is not None
    model, stored = load_pretrained(
        pretrained, map_location=map_location, physical_units=physical_units
    )
    if not stored.get("data"):
        raise PretrainedError(
            f"pretrained {pretrained} does not say what data it expects (no data section in "
            f"its {CONFIG_FILE}: save it with save_pretrained(..., data=...))"
        )
    config = dict(stored.get("training") or {})
    config["model"] = {"name": stored.get("model_name"), **stored["model_config"]}
    config["data"] = stored["data"]
    config["frames"] = stored["frames"]
    return model, config


# ----------------------------------------------------------------------------- runs


def export_pretrained(
    run_dir: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    card: Mapping[str, Any] | None = None,
    checkpoint: str = "best.pt",
    overwrite: bool = False,
) -> Path:
    """Turn a ``convlstm train`` run folder into a pretrained folder (atomically).

    Reads ``run_dir/checkpoint`` (its weights and resolved configuration), ``config.yaml``
    (quoted on the card), ``metrics.jsonl`` (the training curve on the card) and, when present,
    the final report's ``report/metrics.json`` (the scores against the baselines).

    Args:
        run_dir: the run folder.
        folder: the pretrained folder to write.
        card: model card fields (see :func:`save_pretrained`); ``seed`` and ``command``
            default to the run's.
        checkpoint: the checkpoint file inside ``run_dir``.
        overwrite: replace an existing ``folder``.

    Returns:
        the folder's path.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    model, config = load_model(run_dir / checkpoint, physical_units=True)
    transform = None
    if isinstance(model, PhysicalUnits):  # a rain model, wrapped to work in mm/h
        transform, model = model.transform, cast(EncoderForecaster, model.model)
    report = run_dir / "report" / METRICS_FILE
    metrics = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
    fields = {
        "seed": config["run"]["seed"],
        "command": "`convlstm train --config config.yaml` (config.yaml as under Configuration)",
        **(card or {}),
    }
    training = dict(config)
    recipe = run_dir / "config.yaml"
    if recipe.is_file():
        training["recipe_yaml"] = recipe.read_text(encoding="utf-8")
    curve = run_dir / "metrics.jsonl"
    if curve.is_file():
        rows = [json.loads(line) for line in curve.read_text(encoding="utf-8").splitlines() if line]
        training["curve"] = [_curve_row(row) for row in rows]
    return save_pretrained(
        model,
        folder,
        model_name=config["model"]["name"],
        data=config["data"],
        card=fields,
        metrics=metrics,
        training=training,
        data_transform=None if transform is None else transform.to_dict(),
        overwrite=overwrite,
    )


def _curve_row(row: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("epoch", "step", "train_loss", "val_mse_frame", "lr", "elapsed_s")
    return {key: row[key] for key in keys if key in row}


# ----------------------------------------------------------------------------- card


def _number(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"


def _score_tables(metrics: Mapping[str, Any]) -> list[str]:
    forecasters: Mapping[str, Any] = metrics.get("forecasters", {})
    if not forecasters:
        return []
    names = list(forecasters)
    keys = [k for k in forecasters[names[0]] if isinstance(forecasters[names[0]][k], Mapping)]
    lines = ["| forecaster | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in names:
        values = [_number(forecasters[name].get(k, {}).get("overall")) for k in keys]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    for key in [k for k in ("mse_frame", "ssim") if k in keys] + [
        k for k in keys if k.startswith("csi")
    ]:
        curves = [forecasters[n].get(key, {}).get("per_lead_time") or [] for n in names]
        leads = max(len(c) for c in curves)
        lines += ["", f"{key} by lead time:", ""]
        lines += ["| lead | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for lead in range(leads):
            cells = [_number(c[lead]) if lead < len(c) else "" for c in curves]
            lines.append(f"| +{lead + 1} | " + " | ".join(cells) + " |")
    return lines


def model_card(config: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> str:
    """The model card (``README.md``) of a pretrained ``config`` (its ``config.json``) and the
    evaluation ``metrics``: Hugging Face front matter, the card fields, the expected data, the
    scores against the baselines (overall and per lead time) and the training curve."""
    card = config.get("card") or {}
    name = config.get("model_name") or "convlstm model"
    data = config.get("data") or {}
    frames = config.get("frames") or {}
    kind = "nowcasting" if data.get("name") == "radar" else "video-prediction"
    lines = [
        "---",
        "library_name: convlstm",
        f"tags: [convlstm, spatiotemporal-forecasting, {kind}]",
        "---",
        "",
        f"# {card.get('title', name)}",
        "",
    ]
    if card.get("summary"):
        lines += [str(card["summary"]), ""]
    lines += [
        "```python",
        "from convlstm.models import EncoderForecaster",
        "",
        f'model = EncoderForecaster.from_pretrained("{name}")  # or this folder\'s path',
        "```",
        "",
        "## Model",
        "",
        f"`EncoderForecaster(**model_config)` with `{json.dumps(config.get('model_config'))}`.",
        "",
    ]
    if data:
        lines += [
            "## Expected data",
            "",
            f"- {data.get('input_len')} input frames, {data.get('horizon')} forecast frames",
            f"- frames: {frames.get('channels')} channel(s), size {frames.get('size')}, "
            f"values in {frames.get('value_range') or 'an unbounded range'}"
            + (f" ({frames['units']})" if frames.get("units") else ""),
            f"- transform: {frames.get('transform')}; dataset: {data.get('name')} "
            f"with options {json.dumps(data.get('options', {}))}",
            "",
        ]
    details = [(f, card[f]) for f in ("data", "compute", "command", "seed") if f in card]
    if details:
        lines += ["## Training", ""]
        lines += [f"- {field}: {value}" for field, value in details]
        lines.append("")
    if metrics:
        dataset = metrics.get("dataset", {})
        lines += [
            "## Scores",
            "",
            f"On {dataset.get('num_sequences')} sequences of {dataset.get('name')}; values in "
            f"{dataset.get('units', frames.get('units'))}.",
            "",
            *_score_tables(metrics),
            "",
        ]
    curve: Sequence[Mapping[str, Any]] = (config.get("training") or {}).get("curve") or []
    if curve:
        every = max(1, math.ceil(len(curve) / 20))
        shown = list(curve[::every]) + ([curve[-1]] if (len(curve) - 1) % every else [])
        lines += ["## Training curve", "", "| epoch | step | train loss | val MSE/frame |"]
        lines.append("|---|---|---|---|")
        for row in shown:
            lines.append(
                f"| {row.get('epoch')} | {row.get('step')} | {_number(row.get('train_loss'))} "
                f"| {_number(row.get('val_mse_frame'))} |"
            )
        lines.append("")
    for field in ("limitations", "notes"):
        if card.get(field):
            lines += [f"## {field.capitalize()}", "", str(card[field]), ""]
    recipe = (config.get("training") or {}).get("recipe_yaml")
    if recipe:
        lines += ["## Configuration", "", "```yaml", recipe.rstrip(), "```", ""]
    return "\n".join(lines)
