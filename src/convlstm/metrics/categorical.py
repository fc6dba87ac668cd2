"""The contingency table of event forecasts, accumulated per threshold and lead time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self

import torch
from torch import Tensor

from convlstm.metrics._base import LeadTimeMetric
from convlstm.metrics.functional import (
    _FRAME_DIMS,
    HKO7_THRESHOLDS,
    _check_pair,
    _check_thresholds,
    categorical_scores,
)

__all__ = ["ContingencyTable", "contingency_counts"]


def contingency_counts(
    pred: Tensor,
    target: Tensor,
    thresholds: tuple[float, ...],
    *,
    inclusive: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """Hits, misses, false alarms and correct negatives of one batch, per threshold and lead
    time: ``(B, T, C, H, W)`` pairs -> int64 ``(K, T, 4)``. NaN pixels (in either) are left out,
    and so are pixels where ``mask`` (broadcastable to ``pred``; 1 valid, 0 no data) is 0.

    >>> import torch
    >>> pred = torch.tensor([0.0, 2.0, 0.0, 3.0]).reshape(1, 1, 1, 2, 2)
    >>> target = torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 1, 2, 2)
    >>> contingency_counts(pred, target, (2.0,)).tolist()
    [[[1, 1, 1, 1]]]
    """
    is_event = torch.ge if inclusive else torch.gt
    valid = ~(pred.isnan() | target.isnan())
    if mask is not None:
        valid = valid & (_checked_mask(mask, pred) > 0)
    dims = (0, *_FRAME_DIMS)
    n_valid = valid.sum(dim=dims)
    rows = []
    for threshold in thresholds:
        forecast = is_event(pred, threshold) & valid
        observed = is_event(target, threshold) & valid
        hits = (forecast & observed).sum(dim=dims)
        misses, false_alarms = observed.sum(dim=dims) - hits, forecast.sum(dim=dims) - hits
        negatives = n_valid - hits - misses - false_alarms
        rows.append(torch.stack((hits, misses, false_alarms, negatives), dim=-1))
    if not rows:
        return torch.zeros(0, pred.shape[1], 4, dtype=torch.int64, device=pred.device)
    return torch.stack(rows)


def _checked_mask(mask: Tensor, values: Tensor) -> Tensor:
    """``mask`` expanded to ``values``' shape, or ``ValueError`` naming both shapes."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    try:
        return mask.to(values.device).expand(values.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the forecasts' shape "
            f"{tuple(values.shape)} (B, T, C, H, W)"
        ) from None


class ContingencyTable(LeadTimeMetric):
    """Hits, misses, false alarms and correct negatives per threshold and lead time.

    A :class:`torchmetrics.Metric`: ``counts`` is an int64 state ``(K, T, 4)`` for ``K``
    thresholds and ``T`` lead times, the last axis ordered hits, misses, false alarms, correct
    negatives; ``T`` is set by the first :meth:`update`. An event is ``value >= threshold``
    (HKO-7), or ``value > threshold`` with ``inclusive=False`` (pysteps). Pixels where the
    prediction or the target is NaN are not counted. Tables merge exactly (``merge``,
    ``merge_state`` or ``+``), across batches and across processes: :meth:`compute` sums
    the counts of every rank of ``torch.distributed`` (torchmetrics' sync), :meth:`reduce_`
    does so in place.

    Args:
        thresholds: finite, distinct event thresholds (mm/h for rain rates).
        inclusive: count ``value >= threshold`` as an event; else ``value > threshold``.
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``process_group``).

    >>> import torch
    >>> from convlstm.metrics import ContingencyTable
    >>> target = torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 1, 2, 2)
    >>> pred = torch.tensor([0.0, 2.0, 0.0, 3.0]).reshape(1, 1, 1, 2, 2)
    >>> table = ContingencyTable(thresholds=(2.0,)).update(pred, target)
    >>> table.counts.tolist()  # [[[hits, misses, false alarms, correct negatives]]]
    [[[1, 1, 1, 1]]]
    >>> table.scores()["csi"]
    tensor([[0.3333]], dtype=torch.float64)
    """

    counts: Tensor

    def __init__(
        self,
        thresholds: Iterable[float] | float = HKO7_THRESHOLDS,
        *,
        inclusive: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.thresholds = _check_thresholds(thresholds)
        self.inclusive = bool(inclusive)
        self._add_sum_state("counts", (len(self.thresholds), 4), torch.int64)

    def __repr__(self) -> str:
        return (
            f"ContingencyTable(thresholds={self.thresholds}, inclusive={self.inclusive}, "
            f"lead_times={self.lead_times})"
        )

    def _config(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "inclusive": self.inclusive}

    @property
    def hits(self) -> Tensor:
        """Forecast and observed events, ``(K, T)``."""
        return self.counts[..., 0]

    @property
    def misses(self) -> Tensor:
        """Observed but not forecast events, ``(K, T)``."""
        return self.counts[..., 1]

    @property
    def false_alarms(self) -> Tensor:
        """Forecast but not observed events, ``(K, T)``."""
        return self.counts[..., 2]

    @property
    def correct_negatives(self) -> Tensor:
        """Neither forecast nor observed, ``(K, T)``."""
        return self.counts[..., 3]

    @torch.no_grad()
    def update(  # type: ignore[override]  # chains
        self, pred: Tensor, target: Tensor, mask: Tensor | None = None
    ) -> Self:
        """Add the counts of one batch; ``pred``, ``target``: ``(B, T, C, H, W)``; ``mask``
        (optional, broadcastable to them, e.g. ``(B, T, 1, H, W)``): pixels where it is 0
        (no data) are not counted.

        Returns:
            ``self``, for chaining.
        """
        _check_pair(pred, target)
        counts = contingency_counts(
            pred, target, self.thresholds, inclusive=self.inclusive, mask=mask
        )
        self._add_to_states({"counts": counts})
        return self

    def compute(self) -> dict[str, Tensor]:
        """Categorical scores per threshold and lead time, ``(K, T)`` each (see :meth:`scores`).

        Raises:
            RuntimeError: before any update.
        """
        if not self.lead_times:
            raise RuntimeError("ContingencyTable.compute() needs at least one update() first")
        return self.scores()

    def scores(self, *, overall: bool = False) -> dict[str, Tensor]:
        """Categorical scores of the local counts (see :func:`categorical_scores`).

        Args:
            overall: score the table pooled over lead times, ``(K,)`` per score,
                instead of each lead time, ``(K, T)``.

        Returns:
            dict of float64 tensors keyed by :data:`CATEGORICAL_SCORES`.

        >>> import torch
        >>> from convlstm.metrics import ContingencyTable
        >>> target = torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 2, 1, 1, 2)
        >>> table = ContingencyTable(0.5).update(torch.ones(1, 2, 1, 1, 2), target)
        >>> table.scores()["pod"], table.scores(overall=True)["far"]
        (tensor([[1., 1.]], dtype=torch.float64), tensor([0.2500], dtype=torch.float64))
        """
        counts = self.counts.sum(dim=1) if overall else self.counts
        return categorical_scores(*counts.cpu().unbind(dim=-1))

    def merge(self, other: Self) -> Self:
        """Add another table's counts (same thresholds and ``inclusive``) in place;
        ``a + b`` returns the sum as a new table.

        Returns:
            ``self``, for chaining.

        >>> import torch
        >>> from convlstm.metrics import ContingencyTable
        >>> rain = torch.rand(4, 2, 1, 8, 8) * 10
        >>> halves = [ContingencyTable().update(rain[i : i + 2], rain[i : i + 2]) for i in (0, 2)]
        >>> torch.equal((halves[0] + halves[1]).counts, ContingencyTable().update(rain, rain).counts)
        True
        """
        return super().merge(other)
