"""How a layer runs, decided in one place: :func:`plan_layer` returns a :class:`Plan` (memory
format, how the input convolution is batched, whether the whole layer runs as one autograd node)
from the cell's public description (:class:`~convlstm._geometry.CellGeometry`), the input frame
and the switches of :mod:`convlstm.fast`; the layer (:mod:`convlstm.layers`) executes it.

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

import dataclasses
import math

import torch
from torch import Tensor

from convlstm import fast
from convlstm._geometry import CellGeometry

__all__ = [
    "CHANNELS_LAST_MIN_WORK",
    "CUDA_CHANNELS_LAST_MIN_HIDDEN",
    "Plan",
    "plan_layer",
    "use_channels_last",
    "use_joint_conv",
]

CHANNELS_LAST_MIN_WORK = 1 << 16
"""Smallest ``B * C_h * prod(S')`` (elements of one state tensor) for channels-last on CPU."""
CUDA_CHANNELS_LAST_MIN_HIDDEN = 128
"""Fewest hidden channels for channels-last on CUDA in full precision."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one direction of one layer runs over a sequence.

    Attributes:
        channels_last: run the 2-D convolutions and states in the channels-last memory format.
        input_conv: ``"batched"``: one input convolution of the whole sequence; ``"joint"``: one
            convolution of ``[x_t, h]`` with ``[W_ih, W_hh]`` per step; ``"per_step"``: the input
            convolution inside the checkpoint of each chunk of about ``sqrt(T)`` steps
            (``checkpoint_steps``); ``"once"``: a single frame fed at every step, convolved once.
        fused: the whole layer as one autograd node (:mod:`convlstm._recurrence`), which then
            runs the batched input convolution itself.
    """

    channels_last: bool
    input_conv: str
    fused: bool


def use_channels_last(geometry: CellGeometry, frame: Tensor) -> bool:
    """Run a cell described by ``geometry`` in channels-last for frames shaped like ``frame``
    ``(B, C_in, *S)``?"""
    if geometry.spatial_dims != 2:
        return False
    forced = fast.current().channels_last
    if forced is not None:
        return forced
    if frame.device.type == "cuda":
        return (
            torch.is_autocast_enabled("cuda")
            or geometry.hidden_channels >= CUDA_CHANNELS_LAST_MIN_HIDDEN
        )
    work = frame.shape[0] * geometry.hidden_channels * math.prod(geometry.output_size)
    return frame.device.type == "cpu" and work >= CHANNELS_LAST_MIN_WORK


def use_joint_conv(geometry: CellGeometry, frame: Tensor, steps: int) -> bool:
    """Convolve ``[x_t, h]`` jointly at each of ``steps`` steps for frames shaped like ``frame``?

    Only possible when the input convolution has the recurrent one's geometry (stride 1, no
    dilation, the same symmetric "same" padding) and the bias goes into the convolution
    (no ``norm``): :attr:`~convlstm._geometry.CellGeometry.joint_possible`.
    """
    if not geometry.joint_possible:
        return False
    forced = fast.current().input_conv
    if forced is not None:
        return forced == "joint"
    return frame.device.type == "cpu" and steps == 1


def _use_fused_loop(geometry: CellGeometry, frame: Tensor, dtype: torch.dtype) -> bool:
    """Run a layer's time loop as one autograd node (:mod:`convlstm._recurrence`)?

    Whenever it applies: sigmoid/tanh gates without ``norm``, symmetric padding of both
    convolutions (odd kernels), the weights' ``dtype`` without autocast, eager mode (not under
    compilers or tracers).
    """
    return (
        fast.current().fused_loop
        and geometry.fusable_loop
        and frame.dtype == dtype
        and not torch.is_autocast_enabled(frame.device.type)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()  # TorchScript tracing and the legacy ONNX exporter
    )


def plan_layer(
    geometry: CellGeometry,
    frame: Tensor,
    steps: int,
    *,
    dtype: torch.dtype,
    repeated: bool = False,
    masked: bool = False,
    checkpointed: bool = False,
) -> Plan:
    """The :class:`Plan` of one direction of one layer.

    Args:
        geometry: the cell's description for ``frame``'s spatial size.
        frame: a frame ``(B, C_in, *S)`` of the input (its device, dtype and size count).
        steps: number of steps ``T``.
        dtype: the cell's weights' dtype.
        repeated: one frame fed at every step (``steps=`` of the layer).
        masked: sequences of unequal ``lengths``.
        checkpointed: ``checkpoint_steps`` in force (training with autograd).

    Example:
        >>> from convlstm import ConvLSTMCell
        >>> cell = ConvLSTMCell(1, 8, 3, spatial_dims=2)
        >>> frame = torch.zeros(2, 1, 16, 16)
        >>> plan_layer(cell.geometry((16, 16)), frame, 10, dtype=torch.float32)
        Plan(channels_last=False, input_conv='batched', fused=True)
    """
    channels_last = use_channels_last(geometry, frame)
    if repeated:
        return Plan(channels_last, "once", False)
    if use_joint_conv(geometry, frame, steps):
        return Plan(channels_last, "per_step" if checkpointed else "joint", False)
    if not masked and _use_fused_loop(geometry, frame, dtype):
        return Plan(channels_last, "batched", True)
    return Plan(channels_last, "per_step" if checkpointed else "batched", False)
