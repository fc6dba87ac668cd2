"""Evaluation report folders: :func:`write_report` turns :func:`convlstm.evaluation.evaluate`'s
results (and a few forecast samples) into files a person or a program can read.

A report folder holds::

    metrics.json                 the results, strict JSON (non-finite numbers as null)
    summary.md                   forecaster x metric table, conventions, links to the figures
    summary.html                 one self-contained page: the tables, the curves and the
                                 animations (embedded), the provenance and the configuration
    curves/<metric>.png          the metric against lead time, one line per forecaster
    samples/sample_<index>.gif   animated input | truth | forecast | error, one per sample

The folder is built in a hidden temporary sibling and renamed into place (see
:func:`convlstm._atomic.atomic_dir`); the same results give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convlstm import _html as _page
from convlstm._atomic import atomic_dir
from convlstm.viz import lead_time_figure, rain_maps_figure, sequence_gif

__all__ = [
    "CURVE_METRICS",
    "METRIC_INFO",
    "RAIN_CURVE_METRICS",
    "Sample",
    "command_line",
    "json_safe",
    "report_files",
    "write_report",
]

# name -> (label, goal); the table shows these, in this order, when present. The goal says
# which value is best: "lower", "higher", or "one" (frequency bias: 1 is unbiased).
METRIC_INFO: dict[str, tuple[str, str]] = {
    "mse_frame": ("MSE / frame", "lower"),
    "mae_frame": ("MAE / frame", "lower"),
    "mse_pixel": ("MSE / pixel", "lower"),
    "mae_pixel": ("MAE / pixel", "lower"),
    "ssim": ("SSIM", "higher"),
    "psnr": ("PSNR (dB)", "higher"),
    "csi": ("CSI", "higher"),
    "pod": ("POD", "higher"),
    "far": ("FAR", "lower"),
    "hss": ("HSS", "higher"),
    "bias": ("bias", "one"),
}
_ARROWS = {"lower": "↓", "higher": "↑", "one": "→1"}
CURVE_METRICS = ("mse_frame", "mae_frame", "ssim", "psnr", "csi")
"""Metrics drawn against lead time (``csi`` once per threshold)."""

_CONTINUOUS = ("mse_frame", "mae_frame", "ssim", "psnr")
_CATEGORICAL = ("csi", "pod", "far", "hss", "bias")


@dataclass(frozen=True)
class Sample:
    """One evaluated sequence for the animations: numpy ``(T, C, H, W)`` arrays.

    Attributes:
        index: position of the sequence in the dataset.
        inputs: ``(T_in, C, H, W)`` input frames.
        target: ``(T_out, C, H, W)`` true future frames.
        forecast: ``(T_out, C, H, W)`` the model's forecast.
        others: other forecasters' forecasts ``(T_out, C, H, W)`` by name (e.g. optical
            flow), shown beside the model's on the rain maps of reports in mm/h.
    """

    index: int
    inputs: np.ndarray
    target: np.ndarray
    forecast: np.ndarray
    others: Mapping[str, np.ndarray] = field(default_factory=dict)


def json_safe(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats (NaN, ±inf) as ``None``, for strict
    JSON.

    >>> json_safe({"a": [1.0, float("nan")], "b": (float("inf"), "x")})
    {'a': [1.0, None], 'b': [None, 'x']}
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that runs this process (``sys.argv``, the program by its file name), quoted
    for a shell, for a report's provenance.

    >>> command_line(["/usr/bin/convlstm", "evaluate", "--data", "my file.npy"])
    "convlstm evaluate --data 'my file.npy'"
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    return shlex.join([Path(argv[0]).name, *argv[1:]])


def _split(metric: str) -> tuple[str, str | None]:
    """``"csi@0.5"`` -> ``("csi", "0.5")``; ``"ssim"`` -> ``("ssim", None)``."""
    base, _, threshold = metric.partition("@")
    return base, threshold or None


def _metric_label(metric: str) -> str:
    base, threshold = _split(metric)
    label = METRIC_INFO.get(base, (base, "lower"))[0]
    return f"{label} ≥ {threshold}" if threshold else label


def _goal(metric: str) -> str:
    return METRIC_INFO.get(_split(metric)[0], ("", "lower"))[1]


def _file_stem(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", metric.replace("@", "_at_"))


def _ordered_metrics(
    forecasters: Mapping[str, Mapping[str, Any]], bases: Sequence[str]
) -> list[str]:
    """The metrics present in the results whose base name is in ``bases``, in that order."""
    present = list(next(iter(forecasters.values()), {}))
    return [m for base in bases for m in present if _split(m)[0] == base]


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.5g}"


def _best(values: list[float | None], goal: str) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    if goal == "one":
        return min(finite, key=lambda v: abs(v - 1.0))
    return max(finite) if goal == "higher" else min(finite)


Table = tuple[str, list[str], list[list[str]], list[list[bool]]]


def _table(forecasters: Mapping[str, Any], title: str, metrics: list[str]) -> Table:
    """Title, header, cells and which cells are the best of their column."""
    header = ["forecaster"] + [
        f"{_metric_label(_split(m)[0])} {_ARROWS[_goal(m)]}" for m in metrics
    ]
    columns = {m: [forecasters[f][m]["overall"] for f in forecasters] for m in metrics}
    winners = {m: _best(columns[m], _goal(m)) if len(forecasters) > 1 else None for m in metrics}
    rows, best = [], []
    for i, name in enumerate(forecasters):
        rows.append([name] + [_format(columns[m][i]) for m in metrics])
        best.append(
            [False] + [winners[m] is not None and columns[m][i] == winners[m] for m in metrics]
        )
    return title, header, rows, best


def _tables(results: Mapping[str, Any]) -> list[Table]:
    """The continuous metrics, then one table of categorical scores per threshold."""
    forecasters = results["forecasters"]
    continuous = _ordered_metrics(forecasters, _CONTINUOUS)
    tables = [_table(forecasters, "Scores", continuous)] if continuous else []
    thresholds = dict.fromkeys(
        t for m in _ordered_metrics(forecasters, _CATEGORICAL) if (t := _split(m)[1])
    )
    present = next(iter(forecasters.values()))
    for t in thresholds:
        metrics = [f"{base}@{t}" for base in _CATEGORICAL if f"{base}@{t}" in present]
        unit = results.get("settings", {}).get("units")
        title = f"Events: value ≥ {t}" + (f" {unit}" if unit else "")
        tables.append(_table(forecasters, title, metrics))
    return tables


def _conventions(results: Mapping[str, Any]) -> list[str]:
    return [f"{key}: {text}" for key, text in results.get("conventions", {}).items()]


def _dataset_line(results: Mapping[str, Any]) -> str:
    d = results.get("dataset", {})
    return ", ".join(f"{key} = {value}" for key, value in d.items() if key != "units")


def _units_line(results: Mapping[str, Any]) -> str | None:
    """Which units the values, errors and event thresholds are in, and which fraction of the
    pixels was masked (no data), when the results say."""
    dataset = results.get("dataset", {})
    units, masked = dataset.get("units"), dataset.get("masked_fraction")
    lines = []
    if units:
        lines.append(
            f"Values are {units}: the errors and event thresholds below are in these units."
        )
    if masked is not None:
        lines.append(
            f"Masked (no data): {100 * masked:.2f}% of the target pixels, left out of every score."
        )
    return " ".join(lines) or None


def _baseline_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per baseline: its name, what it does and its settings (``results["baselines"]``,
    written by :func:`~convlstm.evaluation.evaluate_checkpoint`)."""
    lines = []
    for name, about in results.get("baselines", {}).items():
        settings = ", ".join(f"{k} = {v}" for k, v in about.get("settings", {}).items())
        lines.append(f"{name}: {about.get('method', '')}" + (f" ({settings})" if settings else ""))
    return lines


def _markdown(
    results: Mapping[str, Any], curves: list[str], gifs: list[str], maps: Sequence[str] = ()
) -> str:
    lines = ["# Evaluation report", "", f"Dataset: {_dataset_line(results)}.", ""]
    if units := _units_line(results):
        lines += [units, ""]
    if baselines := _baseline_lines(results):
        lines += ["## Baselines", ""] + [f"- {b}" for b in baselines] + [""]
    for title, header, rows, best in _tables(results):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row, marks in zip(rows, best, strict=True):
            cells = [f"**{c}**" if m else c for c, m in zip(row, marks, strict=True)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Best value per column in bold; n/a: undefined or infinite.", ""]
    lines += ["## Conventions", ""] + [f"- {c}" for c in _conventions(results)] + [""]
    if curves:
        lines += ["## Metrics against lead time", ""]
        lines += [f"![{Path(c).stem}]({c})" for c in curves] + [""]
    if maps:
        lines += ["## Rain maps (mm/h)", ""]
        lines += [f"![{Path(m).stem}]({m})" for m in maps] + [""]
    if gifs:
        lines += ["## Samples (input | truth | forecast | error)", ""]
        lines += [f"![{Path(g).stem}]({g})" for g in gifs] + [""]
    return "\n".join(lines)


def _provenance(results: Mapping[str, Any]) -> dict[str, Any]:
    """What produced the results: the package version, the command, the checkpoint, the data,
    the seed and the settings, as far as ``results`` records them."""
    items: dict[str, Any] = {"convlstm version": results.get("convlstm_version", "unknown")}
    items |= results.get("provenance", {})
    checkpoint = results.get("checkpoint", {})
    items |= {f"checkpoint {key}": value for key, value in checkpoint.items()}
    items["data"] = _dataset_line(results)
    seed = results.get("config", {}).get("run", {}).get("seed")
    if seed is not None and "seed" not in items:
        items["seed"] = seed
    items |= {f"setting {key}": value for key, value in results.get("settings", {}).items()}
    for line in _baseline_lines(results):
        name, about = line.split(": ", 1)
        items[f"baseline {name}"] = about
    return items


def _html(results: Mapping[str, Any], curves: dict[str, bytes], gifs: dict[str, bytes]) -> str:
    dataset = results.get("dataset", {})
    subtitle = f"Dataset: {_dataset_line(results)}."
    if "checkpoint" in results:
        subtitle = f"Model {results['checkpoint'].get('model', '')}; " + subtitle
    return _page.page(
        subtitle=subtitle,
        units=_units_line(results),
        tables=_tables(results),
        curves=[
            (
                path,
                f"rain maps (mm/h), sequence {int(Path(path).stem.rsplit('_', 1)[1])}"
                if path.startswith("maps/")
                else _metric_label(Path(path).stem.replace("_at_", "@")),
                data,
            )
            for path, data in curves.items()
        ],
        samples=[
            (
                path,
                f"sequence {int(Path(path).stem.rsplit('_', 1)[1])} of {dataset.get('name', 'the data')}",
                data,
            )
            for path, data in gifs.items()
        ],
        provenance=_provenance(results),
        config=results.get("config"),
        conventions=_conventions(results),
    )


RAIN_CURVE_METRICS = (*CURVE_METRICS, "pod", "far", "hss", "bias")
"""Metrics drawn against lead time for rain in physical units (``settings.units``): every
categorical score, once per threshold."""


def _axis_label(metric: str, units: str | None) -> str:
    """The metric's label with its unit (``units`` of the values, e.g. ``"mm/h"``)."""
    base, _ = _split(metric)
    label = METRIC_INFO.get(base, (base, "lower"))[0]
    if units is None or base in ("psnr",):
        return label
    if base.startswith("mse"):
        return f"{label} (({units})²)"
    if base.startswith("mae"):
        return f"{label} ({units})"
    return f"{label} (no unit)"


def _curves(results: Mapping[str, Any]) -> dict[str, bytes]:
    """``curves/<metric>.png`` figures, keyed by relative path; for rain in physical units
    (``results["settings"]["units"]``) also POD, FAR, HSS and bias per threshold, with the
    units on the axes and in the titles."""
    forecasters = results["forecasters"]
    units = results.get("settings", {}).get("units")
    figures = {}
    for metric in _ordered_metrics(forecasters, RAIN_CURVE_METRICS if units else CURVE_METRICS):
        curves = {name: values[metric]["per_lead_time"] for name, values in forecasters.items()}
        title = _metric_label(metric)
        if units and _split(metric)[1] is not None:
            title = f"{title} {units}"
        figures[f"curves/{_file_stem(metric)}.png"] = lead_time_figure(
            curves, title=title, ylabel=_axis_label(metric, units), best=_goal(metric)
        )
    return figures


def _value_range(results: Mapping[str, Any]) -> tuple[float, float]:
    """The value range the animations show: the clip range, else ``[0, data_range]``."""
    settings = results.get("settings", {})
    clip = settings.get("clip")
    if clip:
        return float(clip[0]), float(clip[1])
    return 0.0, float(settings.get("data_range", 1.0))


def report_files(results: Mapping[str, Any], samples: Sequence[Sample] = ()) -> dict[str, bytes]:
    """Every file of a report, keyed by its path relative to the report folder, as bytes.

    >>> results = {"forecasters": {"model": {"mse_frame": {"overall": 1.0,
    ...     "per_lead_time": [0.5, 1.5]}}}}
    >>> sorted(report_files(results))
    ['curves/mse_frame.png', 'metrics.json', 'summary.html', 'summary.md']
    """
    if not results.get("forecasters"):
        raise ValueError("results hold no forecasters; pass the dict returned by evaluate()")
    vmin, vmax = _value_range(results)
    results = json_safe(results)
    files = {"metrics.json": (json.dumps(results, indent=2, allow_nan=False) + "\n").encode()}
    figures = _curves(results)
    gifs = {
        f"samples/sample_{s.index:05d}.gif": sequence_gif(
            s.inputs, s.target, s.forecast, vmin=vmin, vmax=vmax
        )
        for s in samples
    }
    maps = _rain_maps(results, samples)
    files["summary.md"] = _markdown(results, list(figures), list(gifs), list(maps)).encode()
    files["summary.html"] = _html(results, figures | maps, gifs).encode()
    return files | figures | gifs | maps


def _map_lead_times(horizon: int) -> list[int]:
    """The lead times the rain maps show: the first, the middle and the last."""
    return sorted({1, (horizon + 1) // 2, horizon})


def _rain_maps(results: Mapping[str, Any], samples: Sequence[Sample]) -> dict[str, bytes]:
    """``maps/sample_NNNNN.png`` per sample when the values are rain rates in mm/h: the
    observation, the model's and the other forecasters' forecasts at chosen lead times, on
    pysteps' colour scale."""
    if results.get("settings", {}).get("units") != "mm/h":
        return {}
    maps = {}
    for s in samples:
        rows = {"observation": s.target, "model": s.forecast, **s.others}
        maps[f"maps/sample_{s.index:05d}.png"] = rain_maps_figure(
            rows, _map_lead_times(len(s.target)), title=f"sequence {s.index}: rain rate (mm/h)"
        )
    return maps


def write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    samples: Sequence[Sample] = (),
    overwrite: bool = False,
) -> Path:
    """Write a report folder (see the module docstring) atomically and return its path.

    Args:
        results: the dict returned by :func:`convlstm.evaluation.evaluate`.
        out_dir: the folder to create.
        samples: sequences to animate, e.g. from :func:`convlstm.evaluation.collect_samples`.
        overwrite: replace an existing ``out_dir``; otherwise ``FileExistsError`` is raised
            before anything is written.
    """
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True to replace it)")
    files = report_files(results, samples)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for relative, data in files.items():
            path = tmp / relative
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
    return out_dir
