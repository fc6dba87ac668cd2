"""Per-shape choices of how a layer runs: memory format and how the input convolution is batched.

The rules come from ``benchmarks/`` measurements (``benchmarks/README.md``); every choice gives
the same function, and :func:`convlstm.fast.settings` can force each one.

* **channels-last** (2-D only): oneDNN's and cuDNN's fastest convolutions use NHWC. On CPU it
  pays once a step has enough work to amortise the layout's copies; for the tiny tensors of
  streaming inference the standard layout is faster. On CUDA in fp32 it paid only for wide
  layers: on an H200 (cuDNN 9.19, fwd+bwd, B=8, T=10, k=5, 16×16) channels-last ran 0.94× and
  0.92× the standard layout's speed at 32 and 64 hidden channels and 1.07× at 128, and 0.93× at
  B=16, 1×64×64 in, hidden 64, k=3. Under autocast (bf16/fp16 tensor cores) it is kept.
* **joint input convolution** (CPU only): for a single step (streaming) there is nothing to
  batch, so convolving ``[x_t, h]`` with ``[W_ih, W_hh]`` in one call beats two calls. For
  sequences the batched input convolution is kept even with one input channel: on an idle
  2-core Xeon (oneDNN with AMX) the joint convolution was 0.74-0.78x its speed at ``w64``
  (B=8, T=10, 1x64x64 in, hidden 64-64, fwd+bwd) and no faster at 4 input channels, although
  1-channel convolutions are slow on some CPUs (an AVX-512 EPYC measured the opposite): force
  ``input_conv="joint"`` with :func:`convlstm.fast.settings` where it wins.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from convlstm import _settings

if TYPE_CHECKING:
    from convlstm.cells import ConvLSTMCell

__all__ = [
    "CHANNELS_LAST_MIN_WORK",
    "CUDA_CHANNELS_LAST_MIN_HIDDEN",
    "is_channels_last",
    "to_channels_last",
    "use_channels_last",
    "use_fused_loop",
    "use_joint_conv",
]

CHANNELS_LAST_MIN_WORK = 1 << 16
"""Smallest ``B * C_h * prod(S')`` (elements of one state tensor) for channels-last on CPU."""
CUDA_CHANNELS_LAST_MIN_HIDDEN = 128
"""Fewest hidden channels for channels-last on CUDA in full precision."""


def use_channels_last(cell: ConvLSTMCell, frame: Tensor) -> bool:
    """Run ``cell`` in channels-last for frames shaped like ``frame`` ``(B, C_in, *S)``?"""
    if cell.spatial_dims != 2:
        return False
    forced = _settings.current().channels_last
    if forced is not None:
        return forced
    if frame.device.type == "cuda":
        return (
            torch.is_autocast_enabled("cuda")
            or cell.hidden_channels >= CUDA_CHANNELS_LAST_MIN_HIDDEN
        )
    work = frame.shape[0] * cell.hidden_channels * math.prod(cell.output_size(frame.shape[2:]))
    return frame.device.type == "cpu" and work >= CHANNELS_LAST_MIN_WORK


def use_joint_conv(cell: ConvLSTMCell, frame: Tensor, steps: int) -> bool:
    """Convolve ``[x_t, h]`` jointly at each of ``steps`` steps for frames shaped like ``frame``?

    Only possible when the input convolution has the recurrent one's geometry (stride 1, no
    dilation, the same symmetric "same" padding) and the bias goes into the convolution
    (no ``norm``).
    """
    if not cell.joint_conv_possible(frame.shape[2:]):
        return False
    forced = _settings.current().input_conv
    if forced is not None:
        return forced == "joint"
    return frame.device.type == "cpu" and steps == 1


def use_fused_loop(cell: ConvLSTMCell, frame: Tensor) -> bool:
    """Run a layer's time loop as one autograd node (:mod:`convlstm._recurrence`)?

    Whenever it applies: sigmoid/tanh gates without ``norm``, symmetric padding of both
    convolutions (odd kernels), one dtype without autocast, eager mode. The caller also requires a
    plain sequence (no ``lengths``, no repeated frame, no checkpointing). Not under tracing.
    """
    pads = cell._input_pads(frame.shape[2:])
    return (
        _settings.current().fused_loop
        and cell.norm is None
        and all(lo == hi for lo, hi in pads)
        and cell.activation is torch.tanh
        and cell.recurrent_activation is torch.sigmoid
        and cell._hh_pad is None
        and frame.dtype == cell.weight_hh.dtype
        and not torch.is_autocast_enabled(frame.device.type)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()  # TorchScript tracing and the legacy ONNX exporter
    )


def to_channels_last(t: Tensor) -> Tensor:
    """``t`` ``(N, C, H, W)`` in the channels-last memory format (no copy if it already is).

    A one-channel tensor is both contiguous and channels-last, and convolutions then take the
    standard layout: it gets channels-last strides (a view of the same memory). On a 2-core Xeon
    without AMX, a 1-to-256-channel 3x3 convolution of 80 frames of 64x64 ran its forward pass
    2.1x and its weight gradient 6x faster so, and its output stays channels-last.
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
