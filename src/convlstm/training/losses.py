"""The training losses of ``convlstm train`` (``optim.loss``), shared with the Lightning module
(:class:`convlstm.lightning.ForecastModule`) so that the two cannot drift apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from convlstm.config import LOSSES

__all__ = ["forecast_loss"]


def forecast_loss(kind: str, pred: Tensor, target: Tensor) -> Tensor:
    """The training loss ``optim.loss`` between a forecast and its target, in float32.

    ``mse`` is the mean squared error over every element; ``mse+l1`` adds the mean absolute
    error; ``bce`` is the binary cross-entropy of predictions clamped to ``[1e-6, 1 - 1e-6]``
    (for targets in [0, 1]), written out so that a NaN reaches the ``run.nonfinite`` policy
    instead of raising.

    Args:
        kind: one of :data:`convlstm.config.LOSSES` (``mse``, ``mse+l1``, ``bce``).
        pred: the forecast, any shape (``(B, T, C, H, W)`` in training), any float dtype.
        target: the truth, ``pred``'s shape.

    Returns:
        a scalar float32 tensor.

    >>> pred, target = torch.full((1, 2, 1, 2, 2), 0.5), torch.ones(1, 2, 1, 2, 2)
    >>> [round(float(forecast_loss(kind, pred, target)), 4) for kind in LOSSES]
    [0.25, 0.75, 0.6931]
    """
    if kind not in LOSSES:
        raise ValueError(f"kind must be one of {', '.join(LOSSES)} (optim.loss), got {kind!r}")
    pred = pred.float()
    if kind == "bce":
        p = pred.clamp(1e-6, 1 - 1e-6)
        return -(target * torch.log(p) + (1 - target) * torch.log1p(-p)).mean()
    loss = F.mse_loss(pred, target)
    return loss + F.l1_loss(pred, target) if kind == "mse+l1" else loss
