"""The ConvLSTM cell of Shi et al. (2015), one implementation for 1-D, 2-D and 3-D data.

Shape legend: ``B`` batch, ``C_in`` input channels, ``C_h`` hidden channels, ``*S`` the spatial
dimensions of the input (1, 2 or 3 of them), ``*S'`` those of the state (equal to ``*S`` unless the
input convolution has a stride or ``"valid"`` padding).

The cell computes, with ``*`` a convolution and ``∘`` the Hadamard product::

    i  = σ(W_xi * x + W_hi * h + W_ci ∘ c + b_i)
    f  = σ(W_xf * x + W_hf * h + W_cf ∘ c + b_f)
    c' = f ∘ c + i ∘ tanh(W_xc * x + W_hc * h + b_c)
    o  = σ(W_xo * x + W_ho * h + W_co ∘ c' + b_o)
    h' = o ∘ tanh(c')

The four input-to-hidden kernels are stored fused in ``weight_ih`` and the four hidden-to-hidden
kernels in ``weight_hh``, gate order (i, f, g, o) along dim 0, as in :class:`torch.nn.LSTM` and Keras.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convlstm import _plan, fast
from convlstm._checks import check_choice, check_positive, to_tuple
from convlstm._gates import activate, fused_gates
from convlstm._geometry import CONVS, CellGeometry, flat_pads, same_pads

__all__ = [
    "ACTIVATIONS",
    "CellGeometry",
    "ConvLSTMCell",
    "ConvLSTMCell1d",
    "ConvLSTMCell2d",
    "ConvLSTMCell3d",
    "get_activation",
]

Activation = str | Callable[[Tensor], Tensor]
Padding = str | int | Sequence[int]
State = tuple[Tensor, Tensor]


def _linear(x: Tensor) -> Tensor:
    """The identity, Keras' ``"linear"`` activation (a function: no module to register)."""
    return x


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
    "hard_tanh": F.hardtanh,
    "relu": F.relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "softsign": F.softsign,
    "linear": _linear,
}
"""Activations accepted by name for ``activation`` and ``recurrent_activation``."""

PEEPHOLES = (None, "channel", "spatial")
NORMS = (None, "layer", "group")
# How forward runs a call like its last checked one (ConvLSTMCell._validated): the input and
# recurrent convolutions apart, jointly, or jointly with the fused gates inline (_stream_step).
_SEPARATE, _JOINT, _STREAM = 0, 1, 2


def _param(module: nn.Module, name: str) -> Any:
    """``getattr(module, name)`` for a parameter (or ``None``) without ``nn.Module.__getattr__``,
    which costs about 1 µs per lookup, several times per streaming step; anything that has taken
    the name out of ``_parameters`` (a parametrization, ``weight_norm``) is read as an attribute.
    """
    try:
        return module._parameters[name]
    except KeyError:
        return getattr(module, name)


def get_activation(activation: Activation, name: str = "activation") -> Callable[[Tensor], Tensor]:
    """Return the activation function named ``activation``, or ``activation`` itself if callable.

    >>> get_activation("hard_sigmoid")(torch.zeros(1))
    tensor([0.5000])
    """
    if callable(activation):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise ValueError(
        f"{name} must be a callable or one of {sorted(ACTIVATIONS)}, got {activation!r}"
    )


class ConvLSTMCell(nn.Module):
    r"""One ConvLSTM step for ``spatial_dims``-dimensional data (1, 2 or 3).

    Prefer the thin subclasses :class:`ConvLSTMCell1d`, :class:`ConvLSTMCell2d`,
    :class:`ConvLSTMCell3d`; this class holds their single implementation.

    Args:
        in_channels: channels ``C_in`` of the input frames.
        hidden_channels: channels ``C_h`` of ``h`` and ``c``.
        kernel_size: kernel of both convolutions, an int or one per spatial dimension; odd or even.
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        stride: stride of the input convolution (the recurrent one always has stride 1).
        padding: ``"same"`` (output keeps ``ceil(size / stride)``; for even kernels the extra pixel
            is padded on the high side, as in Keras/TensorFlow), ``"valid"``, or an int / one int per
            spatial dimension, for the input convolution. The recurrent convolution is always "same".
        dilation: dilation of the input convolution.
        bias: learn the gate bias ``b`` (``bias=False`` registers ``None``).
        peephole: ``None`` (no peepholes, as Keras computes), ``"channel"`` (one learned weight per
            hidden channel, shape ``(C_h, 1, ..., 1)``) or ``"spatial"`` (one per hidden channel and
            location, shape ``(C_h, *S')``, which needs ``spatial_size``).
        spatial_size: spatial size ``*S`` of the input; required by ``peephole="spatial"``, and if
            given any other input size is an error.
        activation: the cell/output activation (``tanh``), a name from :data:`ACTIVATIONS` or a callable.
        recurrent_activation: the gate activation (``sigmoid``), a name or a callable.
        unit_forget_bias: initialise the forget-gate bias to 1 (Keras' default), else 0.
        norm: normalise the gate pre-activations (the two convolutions' sum) before bias and
            peepholes: ``"layer"`` normalises each gate over all its channels and locations,
            ``"group"`` each gate in ``norm_groups`` groups of channels; ``None`` (default) is off.
        norm_groups: groups per gate for ``norm="group"``; must divide ``hidden_channels``.

    Inputs: ``x, state``
        - ``x``: ``(B, C_in, *S)``.
        - ``state``: ``(h, c)``, each ``(B, C_h, *S')``; zeros of ``x``'s dtype and device if omitted.

    Outputs: ``(h', c')``, each ``(B, C_h, *S')``.

    Attributes:
        weight_ih: ``(4*C_h, C_in, *kernel_size)``, input-to-hidden kernels, gates (i, f, g, o).
        weight_hh: ``(4*C_h, C_h, *kernel_size)``, hidden-to-hidden kernels, gates (i, f, g, o).
        bias: ``(4*C_h,)`` or ``None``.
        weight_ci, weight_cf, weight_co: peephole weights (``None`` without peepholes).
        norm_weight: ``(4*C_h,)`` gain of the normalisation (``None`` without ``norm``).

    Example:
        >>> cell = ConvLSTMCell(3, 8, 3, spatial_dims=2, peephole="channel")
        >>> h, c = cell(torch.randn(2, 3, 16, 16))
        >>> h, c = cell(torch.randn(2, 3, 16, 16), (h, c))
        >>> tuple(h.shape), tuple(c.shape)
        ((2, 8, 16, 16), (2, 8, 16, 16))
    """

    bias: Tensor | None
    weight_ci: Tensor | None
    weight_cf: Tensor | None
    weight_co: Tensor | None
    norm_weight: Tensor | None

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int | Sequence[int],
        *,
        spatial_dims: int,
        stride: int | Sequence[int] = 1,
        padding: Padding = "same",
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        peephole: str | None = None,
        spatial_size: int | Sequence[int] | None = None,
        activation: Activation = "tanh",
        recurrent_activation: Activation = "sigmoid",
        unit_forget_bias: bool = True,
        norm: str | None = None,
        norm_groups: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._geometries: dict[tuple[int, ...], CellGeometry] = {}  # geometry's cache
        self._joint_cache: tuple | None = None  # joint_weight's cache
        self._validated: tuple | None = None  # forward's last checked call and its plan
        check_choice(spatial_dims, (1, 2, 3), "spatial_dims")
        self.spatial_dims = spatial_dims
        self.in_channels = check_positive(in_channels, "in_channels")
        self.hidden_channels = check_positive(hidden_channels, "hidden_channels")
        self.kernel_size = to_tuple(kernel_size, spatial_dims, "kernel_size")
        self.stride = to_tuple(stride, spatial_dims, "stride")
        self.dilation = to_tuple(dilation, spatial_dims, "dilation")
        self._hh_pads = tuple(same_pads(1, k, 1, 1) for k in self.kernel_size)
        self._hh_padding = tuple(lo for lo, _ in self._hh_pads)
        self._hh_pad = (
            None if all(lo == hi for lo, hi in self._hh_pads) else flat_pads(self._hh_pads)
        )
        if isinstance(padding, str):
            check_choice(padding, ("same", "valid"), "padding")
            self.padding: str | tuple[int, ...] = padding
        else:
            self.padding = to_tuple(padding, spatial_dims, "padding", minimum=0)
        self.peephole = check_choice(peephole, PEEPHOLES, "peephole")
        self.norm = check_choice(norm, NORMS, "norm")
        self.norm_groups = check_positive(norm_groups, "norm_groups")
        if norm == "group" and hidden_channels % norm_groups:
            raise ValueError(
                f"norm_groups must divide hidden_channels, got norm_groups={norm_groups} "
                f"and hidden_channels={hidden_channels}"
            )
        self.activation = get_activation(activation, "activation")
        self.recurrent_activation = get_activation(recurrent_activation, "recurrent_activation")
        self.spatial_size = (
            None if spatial_size is None else to_tuple(spatial_size, spatial_dims, "spatial_size")
        )
        if self.spatial_size is not None and any(
            n < 1 for n in self.output_size(self.spatial_size)
        ):
            raise ValueError(
                f"spatial_size={self.spatial_size} is too small for kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, padding={self.padding!r}: the state would be empty"
            )
        if peephole == "spatial" and self.spatial_size is None:
            raise ValueError(
                'peephole="spatial" needs spatial_size= (the input\'s spatial size), got None'
            )
        self._activation_names = (
            getattr(activation, "__name__", activation),
            getattr(recurrent_activation, "__name__", recurrent_activation),
        )
        self.unit_forget_bias = unit_forget_bias

        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        gates = 4 * hidden_channels
        self.weight_ih = nn.Parameter(torch.empty(gates, in_channels, *self.kernel_size, **factory))
        self.weight_hh = nn.Parameter(
            torch.empty(gates, hidden_channels, *self.kernel_size, **factory)
        )
        self.register_parameter(
            "bias", nn.Parameter(torch.empty(gates, **factory)) if bias else None
        )
        peep_shape = self._peephole_shape()
        for name in ("weight_ci", "weight_cf", "weight_co"):
            param = None if peep_shape is None else nn.Parameter(torch.empty(peep_shape, **factory))
            self.register_parameter(name, param)
        norm_weight = nn.Parameter(torch.empty(gates, **factory)) if norm else None
        self.register_parameter("norm_weight", norm_weight)
        self._conv = CONVS[spatial_dims]
        self.reset_parameters()

    def _peephole_shape(self) -> tuple[int, ...] | None:
        if self.peephole is None:
            return None
        if self.peephole == "channel":
            return (self.hidden_channels,) + (1,) * self.spatial_dims
        assert self.spatial_size is not None
        return (self.hidden_channels, *self.output_size(self.spatial_size))

    def reset_parameters(self) -> None:
        """Initialise as :class:`torch.nn.Conv2d` does (uniform ±1/sqrt(fan_in)) for both kernels;
        bias 0 with the forget gate at 1 if ``unit_forget_bias``; peepholes uniform
        ±1/sqrt(C_h); normalisation gain 1."""
        for weight in (self.weight_ih, self.weight_hh):
            bound = 1.0 / math.sqrt(weight[0].numel())
            nn.init.uniform_(weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
            if self.unit_forget_bias:
                nn.init.ones_(self.bias[self.hidden_channels : 2 * self.hidden_channels])
        bound = 1.0 / math.sqrt(self.hidden_channels)
        for peephole in (self.weight_ci, self.weight_cf, self.weight_co):
            if peephole is not None:
                nn.init.uniform_(peephole, -bound, bound)
        if self.norm_weight is not None:
            nn.init.ones_(self.norm_weight)

    def output_size(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """Spatial size ``*S'`` of the state for an input of spatial size ``*S``."""
        return self.geometry(spatial_size).output_size

    def geometry(self, spatial_size: Sequence[int]) -> CellGeometry:
        """The cell's public description for inputs of spatial size ``*S``: paddings of both
        convolutions, kernels, the state's size, and whether one joint convolution of
        ``[x, h]`` can replace the two (cached per size; what :mod:`convlstm._plan` reads).

        >>> g = ConvLSTMCell(1, 8, 4, spatial_dims=2).geometry((16, 16))
        >>> g.input_pads, g.output_size, g.joint_possible
        (((1, 2), (1, 2)), (16, 16), False)
        """
        key = tuple(spatial_size)
        geometry = self._geometries.get(key)
        if geometry is None:
            pads = self._input_pads(key)
            output_size = tuple(
                (size + lo + hi - d * (k - 1) - 1) // s + 1
                for size, (lo, hi), k, s, d in zip(
                    key, pads, self.kernel_size, self.stride, self.dilation, strict=True
                )
            )
            geometry = self._geometries[key] = CellGeometry(
                spatial_dims=self.spatial_dims,
                hidden_channels=self.hidden_channels,
                kernel_size=self.kernel_size,
                stride=self.stride,
                dilation=self.dilation,
                input_pads=pads,
                hh_pads=self._hh_pads,
                output_size=output_size,
                norm=self.norm,
                sigmoid_tanh=(
                    self.activation is torch.tanh and self.recurrent_activation is torch.sigmoid
                ),
            )
        return geometry

    def _input_pads(self, spatial_size: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        if not isinstance(self.padding, str):
            return tuple((p, p) for p in self.padding)
        if self.padding == "same":
            return tuple(
                same_pads(n, k, s, d)
                for n, k, s, d in zip(
                    spatial_size, self.kernel_size, self.stride, self.dilation, strict=True
                )
            )
        return ((0, 0),) * self.spatial_dims  # "valid"

    def check_input(self, x: Tensor, name: str = "x", frame_dims: int = 0) -> None:
        """Raise a clear error unless ``x`` is ``(B, *frames, C_in, *S)`` with ``frame_dims`` leading
        frame dimensions (0 for a single frame, 1 for a sequence), floating point and in the
        parameters' dtype (or, under :func:`torch.autocast`, one it casts: not float64). A
        float64 input to a float32 cell is an error, not a silent cast."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        expected = self.spatial_dims + 2 + frame_dims
        if x.dim() != expected:
            raise ValueError(
                f"{name} must have {expected} dimensions "
                f"(B, {'T, ' * frame_dims}C, {self._spatial_names()}), got {x.dim()} "
                f"with shape {tuple(x.shape)}"
            )
        if x.shape[1 + frame_dims] != self.in_channels:
            raise ValueError(
                f"{name}.size({1 + frame_dims}) must be equal to in_channels. "
                f"Expected {self.in_channels}, got {x.shape[1 + frame_dims]}"
            )
        size = tuple(x.shape[2 + frame_dims :])
        if self.spatial_size is not None and size != self.spatial_size:
            raise ValueError(
                f"{name} spatial size must match spatial_size={self.spatial_size} given at "
                f"construction, got {size}"
            )
        if any(s < 1 for s in self.output_size(size)):
            raise ValueError(
                f"{name} spatial size {size} is too small for kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, padding={self.padding!r}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        dtype = self.weight_ih.dtype
        if x.dtype != dtype and (
            x.dtype == torch.float64 or not torch.is_autocast_enabled(x.device.type)
        ):
            # torch.nn raises a bare dtype mismatch deep in the convolution; casting silently
            # would drop float64 precision (or hide a half-precision mix-up): say so here.
            raise TypeError(
                f"{name} must have the parameters' dtype {dtype}, got {x.dtype}: convert the "
                f"input ({name}.to({dtype})) or the module (.to({x.dtype})); torch.autocast "
                "casts float32 and half-precision inputs, not float64"
            )

    def _spatial_names(self) -> str:
        return ", ".join(("D", "H", "W")[3 - self.spatial_dims :])

    def input_conv(self, x: Tensor) -> Tensor:
        """Input-to-hidden convolution, plus the bias unless ``norm`` is set.

        ``x``: ``(N, C_in, *S)`` (``N`` may be batch times time) -> ``(N, 4*C_h, *S')``.
        """
        geometry = self.geometry(x.shape[2:])
        if geometry.input_symmetric:
            padding = geometry.input_padding
        else:
            x = F.pad(x, flat_pads(geometry.input_pads))
            padding = (0,) * self.spatial_dims
        bias = self.bias if self.norm is None else None
        return self._conv(x, self.weight_ih, bias, self.stride, padding, self.dilation)

    def recurrent_conv(self, h: Tensor) -> Tensor:
        """Hidden-to-hidden convolution, stride 1, "same": ``(B, C_h, *S')`` -> ``(B, 4*C_h, *S')``."""
        if self._hh_pad is None:
            return self._conv(h, self.weight_hh, None, 1, self._hh_padding)
        return self._conv(F.pad(h, self._hh_pad), self.weight_hh)

    def check_state(
        self, state: object, batch: int, size: Sequence[int], name: str = "state"
    ) -> State:
        """Raise a clear error unless ``state`` is ``(h, c)``, each ``(batch, C_h, *size)``."""
        if not (isinstance(state, tuple | list) and len(state) == 2):
            raise TypeError(f"{name} must be a pair (h, c) of tensors, got {type(state).__name__}")
        expected = (batch, self.hidden_channels, *size)
        for tensor, part in zip(state, "hc", strict=True):
            if not isinstance(tensor, Tensor):
                raise TypeError(
                    f"{name} {part} must be a torch.Tensor, got {type(tensor).__name__}"
                )
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"{name} {part} must have shape {expected} (B, C_h, {self._spatial_names()}), "
                    f"got {tuple(tensor.shape)}"
                )
        return state[0], state[1]

    def step(self, gates_x: Tensor, state: State | None, h_mask: Tensor | None = None) -> State:
        """The recurrent part of one step, given the input convolution ``gates_x``.

        Args:
            gates_x: ``(B, 4*C_h, *S')``, :meth:`input_conv` of the frame.
            state: ``(h, c)``, each ``(B, C_h, *S')``; ``None`` means zeros and skips the recurrent
                convolution and the input/forget peepholes, whose inputs are then zero.
            h_mask: optional ``(B, C_h, *S')`` recurrent-dropout mask applied to ``h``.

        Returns:
            ``(h', c')``, each ``(B, C_h, *S')``.
        """
        if state is None:
            return self._gates(gates_x, None, owned=False)
        h, c = state
        gates = self.recurrent_conv(h if h_mask is None else h * h_mask)
        # The convolution's output is ours: accumulate into it rather than allocate a sum.
        gates = gates.add_(gates_x) if gates.dtype == gates_x.dtype else gates_x + gates
        return self._gates(gates, c, owned=True)

    @property
    def gate_groups(self) -> int:
        """Groups of the gates' group norm: 4 for ``norm="layer"`` (one per gate), ``4 *
        norm_groups`` for ``"group"``, 0 without ``norm``."""
        if self.norm is None:
            return 0
        return 4 if self.norm == "layer" else 4 * self.norm_groups

    def joint_conv_possible(self, spatial_size: Sequence[int]) -> bool:
        """Whether :meth:`joint_step` applies to inputs of spatial size ``*S``: the input
        convolution has the recurrent one's geometry and the bias is not normalised."""
        return self.geometry(spatial_size).joint_possible

    def joint_step(
        self, x: Tensor, state: State, weight: Tensor, h_mask: Tensor | None = None
    ) -> State:
        """One step with a single convolution of ``[x, h]`` (few input channels, or one step).

        Args:
            x: ``(B, C_in, *S)`` frame; :meth:`joint_conv_possible` must hold for its size.
            state: ``(h, c)``, each ``(B, C_h, *S)``.
            weight: :meth:`joint_weight`, made once per sequence by the caller.
            h_mask: optional ``(B, C_h, *S)`` recurrent-dropout mask applied to ``h``.

        Returns:
            ``(h', c')``, each ``(B, C_h, *S)``: :meth:`step` of :meth:`input_conv` up to rounding.
        """
        h, c = state
        joint = torch.cat([x, h if h_mask is None else h * h_mask], dim=1)
        gates = self._conv(joint, weight, _param(self, "bias"), 1, self._hh_padding)
        return self._gates(gates, c, owned=True)

    def _fusable(self, gates: Tensor, c: Tensor | None, w_ci: Tensor | None) -> bool:
        """Whether :func:`~convlstm._gates.fused_gates` computes this cell's gates (after the
        norm, if any) with the peephole ``w_ci``: sigmoid/tanh, one dtype, and eager mode
        (compilers fuse the plain expressions themselves; tracers record them)."""
        return (
            self.activation is torch.tanh
            and self.recurrent_activation is torch.sigmoid
            and fast.current().fused_gates
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and (c is None or c.dtype == gates.dtype)
            and (w_ci is None or w_ci.dtype == gates.dtype)
        )

    def _gates(self, gates: Tensor, c: Tensor | None, owned: bool) -> State:
        """The arithmetic after the convolutions: ``gates`` ``(B, 4*C_h, *S')`` (overwritten if
        ``owned``) and ``c`` (``None`` for zeros) -> ``(h', c')``."""
        if self.norm is not None:
            # The bias is added after the norm: group_norm's per-channel shift. Its output is a
            # new tensor, which the gates may overwrite (group_norm's backward does not read it).
            gates = F.group_norm(gates, self.gate_groups, self.norm_weight, self.bias)
            owned = True
        w_ci, w_cf, w_co = (
            _param(self, "weight_ci"),
            _param(self, "weight_cf"),
            _param(self, "weight_co"),
        )
        if self._fusable(gates, c, w_ci):
            return fused_gates(gates, c, w_ci, w_cf, w_co, inplace=owned)
        i, f, g, o = gates.chunk(4, dim=1)
        if c is not None and w_ci is not None and w_cf is not None:
            i = i + w_ci * c
            f = f + w_cf * c
        i = self.recurrent_activation(i)
        g = self.activation(g)
        c_new = i * g if c is None else self.recurrent_activation(f) * c + i * g
        if w_co is not None:
            o = o + w_co * c_new
        h_new = self.recurrent_activation(o) * self.activation(c_new)
        return h_new, c_new

    def forward(self, x: Tensor, state: State | None = None) -> State:
        """One step: ``x`` ``(B, C_in, *S)``, ``state`` ``(h, c)`` or ``None`` -> ``(h', c')``.

        A call like the last one that passed the checks (a streaming step) skips them and the
        plan: plain tensors, the state a tuple, equal shapes of ``x``, ``h`` and ``c``, ``x``'s
        dtype equal to the parameters' (no autocast cast was judged), ``x`` on the CPU or not
        as before, and the same :func:`convlstm.fast.current` settings. Anything else is
        checked as at the first call.
        """
        w_ih = _param(self, "weight_ih")
        key = None
        if (
            type(state) is tuple
            and len(state) == 2
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()  # the shapes would be traced values
        ):
            h, c = state
            if type(x) is Tensor and type(h) is Tensor and type(c) is Tensor:
                key = (x.shape, h.shape, c.shape, x.dtype, w_ih.dtype, x.is_cpu,
                       self.spatial_size, fast.current())  # fmt: skip
                validated = self._validated
                if validated is not None and validated[0] == key:
                    route = validated[1]
                    if route == _STREAM and not torch.is_grad_enabled():
                        return self._stream_step(x, h, c, w_ih)
                    if route == _SEPARATE:
                        return self.step(self.input_conv(x), state)
                    return self.joint_step(
                        x, state, self._joint_weight(w_ih, _param(self, "weight_hh"))
                    )
        self.check_input(x)
        if state is None:
            return self.step(self.input_conv(x), None)
        geometry = self.geometry(x.shape[2:])
        state = self.check_state(state, x.shape[0], geometry.output_size)
        joint = _plan.use_joint_conv(geometry, x, steps=1)
        if key is not None and x.dtype == w_ih.dtype:
            # The gates _stream_step computes: those _gates fuses (without autograd).
            stream = geometry.sigmoid_tanh and fast.current().fused_gates
            self._validated = (key, (_STREAM if stream else _JOINT) if joint else _SEPARATE)
        if joint:
            return self.joint_step(x, state, self._joint_weight(w_ih, _param(self, "weight_hh")))
        return self.step(self.input_conv(x), state)

    def _stream_step(self, x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor) -> State:
        """:meth:`joint_step` with the cached joint weight and the fused gates, inlined: a
        checked streaming call without autograd (every call of Python costs at B=1)."""
        weight = self._cached_joint_weight(w_ih, _param(self, "weight_hh"))
        joint = torch.cat((x, h), dim=1)
        gates = self._conv(joint, weight, _param(self, "bias"), 1, self._hh_padding)
        w_ci = _param(self, "weight_ci")
        if gates.dtype != c.dtype or (w_ci is not None and w_ci.dtype != gates.dtype):
            return self._gates(gates, c, owned=True)  # autocast: the plain expressions
        return activate(gates, c, w_ci, _param(self, "weight_cf"), _param(self, "weight_co"))

    def joint_weight(self) -> Tensor:
        """``torch.cat([weight_ih, weight_hh], 1)``, ``(4*C_h, C_in + C_h, *kernel)``, for
        :meth:`joint_step`. Without autograd (inference) it is cached until either weight changes
        (in place or replaced), so that streaming steps do not copy the weights each time."""
        return self._joint_weight(_param(self, "weight_ih"), _param(self, "weight_hh"))

    def _joint_weight(self, w_ih: Tensor, w_hh: Tensor) -> Tensor:
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return torch.cat((w_ih, w_hh), dim=1)
        return self._cached_joint_weight(w_ih, w_hh)

    def _cached_joint_weight(self, w_ih: Tensor, w_hh: Tensor) -> Tensor:
        # The cache holds the weights it was made from (detached aliases): their memory cannot
        # be freed and reused by a replacement while cached, so an equal data_ptr is the same
        # memory, and an equal _version of it no in-place change since.
        cache = self._joint_cache
        if (
            cache is None
            or cache[0] != w_ih._version
            or cache[1] != w_hh._version
            or cache[2] != w_ih.data_ptr()
            or cache[3] != w_hh.data_ptr()
        ):
            joint = torch.cat((w_ih, w_hh), dim=1)
            cache = self._joint_cache = (
                w_ih._version, w_hh._version, w_ih.data_ptr(), w_hh.data_ptr(),
                w_ih.detach(), w_hh.detach(), joint,
            )  # fmt: skip
        return cache[6]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        # .to(), .cuda(), .half(), ...: the caches would hold the weights of before.
        self._joint_cache = self._validated = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies start without caches: data_ptr values mean nothing elsewhere.
        state = super().__getstate__()
        state["_joint_cache"] = state["_validated"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._joint_cache = self._validated = None  # also for cells pickled without them

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"spatial_dims={self.spatial_dims}"
        )
        if self.stride != (1,) * self.spatial_dims:
            s += f", stride={self.stride}"
        if self.padding != "same":
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self.spatial_dims:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.peephole is not None:
            s += f", peephole={self.peephole!r}"
        if self.spatial_size is not None:
            s += f", spatial_size={self.spatial_size}"
        if self._activation_names != ("tanh", "sigmoid"):
            s += f", activation={self._activation_names[0]!r}"
            s += f", recurrent_activation={self._activation_names[1]!r}"
        if self.norm is not None:
            s += f", norm={self.norm!r}"
        return s


class ConvLSTMCell1d(ConvLSTMCell):
    """:class:`ConvLSTMCell` for sequences of 1-D frames ``(B, C_in, W)``.

    >>> ConvLSTMCell1d(2, 4, 3)(torch.randn(1, 2, 10))[0].shape
    torch.Size([1, 4, 10])
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, kernel_size: int | Sequence[int], **kwargs
    ) -> None:
        super().__init__(in_channels, hidden_channels, kernel_size, spatial_dims=1, **kwargs)


class ConvLSTMCell2d(ConvLSTMCell):
    """:class:`ConvLSTMCell` for images ``(B, C_in, H, W)``.

    >>> ConvLSTMCell2d(2, 4, 3)(torch.randn(1, 2, 8, 8))[0].shape
    torch.Size([1, 4, 8, 8])
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, kernel_size: int | Sequence[int], **kwargs
    ) -> None:
        super().__init__(in_channels, hidden_channels, kernel_size, spatial_dims=2, **kwargs)


class ConvLSTMCell3d(ConvLSTMCell):
    """:class:`ConvLSTMCell` for volumes ``(B, C_in, D, H, W)``.

    >>> ConvLSTMCell3d(2, 4, 3)(torch.randn(1, 2, 4, 6, 6))[0].shape
    torch.Size([1, 4, 4, 6, 6])
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, kernel_size: int | Sequence[int], **kwargs
    ) -> None:
        super().__init__(in_channels, hidden_channels, kernel_size, spatial_dims=3, **kwargs)
