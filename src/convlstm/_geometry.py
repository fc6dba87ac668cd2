"""What a cell tells the rest of the core about itself: :class:`CellGeometry`.

A :class:`~convlstm.cells.ConvLSTMCell` describes, for one input size, its two convolutions
(kernels, strides, paddings), the state's size and the gate functions it computes; the plan
(:mod:`convlstm._plan`) decides from this description how a layer runs, and the whole-layer
node (:mod:`convlstm._recurrence`) takes it instead of a row of positional values. Imports
nothing else of the package.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["CONVS", "CellGeometry", "flat_pads", "same_pads"]

CONVS: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
"""The convolution of each number of spatial dimensions."""

Pads = tuple[tuple[int, int], ...]


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding: output size ceil(size / stride), extra pixel on the high side.

    >>> same_pads(8, 4, 1, 1)
    (1, 2)
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def flat_pads(pads: Pads) -> list[int]:
    """``((lo, hi), ...)`` per spatial dimension as :func:`torch.nn.functional.pad` takes them
    (last dimension first)."""
    return [p for pair in reversed(pads) for p in pair]


@dataclasses.dataclass(frozen=True)
class CellGeometry:
    """A cell's convolutions and gates for inputs of one spatial size ``*S``.

    Attributes:
        spatial_dims: 1, 2 or 3.
        hidden_channels: ``C_h``.
        kernel_size, stride, dilation: of the input convolution (the recurrent one shares the
            kernel size and has stride 1, dilation 1).
        input_pads: ``(low, high)`` padding of the input convolution per spatial dimension.
        hh_pads: ``(low, high)`` padding of the recurrent ("same") convolution per dimension.
        output_size: the state's spatial size ``*S'``.
        norm: the cell's gate normalisation (``None``, ``"layer"``, ``"group"``).
        sigmoid_tanh: the gates are the standard ``sigmoid``/``tanh`` ones, which the fused
            kernels (:mod:`convlstm._gates`) compute.

    Derived properties are computed once per instance (a streaming step asks at every call).
    """

    spatial_dims: int
    hidden_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    input_pads: Pads
    hh_pads: Pads
    output_size: tuple[int, ...]
    norm: str | None
    sigmoid_tanh: bool

    @property
    def conv(self) -> Callable[..., Tensor]:
        """``F.conv1d``, ``F.conv2d`` or ``F.conv3d``."""
        return CONVS[self.spatial_dims]

    @functools.cached_property
    def input_symmetric(self) -> bool:
        """Whether the input convolution pads both sides equally (``conv``'s own padding)."""
        return all(lo == hi for lo, hi in self.input_pads)

    @functools.cached_property
    def input_padding(self) -> tuple[int, ...]:
        """The input convolution's low-side padding per dimension (all of it if symmetric)."""
        return tuple(lo for lo, _ in self.input_pads)

    @functools.cached_property
    def hh_symmetric(self) -> bool:
        """Whether the recurrent convolution pads both sides equally (odd kernels)."""
        return all(lo == hi for lo, hi in self.hh_pads)

    @functools.cached_property
    def hh_padding(self) -> tuple[int, ...]:
        """The recurrent convolution's low-side padding per dimension."""
        return tuple(lo for lo, _ in self.hh_pads)

    @functools.cached_property
    def joint_possible(self) -> bool:
        """Whether one convolution of ``[x_t, h]`` with ``[W_ih, W_hh]`` can replace the two:
        the input convolution has the recurrent one's geometry and the bias is not normalised."""
        ones = (1,) * self.spatial_dims
        return (
            self.norm is None
            and self.hh_symmetric
            and self.stride == ones
            and self.dilation == ones
            and self.input_pads == self.hh_pads
        )

    @functools.cached_property
    def fusable_loop(self) -> bool:
        """Whether the whole-layer node (:mod:`convlstm._recurrence`) computes this cell: the
        standard gates (with or without ``norm``) and symmetric padding of both convolutions."""
        return self.sigmoid_tanh and self.input_symmetric and self.hh_symmetric
