"""The channels-last memory format of 2-D state tensors: conversion and test.

Imports nothing else of the package; the cells, the plan, the gate kernels and the whole-layer
node all use these two helpers.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["is_channels_last", "to_channels_last"]


def to_channels_last(t: Tensor) -> Tensor:
    """``t`` ``(N, C, H, W)`` in the channels-last memory format (no copy if it already is).

    A one-channel tensor is both contiguous and channels-last, and convolutions then take the
    standard layout: it gets channels-last strides (a view of the same memory). oneDNN's
    channels-last kernels then run such a one-channel-input convolution's forward pass and
    weight gradient faster (figures in ``benchmarks/README.md``), and its output stays
    channels-last.
    """
    t = t.contiguous(memory_format=torch.channels_last)
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()  # exporters: no as_strided
    if t.shape[1] == 1 and t.stride(1) != 1 and not tracing:
        h, w = t.shape[2:]
        t = t.as_strided(t.shape, (h * w, 1, w, 1), t.storage_offset())
    return t


def is_channels_last(t: Tensor) -> bool:
    """Whether the dense ``t`` ``(N, C, H, W)`` is laid out channels-last: its channels adjacent
    in memory, one-channel tensors with :func:`to_channels_last`'s strides included."""
    return t.dim() == 4 and t.stride(1) == 1 and t.is_contiguous(memory_format=torch.channels_last)
