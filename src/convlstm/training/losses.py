"""The training losses of ``convlstm train`` (``optim.loss``), shared with the Lightning module
(:class:`convlstm.lightning.ForecastModule`) so that the two cannot drift apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from convlstm.config import LOSSES
from convlstm.masking import masked_mae, masked_mean, masked_mse

__all__ = ["forecast_loss"]


def forecast_loss(kind: str, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """The training loss ``optim.loss`` between a forecast and its target, in float32.

    ``mse`` is the mean squared error over every element; ``mse+l1`` adds the mean absolute
    error; ``bce`` is the binary cross-entropy of predictions clamped to ``[1e-6, 1 - 1e-6]``
    (for targets in [0, 1]), written out so that a NaN reaches the ``run.nonfinite`` policy
    instead of raising.

    Args:
        kind: one of :data:`convlstm.config.LOSSES` (``mse``, ``mse+l1``, ``bce``).
        pred: the forecast, any shape (``(B, T, C, H, W)`` in training), any float dtype.
        target: the truth, ``pred``'s shape.
        mask: 1 where the target has data, 0 where it has none (broadcastable to ``target``,
            e.g. ``(B, T, 1, H, W)``), or ``None``: the loss is then the mean over the valid
            pixels only, and pixels without data get no gradient (:mod:`convlstm.masking`).

    Returns:
        a scalar float32 tensor.

    >>> pred, target = torch.full((1, 2, 1, 2, 2), 0.5), torch.ones(1, 2, 1, 2, 2)
    >>> [round(float(forecast_loss(kind, pred, target)), 4) for kind in LOSSES]
    [0.25, 0.75, 0.6931]
    """
    if kind not in LOSSES:
        raise ValueError(f"kind must be one of {', '.join(LOSSES)} (optim.loss), got {kind!r}")
    pred = pred.float()
    if mask is not None:
        if kind == "bce":
            p = pred.clamp(1e-6, 1 - 1e-6)
            t = torch.where(mask > 0, target, p.detach())  # no data: no loss, no gradient
            return masked_mean(-(t * torch.log(p) + (1 - t) * torch.log1p(-p)), mask)
        loss = masked_mse(pred, target, mask)
        return loss + masked_mae(pred, target, mask) if kind == "mse+l1" else loss
    if kind == "bce":
        p = pred.clamp(1e-6, 1 - 1e-6)
        return -(target * torch.log(p) + (1 - target) * torch.log1p(-p)).mean()
    loss = F.mse_loss(pred, target)
    return loss + F.l1_loss(pred, target) if kind == "mse+l1" else loss
