"""Every forecast metric at once, streamed per lead time: :class:`ForecastMetrics`, and
:func:`score_forecasts` for one batch."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Self

import torch
from torch import Tensor

from convlstm.metrics._base import LeadTimeMetric
from convlstm.metrics.categorical import ContingencyTable, _checked_mask, contingency_counts
from convlstm.metrics.functional import (
    CATEGORICAL_SCORES,
    DEFAULT_CLIP,
    Clip,
    _check_clip,
    _check_data_range,
    _check_thresholds,
    _frame_psnr,
    _frame_ssim,
    _frame_sums,
    _label,
    _prepare,
    _ssim_size_problem,
    categorical_scores,
)

__all__ = ["ForecastMetrics", "evaluate", "score_forecasts"]

_SUM_ROWS = 4  # squared error, absolute error, SSIM, PSNR (summed over frames)
_COUNT_ROWS = 3  # frames, values (pixels x channels), frames scored by SSIM


class ForecastMetrics(LeadTimeMetric):
    """Streaming accumulator of every metric, per lead time and overall.

    A :class:`torchmetrics.Metric`: :meth:`update` adds a batch's per-lead-time sums (float64
    state ``sums``) and counts (int64 states ``counts`` and, with thresholds, ``table``);
    memory does not depend on how much data is seen. The states stay on the metric's device
    (the CPU unless moved with ``.to(device)``) whatever the device of the inputs.
    :meth:`compute` returns plain Python floats and lists:
    ``{name: {"overall": float, "per_lead_time": [float] * T}}`` for the names in
    :data:`CONTINUOUS_METRICS` and, when ``thresholds`` is given, ``"<score>@<threshold>"``
    for the scores in :data:`CATEGORICAL_SCORES` (e.g. ``"csi@0.5"``). NaN (undefined
    score) and ``inf`` (PSNR of a perfect frame) stay floats: ``json.dumps`` writes them
    as ``NaN`` and ``Infinity``.

    Frames smaller than SSIM's window (6x6 pixels) are scored without SSIM: a warning says
    so, ``"ssim"`` is absent from :meth:`compute`'s result and :attr:`skipped` gives the
    reason.

    Under ``torch.distributed`` :meth:`compute` gives the metrics of all ranks' data on every
    rank (torchmetrics syncs the states, then restores the local ones); every rank must
    call it. States merge exactly: ``a.merge(b)``, ``a.merge_state(b)`` or ``a + b``.

    Args:
        data_range: value range for SSIM and PSNR (``1`` for images in ``[0, 1]``).
        clip: ``(low, high)`` range predictions are clipped to before the continuous
            metrics, or ``None`` (radar data in mm/h).
        thresholds: event thresholds for categorical scores, or ``None`` for none. Pass
            :data:`HKO7_THRESHOLDS` for rain rates in mm/h.
        inclusive: an event is ``value >= threshold``; ``False`` gives ``>``.
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``process_group``).

    >>> import torch
    >>> from convlstm.metrics import ForecastMetrics
    >>> metrics = ForecastMetrics()
    >>> _ = metrics.update(torch.full((4, 2, 1, 8, 8), 0.5), torch.zeros(4, 2, 1, 8, 8))
    >>> result = metrics.compute()
    >>> result["mse_pixel"]
    {'overall': 0.25, 'per_lead_time': [0.25, 0.25]}
    >>> round(result["psnr"]["overall"], 3)
    6.021
    """

    sums: Tensor
    counts: Tensor
    table: Tensor

    def __init__(
        self,
        *,
        data_range: float = 1.0,
        clip: Clip = DEFAULT_CLIP,
        thresholds: Iterable[float] | float | None = None,
        inclusive: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_range = _check_data_range(data_range)
        self.clip = _check_clip(clip)
        self.thresholds = None if thresholds is None else _check_thresholds(thresholds)
        self.inclusive = bool(inclusive)
        self._add_sum_state("sums", (_SUM_ROWS,), torch.float64)
        self._add_sum_state("counts", (_COUNT_ROWS,), torch.int64)
        self._add_sum_state("table", (len(self.thresholds or ()), 4), torch.int64)
        self._ssim_problem: str | None = None

    def _config(self) -> dict[str, Any]:
        return {
            "data_range": self.data_range,
            "clip": None if self.clip is None else list(self.clip),
            "contingency": None
            if self.thresholds is None
            else {"thresholds": list(self.thresholds), "inclusive": self.inclusive},
        }

    @property
    def num_sequences(self) -> int:
        """Number of sequences seen so far."""
        return int(self.counts[0, 0]) if self.lead_times else 0

    @property
    def contingency(self) -> ContingencyTable | None:
        """A copy of the contingency table of the thresholds (``None`` without thresholds)."""
        if self.thresholds is None:
            return None
        table = ContingencyTable(self.thresholds, inclusive=self.inclusive)
        if self.lead_times:
            table.merge_state({"counts": self.table})
        return table

    @property
    def skipped(self) -> dict[str, str]:
        """Metrics left out of :meth:`compute`, with the reason (e.g. SSIM on tiny frames)."""
        counts = self.counts
        if self.lead_times and bool((counts[2] < counts[0]).any()):
            reason = self._ssim_problem or "some frames were too small for SSIM's window"
            return {"ssim": reason}
        return {}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        legacy = state_dict.pop(prefix + "contingency", ())
        if legacy != ():  # saved before ForecastMetrics was a torchmetrics Metric
            counts = torch.as_tensor(state_dict[prefix + "counts"])
            if counts.shape[0] == _COUNT_ROWS - 1:  # SSIM scored every frame then
                state_dict[prefix + "counts"] = torch.cat((counts, counts[:1]))
            state_dict[prefix + "table"] = (
                torch.zeros(0, counts.shape[1], 4, dtype=torch.int64)
                if legacy is None
                else legacy["counts"]
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def update(  # type: ignore[override]  # chains
        self, pred: Tensor, target: Tensor, mask: Tensor | None = None
    ) -> Self:
        """Add one batch; ``pred``, ``target``: ``(B, T, C, H, W)``, ``T`` fixed across batches.

        ``mask`` (optional, broadcastable to them, e.g. ``(B, T, 1, H, W)``; 1 valid, 0 no
        data) leaves the masked pixels out of every metric, whatever their values: errors are
        summed over the valid pixels (``*_frame``: per frame, ``*_pixel``: divided by the
        number of valid pixels), PSNR uses the valid pixels' MSE, SSIM sees 0 in both fields
        at masked pixels, and the contingency table counts valid pixels only.

        Returns:
            ``self``, for chaining.
        """
        clipped, target_ = _prepare(pred, target, self.clip)
        valid = None
        if mask is not None:
            valid = _checked_mask(mask, clipped) > 0
            zero = torch.zeros((), dtype=clipped.dtype, device=clipped.device)
            clipped, target_ = torch.where(valid, clipped, zero), torch.where(valid, target_, zero)
        if self.lead_times and pred.shape[1] != self.lead_times:
            raise ValueError(
                f"expected {self.lead_times} lead times (T) as in earlier updates, "
                f"got pred of shape {tuple(pred.shape)}"
            )
        batch, lead_times = pred.shape[:2]
        problem = _ssim_size_problem(clipped)
        if problem is None:
            ssim = _frame_ssim(clipped, target_, self.data_range)
        else:
            if problem != self._ssim_problem:  # once per frame size
                warnings.warn(f"{problem}: SSIM is left out of the metrics", stacklevel=4)
                self._ssim_problem = problem
            ssim = torch.zeros(batch, lead_times, dtype=torch.float64, device=pred.device)
        diff = clipped - target_
        squared = _frame_sums(diff.square())
        if valid is None:
            psnr = _frame_psnr(clipped, target_, self.data_range)
            pixels = torch.full((lead_times,), batch * pred[0, 0].numel(), dtype=torch.int64)
        else:
            frame_pixels = _frame_sums(valid.to(torch.float64))
            mse = squared / frame_pixels.clamp(min=1)  # a frame without data: no error
            psnr = 10 * torch.log10(self.data_range**2 / mse)
            pixels = frame_pixels.sum(dim=0).round().to(torch.int64).cpu()
        frame_values = torch.stack((squared, _frame_sums(diff.abs()), ssim, psnr))
        counts = torch.stack(
            (
                torch.full((lead_times,), batch, dtype=torch.int64),
                pixels,
                torch.full((lead_times,), 0 if problem else batch, dtype=torch.int64),
            )
        )
        increments = {"sums": frame_values.sum(dim=1), "counts": counts}
        if self.thresholds is not None:
            increments["table"] = contingency_counts(
                pred, target, self.thresholds, inclusive=self.inclusive, mask=mask
            )
        self._add_to_states(increments)
        return self

    def compute(self) -> dict[str, dict[str, Any]]:
        """All metrics as ``{name: {"overall": float, "per_lead_time": list[float]}}``.

        Raises:
            RuntimeError: before any update.
        """
        if not self.lead_times:
            raise RuntimeError("ForecastMetrics.compute() needs at least one update() first")
        squared, absolute, ssim_sum, psnr_sum = self.sums.cpu()
        frames, values, ssim_frames = self.counts.cpu().double()
        ratios = {
            "mse_frame": (squared, frames),
            "mae_frame": (absolute, frames),
            "mse_pixel": (squared, values),
            "mae_pixel": (absolute, values),
            "ssim": (ssim_sum, ssim_frames),
            "psnr": (psnr_sum, frames),
        }
        if "ssim" in self.skipped:
            del ratios["ssim"]
        result = {
            name: {
                "overall": float(numerator.sum() / denominator.sum()),
                "per_lead_time": (numerator / denominator).tolist(),
            }
            for name, (numerator, denominator) in ratios.items()
        }
        if self.thresholds is not None:
            table = self.table.cpu()
            per_lead_time = categorical_scores(*table.unbind(dim=-1))
            overall = categorical_scores(*table.sum(dim=1).unbind(dim=-1))
            for name in CATEGORICAL_SCORES:
                for k, threshold in enumerate(self.thresholds):
                    result[f"{name}@{_label(threshold)}"] = {
                        "overall": float(overall[name][k]),
                        "per_lead_time": per_lead_time[name][k].tolist(),
                    }
        return result

    def merge(self, other: Self) -> Self:
        """Add another accumulator's state (same settings) in place; ``a + b`` returns the
        sum as a new accumulator.

        Returns:
            ``self``, for chaining.

        >>> import torch
        >>> from convlstm.metrics import ForecastMetrics
        >>> first = ForecastMetrics().update(torch.zeros(1, 2, 1, 8, 8), torch.ones(1, 2, 1, 8, 8))
        >>> second = ForecastMetrics().update(torch.ones(3, 2, 1, 8, 8), torch.ones(3, 2, 1, 8, 8))
        >>> merged = first.merge(second)
        >>> merged.num_sequences, merged.compute()["mae_frame"]["overall"]
        (4, 16.0)
        """
        if isinstance(other, ForecastMetrics) and self._ssim_problem is None:
            self._ssim_problem = other._ssim_problem
        return super().merge(other)


def score_forecasts(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    clip: Clip = DEFAULT_CLIP,
    thresholds: Iterable[float] | float | None = None,
    inclusive: bool = True,
) -> dict[str, dict[str, Any]]:
    """All metrics of one ``(B, T, C, H, W)`` pair at once (see :class:`ForecastMetrics`).

    >>> import torch
    >>> from convlstm.metrics import score_forecasts
    >>> rain = torch.tensor([0.0, 1.0, 5.0, 12.0]).repeat(1, 2, 1, 8, 2)  # (1, 2, 1, 8, 8)
    >>> result = score_forecasts(rain, rain, data_range=12.0, clip=None, thresholds=(2.0, 10.0))
    >>> result["csi@2"], result["mse_frame"]["overall"]
    ({'overall': 1.0, 'per_lead_time': [1.0, 1.0]}, 0.0)
    """
    metrics = ForecastMetrics(
        data_range=data_range, clip=clip, thresholds=thresholds, inclusive=inclusive
    )
    return metrics.update(pred, target).compute()


def evaluate(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    clip: Clip = DEFAULT_CLIP,
    thresholds: Iterable[float] | float | None = None,
    inclusive: bool = True,
) -> dict[str, dict[str, Any]]:
    """Deprecated alias of :func:`score_forecasts` (not to be confused with
    :func:`convlstm.evaluation.evaluate`, which evaluates a checkpoint on a dataset)."""
    warnings.warn(
        "convlstm.metrics.evaluate is deprecated; use convlstm.metrics.score_forecasts",
        DeprecationWarning,
        stacklevel=2,
    )
    return score_forecasts(
        pred, target, data_range=data_range, clip=clip, thresholds=thresholds, inclusive=inclusive
    )
