"""The arithmetic precision of training: ``run.precision`` resolved for the device, and the
autocast context that applies it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["autocast", "resolve_precision"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA devices that support it and on CPUs with AMX-BF16 (where
    oneDNN's bf16 convolutions measured faster than fp32), else ``fp32``.

    >>> resolve_precision("fp32", torch.device("cpu"))
    'fp32'
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.cpu._is_amx_tile_supported() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``precision`` is ``bf16``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
