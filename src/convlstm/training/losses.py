"""The training losses of ``convlstm train`` (``optim.loss``) and its validation metric, shared
with the Lightning module (:class:`convlstm.lightning.ForecastModule`) so that the two cannot
drift apart."""

from __future__ import annotations

import torch
from torch import Tensor

from convlstm.config import LOSSES, OptimConfig
from convlstm.data.transforms import RainTransform
from convlstm.masking import masked_mae, masked_mean, masked_mse, masked_pinball
from convlstm.metrics.functional import ssim

__all__ = ["forecast_loss", "rain_weights", "training_loss", "validation_sums"]


def forecast_loss(
    kind: str, pred: Tensor, target: Tensor, mask: Tensor | None = None, *, quantile: float = 0.5
) -> Tensor:
    """The training loss ``optim.loss`` between a forecast and its target, in float32.

    ``mse`` is the mean squared error over every element, ``l1`` the mean absolute error
    (its minimiser is the median, so uncertain rain edges stay where they most likely are
    instead of being averaged away), ``mse+l1`` their sum; ``quantile`` the pinball loss
    ``max(q d, (q - 1) d)`` of ``d = target - pred`` at ``quantile`` ``q`` (its minimiser is the
    ``q``-quantile; ``q = 0.5`` is half the ``l1`` loss, ``q > 0.5`` forecasts an event where
    its probability exceeds ``1 - q``, which balances misses against false alarms for rare
    events: quantile regression); ``bce`` is the binary
    cross-entropy of predictions clamped to ``[1e-6, 1 - 1e-6]`` (for targets in [0, 1]),
    written out so that a NaN reaches the ``run.nonfinite`` policy
    instead of raising.

    Args:
        kind: one of :data:`convlstm.config.LOSSES` (``mse``, ``l1``, ``mse+l1``, ``quantile``,
            ``bce``).
        pred: the forecast, any shape (``(B, T, C, H, W)`` in training), any float dtype.
        target: the truth, ``pred``'s shape.
        mask: 1 where the target has data, 0 where it has none (broadcastable to ``target``,
            e.g. ``(B, T, 1, H, W)``), or ``None``: the loss is then the mean over the valid
            pixels only, and pixels without data get no gradient (:mod:`convlstm.masking`).
        quantile: ``q`` in (0, 1) of the ``quantile`` loss (``optim.quantile``).

    Returns:
        a scalar float32 tensor.

    >>> pred, target = torch.full((1, 2, 1, 2, 2), 0.5), torch.ones(1, 2, 1, 2, 2)
    >>> [round(float(forecast_loss(kind, pred, target)), 4) for kind in LOSSES]
    [0.25, 0.5, 0.75, 0.25, 0.6931]
    >>> round(float(forecast_loss("quantile", pred, target, quantile=0.9)), 4)  # 0.9 * 0.5
    0.45
    """
    if kind not in LOSSES:
        raise ValueError(f"kind must be one of {', '.join(LOSSES)} (optim.loss), got {kind!r}")
    pred = pred.float()
    if kind == "bce":
        p = pred.clamp(1e-6, 1 - 1e-6)
        # no data: the target is the prediction itself, so no loss and no gradient
        t = target if mask is None else torch.where(mask > 0, target, p.detach())
        return masked_mean(-(t * torch.log(p) + (1 - t) * torch.log1p(-p)), mask)
    if kind == "quantile":
        return masked_pinball(pred, target, quantile, mask)
    first, *others = (
        (masked_mse if term == "mse" else masked_mae)(pred, target, mask)
        for term in kind.split("+")
    )
    return first + sum(others) if others else first


def rain_weights(
    frames: Tensor, levels: list[list[float]], transform: RainTransform | None
) -> Tensor:
    """Per-pixel loss weights by rain intensity (``optim.rain_weights``): the weight of the
    highest ``[threshold_mm_h, weight]`` level the pixel's rain rate reaches, 1 below the first.

    Args:
        frames: true frames, any shape, in the units ``transform`` maps mm/h to.
        levels: ``[[threshold_mm_h, weight], ...]``, thresholds rising.
        transform: the data's rain transform (:func:`convlstm.units.data_transform`); ``None``
            means the data are not rain rates, which is an error.

    Returns:
        float32 tensor of ``frames``' shape.

    >>> frames = RainTransform("log")(torch.tensor([0.0, 1.0, 2.0, 7.0, 40.0]))
    >>> rain_weights(frames, [[2, 2], [5, 5], [10, 10], [30, 30]], RainTransform("log")).tolist()
    [1.0, 1.0, 2.0, 5.0, 30.0]
    """
    if transform is None:
        raise ValueError(
            "optim.rain_weights needs rain data (a dataset in mm/h or a rain transform such as "
            "radar's 'log'), got data without a rain transform"
        )
    weights = torch.ones_like(frames, dtype=torch.float32)
    for threshold, weight in levels:
        # the transform is monotonic, so comparing in its units compares the rain rates
        level = float(transform(torch.tensor(threshold, dtype=torch.float64)))
        weights = torch.where(frames >= level, weight, weights)
    return weights


def training_loss(
    optim: OptimConfig,
    pred: Tensor,
    inputs: Tensor,
    targets: Tensor,
    mask: Tensor | None = None,
    *,
    transform: RainTransform | None = None,
) -> Tensor:
    """The loss of one training batch, as ``convlstm train`` and the Lightning module compute
    it: :func:`forecast_loss` (``optim.loss``, ``optim.quantile``) of the forecast, plus
    ``optim.input_loss_weight`` times that of the one-step-ahead predictions of the input
    frames when the weight is > 0; pixels weighted by :func:`rain_weights` when
    ``optim.rain_weights`` is set; plus ``optim.ssim_weight`` times ``1 - SSIM`` of the
    forecast frames when that weight is > 0 (not with a ``mask``).

    Args:
        optim: the training configuration's ``[optim]`` section.
        pred: the model's output ``(B, horizon, C, H, W)``, or with a weight > 0
            (``predict_inputs=True``) ``(B, T_in - 1 + horizon, C, H, W)``: the predictions of
            input frames 2 to ``T_in``, then the forecast.
        inputs: ``(B, T_in, C, H, W)``.
        targets: ``(B, horizon, C, H, W)``.
        mask: ``(B, T_in + horizon, C, H, W)``, 1 where the data have a value, or ``None``.
        transform: the data's rain transform, needed by ``optim.rain_weights``.

    Returns:
        a scalar float32 tensor.
    """
    seen = inputs.shape[1] - 1
    weight = optim.input_loss_weight

    def loss(part: Tensor, truth: Tensor, frames: slice) -> Tensor:
        part_mask = None if mask is None else mask[:, frames]
        if optim.rain_weights:
            weights = rain_weights(truth, optim.rain_weights, transform)
            part_mask = weights if part_mask is None else weights * part_mask
        return forecast_loss(optim.loss, part, truth, mask=part_mask, quantile=optim.quantile)

    forecast = pred[:, seen:] if weight else pred
    total = loss(forecast, targets, slice(seen + 1, None))
    if weight:
        total = total + weight * loss(pred[:, :seen], inputs[:, 1:], slice(1, seen + 1))
    if optim.ssim_weight:
        if mask is not None:
            raise ValueError("optim.ssim_weight > 0 cannot skip masked pixels; set it to 0")
        with torch.autocast(pred.device.type, enabled=False):  # SSIM's matmuls in float32
            similarity = ssim(forecast, targets, data_range=1.0, clip=None)  # >= float32
        total = total + optim.ssim_weight * (1 - similarity.float().mean())
    return total


def validation_sums(pred: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """The sums of one validation batch behind the validation MSE per frame
    (``val_mse_frame``), as ``convlstm train`` and the Lightning module compute them: the
    squared error summed over the target pixels that have data, and the number of frames. The
    metric is the first sum over the second, both summed over all batches (and processes).

    Args:
        pred: the forecast ``(B, T_out, C, H, W)``, any float dtype.
        targets: ``(B, T_out, C, H, W)``, on ``pred``'s device.
        mask: the windows' mask ``(B, T_in + T_out, C or 1, H, W)`` (1 where the data have a
            value; its last ``T_out`` frames are the targets'), or ``None``: masked pixels
            count no error, whatever their values.

    Returns:
        ``[squared error, frames]``, float64, on ``pred``'s device.

    >>> pred, targets = torch.zeros(1, 2, 1, 2, 2), torch.ones(1, 2, 1, 2, 2)
    >>> mask = torch.ones(1, 3, 1, 2, 2)
    >>> mask[:, 2, :, 0] = 0  # the last target frame has data in its second row only
    >>> validation_sums(pred, targets, mask).tolist()
    [6.0, 2.0]
    """
    error = (pred.float() - targets.float()).square()
    if mask is not None:
        valid = mask[:, mask.shape[1] - targets.shape[1] :].to(error.device) > 0
        error = torch.where(valid, error, torch.zeros_like(error))
    frames = targets.shape[0] * targets.shape[1]
    return torch.stack((error.sum().double(), error.new_tensor(frames, dtype=torch.float64)))
