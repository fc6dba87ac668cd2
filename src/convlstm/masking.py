"""Losses and averages that ignore masked pixels (radar pixels without data).

``mask`` is a float or bool tensor broadcastable to the values, 1 (``True``) where a pixel
counts and 0 where it has no data, as returned by
:class:`~convlstm.data.RadarArchiveDataset` (``(T, 1, H, W)`` per item, ``(B, T, 1, H, W)``
batched; use ``mask[:, T_in:]`` for the targets). Weights between 0 and 1 are allowed.

Every function divides by the mask's sum over the pixels, so a frame that is half masked
counts its valid half, and masked pixels do not contribute to gradients.

>>> import torch
>>> from convlstm.masking import masked_mse
>>> prediction, target = torch.zeros(1, 1, 1, 2, 2), torch.ones(1, 1, 1, 2, 2)
>>> target[..., 0, 0] = 100.0  # a pixel without data, filled with a wrong value
>>> mask = torch.ones_like(target)
>>> mask[..., 0, 0] = 0
>>> masked_mse(prediction, target, mask).item()
1.0
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_fraction", "masked_mae", "masked_mean", "masked_mse", "masked_pinball"]


def _weights(values: Tensor, mask: Tensor | None) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    try:
        shape = torch.broadcast_shapes(mask.shape, values.shape)
    except RuntimeError:
        shape = None
    if shape != values.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the values' shape "
            f"{tuple(values.shape)}"
        )
    return mask.to(values.dtype).expand(values.shape)


def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over the pixels where ``mask`` is non-zero (weighted by ``mask``).

    Args:
        values: any shape.
        mask: broadcastable to ``values``; ``None`` means every pixel counts.

    Returns:
        A scalar tensor; ``NaN`` when every pixel is masked (nothing to average).
        Masked values may be anything finite, and non-finite masked values are ignored too.

    >>> import torch
    >>> masked_mean(torch.tensor([1.0, 3.0, float("nan")]), torch.tensor([1.0, 1.0, 0.0])).item()
    2.0
    """
    weights = _weights(values, mask)
    if weights is None:
        return values.mean()
    safe = torch.where(weights > 0, values, torch.zeros_like(values))
    return (safe * weights).sum() / weights.sum()


def _difference(prediction: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """``prediction - target``, 0 at masked pixels (so non-finite fill values there give no NaN
    gradient)."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    difference = prediction - target
    weights = _weights(difference, mask)
    if weights is None:
        return difference
    return torch.where(weights > 0, difference, torch.zeros_like(difference))


def masked_mse(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over the valid pixels: ``sum(m (p - t)^2) / sum(m)``.

    Args:
        prediction, target: the same shape, e.g. ``(B, T_out, C, H, W)``.
        mask: broadcastable to them, e.g. ``(B, T_out, 1, H, W)``.

    Returns:
        A scalar tensor (differentiable; masked pixels get zero gradient).
    """
    return masked_mean(_difference(prediction, target, mask) ** 2, mask)


def masked_mae(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error over the valid pixels: ``sum(m |p - t|) / sum(m)``.

    Args:
        prediction, target: the same shape.
        mask: broadcastable to them.

    Returns:
        A scalar tensor.
    """
    return masked_mean(_difference(prediction, target, mask).abs(), mask)


def masked_pinball(
    prediction: Tensor, target: Tensor, quantile: float, mask: Tensor | None = None
) -> Tensor:
    """Pinball (quantile) loss over the valid pixels: the mean of ``max(q d, (q - 1) d)``
    with ``d = target - prediction`` and ``q = quantile``; it is least for the ``q``-quantile
    of the target's distribution (``q = 0.5``: half the absolute error, least at the median).

    Args:
        prediction, target: the same shape.
        quantile: ``q`` in (0, 1).
        mask: broadcastable to them.

    Returns:
        A scalar tensor.

    >>> import torch
    >>> round(masked_pinball(torch.zeros(2), torch.tensor([1.0, -1.0]), 0.9).item(), 4)
    0.5
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    under = -_difference(prediction, target, mask)  # > 0 where the forecast is too low
    return masked_mean(torch.maximum(quantile * under, (quantile - 1) * under), mask)


def masked_fraction(mask: Tensor) -> float:
    """Fraction of masked pixels: ``1 - mean(mask)`` for a 0/1 mask.

    >>> import torch
    >>> masked_fraction(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    0.25
    """
    return 1.0 - float(mask.to(torch.float64).mean())
