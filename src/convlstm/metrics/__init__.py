"""Forecast verification metrics: continuous (MSE, MAE, SSIM, PSNR) and categorical (CSI, ...).

Every metric takes a prediction and a target of the same shape ``(B, T, C, H, W)``:
batch-first, ``T`` indexes lead times. Results come per lead time (length ``T``) and
overall (pooled over all lead times).

Conventions
-----------
* **MSE / MAE per frame** (``mse_frame``, ``mae_frame``): the error is summed over the
  pixels and channels of a frame, then averaged over frames and sequences. This is the
  Moving MNIST literature's convention (PredRNN, OpenSTL), so the numbers are comparable
  with published tables. **Per pixel** (``mse_pixel``, ``mae_pixel``) is the plain mean.
* **SSIM and PSNR** are torchmetrics' definitions, computed per frame (each ``(C, H, W)``
  frame is one image) and averaged over frames, with ``data_range=1`` by default. SSIM
  uses torchmetrics' defaults: an 11×11 Gaussian window with sigma 1.5, averaged over the
  whole frame (reflect-padded), so frames need at least 6×6 pixels (smaller frames are
  scored without SSIM by :class:`ForecastMetrics`, with a warning); it is computed here
  with the window's two 1-D passes as matrix products (equal to torchmetrics' up to
  rounding, and 5-10x faster on CPUs). PSNR comes from torchmetrics; PSNR of a
  perfect frame is ``+inf``.
* **Clipping**: predictions (never targets) are clipped to ``clip=(0, 1)`` by default
  before every continuous metric, as in PredRNN (which clips before MSE and SSIM).
  OpenSTL does not clip before MSE/MAE, and its SSIM uses the constants of data range
  255 on ``[0, 1]`` data, which inflates SSIM; its numbers are therefore not directly
  comparable. For radar data in mm/h pass your own ``data_range`` and ``clip=None``.
* **Categorical** scores (CSI, POD, FAR, HSS, frequency bias) come from a
  :class:`ContingencyTable` computed on raw predictions (no clipping), at thresholds in
  mm/h, by default those of the HKO-7 benchmark (:data:`HKO7_THRESHOLDS`). An event is
  ``value >= threshold`` (HKO-7) by default; ``inclusive=False`` gives ``value >
  threshold`` (pysteps). Pixels where the prediction or the target is NaN are left out
  of the table. A score whose denominator is zero is NaN. Overall scores are those of
  the table pooled over all lead times (not the mean of per-lead-time scores).

Streaming and distributed evaluation
------------------------------------
:class:`ForecastMetrics` and :class:`ContingencyTable` are :class:`torchmetrics.Metric` objects that
keep running sums per lead time (float64 sums, int64 counts), so their memory does not grow
with the data. Because SSIM and PSNR are per-frame averages (a sum of per-frame values and a
frame count), every metric streams, merges (``merge``, ``merge_state``, ``+``) and syncs
across processes exactly: under ``torch.distributed``, :meth:`ForecastMetrics.compute` gives
the metrics of all ranks' data on every rank.

Modules: :mod:`~convlstm.metrics.functional` (the plain functions :func:`mse`, :func:`mae`,
:func:`ssim`, :func:`psnr`, :func:`categorical_scores`), :mod:`~convlstm.metrics.categorical`
(:class:`ContingencyTable`) and :mod:`~convlstm.metrics.forecast` (:class:`ForecastMetrics`,
:func:`score_forecasts`).

>>> import torch
>>> from convlstm.metrics import ForecastMetrics
>>> metrics = ForecastMetrics(thresholds=(0.5,))
>>> target = torch.ones(2, 3, 1, 8, 8)
>>> for pred in (torch.zeros(2, 3, 1, 8, 8), torch.ones(2, 3, 1, 8, 8)):
...     _ = metrics.update(pred, target)
>>> result = metrics.compute()
>>> result["mse_frame"]
{'overall': 32.0, 'per_lead_time': [32.0, 32.0, 32.0]}
>>> result["pod@0.5"]["overall"]
0.5
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from convlstm.metrics.functional import (
    CATEGORICAL_SCORES,
    CONTINUOUS_METRICS,
    DEFAULT_CLIP,
    HKO7_THRESHOLDS,
    categorical_scores,
    mae,
    mse,
    psnr,
    ssim,
)

if TYPE_CHECKING:
    from convlstm.metrics.categorical import ContingencyTable
    from convlstm.metrics.forecast import ForecastMetrics, evaluate, score_forecasts

# The accumulating metrics are torchmetrics Metrics, and importing torchmetrics imports
# matplotlib where it is installed: they load on first use, so that importing the functions
# above (and convlstm.evaluation, which imports this package) stays light.
_LAZY = {
    "ContingencyTable": "convlstm.metrics.categorical",
    "ForecastMetrics": "convlstm.metrics.forecast",
    "evaluate": "convlstm.metrics.forecast",
    "score_forecasts": "convlstm.metrics.forecast",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'convlstm.metrics' has no attribute {name!r}")


__all__ = [
    "CATEGORICAL_SCORES",
    "CONTINUOUS_METRICS",
    "DEFAULT_CLIP",
    "HKO7_THRESHOLDS",
    "ContingencyTable",
    "ForecastMetrics",
    "categorical_scores",
    "evaluate",
    "mae",
    "mse",
    "psnr",
    "score_forecasts",
    "ssim",
]
