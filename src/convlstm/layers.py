"""Stacked, optionally bidirectional ConvLSTM layers over sequences, one N-d implementation.

Shape legend: ``B`` batch, ``T`` time steps, ``C_in`` input channels, ``C_h`` hidden channels of
a layer, ``D`` directions (2 if bidirectional else 1), ``*S`` input spatial size, ``*S'`` a layer's
state spatial size (equal to ``*S`` with the default "same" padding and stride 1).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from convlstm import _plan, fast
from convlstm._checks import check_positive, check_probability
from convlstm._layout import to_channels_last
from convlstm._recurrence import Run, recurrence
from convlstm.cells import Activation, ConvLSTMCell, Padding, State

__all__ = ["ConvLSTM", "ConvLSTM1d", "ConvLSTM2d", "ConvLSTM3d"]


def _per_layer(value: object, num_layers: int, name: str) -> list:
    """A ``list`` gives one value per layer; anything else is shared by all layers."""
    if isinstance(value, list):
        if len(value) != num_layers:
            raise ValueError(
                f"{name} given as a list must have one entry per layer ({num_layers}), "
                f"got {len(value)}"
            )
        return value
    return [value] * num_layers


class ConvLSTM(nn.Module):
    r"""A stack of ConvLSTM layers over a sequence of ``spatial_dims``-dimensional frames.

    Prefer :class:`ConvLSTM1d`, :class:`ConvLSTM2d`, :class:`ConvLSTM3d`; this class holds their
    single implementation. It follows :class:`torch.nn.LSTM`'s conventions, batch-first by default.

    Args:
        in_channels: channels ``C_in`` of the input frames.
        hidden_channels: an int (the same for ``num_layers`` layers) or a list, one per layer.
        kernel_size: an int or a tuple (one per spatial dimension) shared by all layers, or a list
            with one int/tuple per layer. ``stride`` and ``dilation`` take the same forms.
        num_layers: number of layers; ``None`` means ``len(hidden_channels)`` for a list, else 1.
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        batch_first: ``input`` and ``output`` are ``(B, T, ...)`` if True (default), else ``(T, B, ...)``.
        bidirectional: add a reverse-time cell per layer; outputs of both directions are
            concatenated along channels.
        dropout: dropout on the outputs of each layer except the last, in training only (with
            one layer it has nothing to act on, and a warning says so, as in
            :class:`torch.nn.LSTM`).
        recurrent_dropout: dropout on ``h`` before the recurrent convolution, with one mask per
            sequence held fixed across time (Gal & Ghahramani; Keras semantics), in training only.
        stride, padding, dilation, bias, peephole, activation, recurrent_activation,
            unit_forget_bias, norm, norm_groups: as in :class:`~convlstm.cells.ConvLSTMCell`, for
            every layer.
        spatial_size: spatial size ``*S`` of the input frames; required by ``peephole="spatial"``.
        checkpoint_steps: in training, save no gate activations for backward and recompute
            them there, for one more forward pass of the convolutions. Where a layer runs as
            one autograd node (:mod:`convlstm._recurrence`: sigmoid/tanh gates, no ``norm``,
            odd kernels, no ``lengths``), it keeps only the output ``h`` and the ``c`` where
            each chunk of about ``sqrt(T)`` steps begins, and reruns a chunk at a time (its
            input convolution in one call): about one state-sized tensor per step instead of
            five. Otherwise (e.g. with ``norm``) each chunk of about ``sqrt(T)`` steps is one
            :func:`torch.utils.checkpoint.checkpoint` (its input convolution in one call) that
            keeps its first state and its outputs: about one per step, and one replay of the
            checkpoint machinery per chunk rather than per step.

    Inputs: ``input, state=None, *, steps=None, lengths=None``
        - ``input``: a sequence ``(B, T, C_in, *S)`` (``(T, B, C_in, *S)`` if not ``batch_first``),
          ``T >= 1``, in the parameters' dtype (under :func:`torch.autocast` also one it casts;
          a float64 input to a float32 layer is an error, not a silent cast), frame ``t`` fed at
          step ``t``; or, with ``steps=N``, one frame ``(B, C_in, *S)`` fed at
          each of ``N`` steps (its input convolution is computed once).
        - ``state``: ``None`` (zeros) or what a previous call returned as ``states``: a list of
          ``num_layers * D`` pairs ``(h, c)``, each ``(B, C_h, *S')``, ordered layer by layer with
          the forward direction first. A single pair is accepted for a one-layer unidirectional
          stack. Passing the states back makes a sequence processed in chunks give exactly the
          result of one call (streaming) -- for a unidirectional stack only: the reverse
          direction of a bidirectional one needs the end of the whole sequence.
        - ``lengths``: optional ``(B,)`` integer tensor of sequence lengths in ``[1, T]``. Past a
          sequence's end its state stops changing and its outputs are zero; ``states`` then hold
          each sequence's state at its own last step (the reverse direction starts there).

    Outputs: ``output, states``
        - ``output``: the last layer's ``h`` at every step, ``(B, T, D*C_h_last, *S'_last)``
          (``(T, B, ...)`` if not ``batch_first``). Selecting steps, as the tutorial's
          ``effective_step`` did, is indexing: ``output[:, [4, 9]]``. It may be a
          channels-last strided tensor (below): call ``.contiguous()`` before ``.view``.
        - ``states``: list of ``num_layers * D`` pairs ``(h_n, c_n)`` as described for ``state``.

        Where it measures faster (see :mod:`convlstm._plan`), 2-D layers run in the channels-last
        memory format, and ``output`` and ``states`` are then channels-last strided tensors: equal
        values, but ``.view`` needs ``.contiguous()`` first.

    Attributes:
        cells: ``nn.ModuleList`` of the forward cells, in layer order.
        cells_reverse: the reverse-direction cells if ``bidirectional``, else ``None``.

    Example:
        >>> layer = ConvLSTM(1, [16, 8], 3, spatial_dims=2)
        >>> output, states = layer(torch.randn(4, 10, 1, 32, 32))
        >>> tuple(output.shape), len(states), tuple(states[-1][0].shape)
        ((4, 10, 8, 32, 32), 2, (4, 8, 32, 32))
        >>> output, _ = layer(torch.randn(4, 1, 32, 32), steps=5)   # one frame fed 5 times
        >>> tuple(output[:, [1, 4]].shape)                           # outputs at steps 1 and 4
        (4, 2, 8, 32, 32)
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | list[int],
        kernel_size: int | Sequence[int] | list,
        num_layers: int | None = None,
        *,
        spatial_dims: int,
        batch_first: bool = True,
        bidirectional: bool = False,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        stride: int | Sequence[int] | list = 1,
        padding: Padding = "same",
        dilation: int | Sequence[int] | list = 1,
        bias: bool = True,
        peephole: str | None = None,
        spatial_size: int | Sequence[int] | None = None,
        activation: Activation = "tanh",
        recurrent_activation: Activation = "sigmoid",
        unit_forget_bias: bool = True,
        norm: str | None = None,
        norm_groups: int = 4,
        checkpoint_steps: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.checkpoint_steps = bool(checkpoint_steps)
        if isinstance(hidden_channels, list):
            if num_layers is not None and num_layers != len(hidden_channels):
                raise ValueError(
                    f"num_layers must equal len(hidden_channels) when hidden_channels is a list, "
                    f"got num_layers={num_layers} and {len(hidden_channels)} hidden sizes"
                )
            if not hidden_channels:
                raise ValueError("hidden_channels must not be an empty list")
            hidden = list(hidden_channels)
        else:
            hidden = [hidden_channels] * check_positive(
                1 if num_layers is None else num_layers, "num_layers"
            )
        self.num_layers = len(hidden)
        self.hidden_channels = hidden
        self.in_channels = check_positive(in_channels, "in_channels")
        self.spatial_dims = spatial_dims
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dropout = check_probability(dropout, "dropout")
        if self.dropout and self.num_layers == 1:
            warnings.warn(
                "dropout acts between layers, after all but the last, so non-zero dropout "
                f"expects num_layers greater than 1, but got dropout={self.dropout} and "
                f"num_layers={self.num_layers}",
                UserWarning,
                stacklevel=2,
            )
        self.recurrent_dropout = check_probability(recurrent_dropout, "recurrent_dropout")
        kernels = _per_layer(kernel_size, self.num_layers, "kernel_size")
        strides = _per_layer(stride, self.num_layers, "stride")
        dilations = _per_layer(dilation, self.num_layers, "dilation")
        directions = 2 if bidirectional else 1
        common: dict[str, Any] = dict(
            spatial_dims=spatial_dims,
            padding=padding,
            bias=bias,
            peephole=peephole,
            activation=activation,
            recurrent_activation=recurrent_activation,
            unit_forget_bias=unit_forget_bias,
            norm=norm,
            norm_groups=norm_groups,
            device=device,
            dtype=dtype,
        )
        stacks: list[list[ConvLSTMCell]] = [[] for _ in range(directions)]
        channels, size = in_channels, spatial_size
        for layer in range(self.num_layers):
            for cells in stacks:
                cells.append(
                    ConvLSTMCell(
                        channels,
                        hidden[layer],
                        kernels[layer],
                        stride=strides[layer],
                        dilation=dilations[layer],
                        spatial_size=size,
                        **common,
                    )
                )
            last = stacks[0][-1]
            if last.spatial_size is not None:  # given: the next layer's input size
                size = last.output_size(last.spatial_size)
            channels = directions * hidden[layer]
        self.cells = nn.ModuleList(stacks[0])
        self.cells_reverse = nn.ModuleList(stacks[1]) if bidirectional else None

    @property
    def out_channels(self) -> int:
        """Channels of ``output``: ``D * hidden_channels[-1]``."""
        return (2 if self.bidirectional else 1) * self.hidden_channels[-1]

    def reset_parameters(self) -> None:
        """Re-initialise every cell (see :meth:`ConvLSTMCell.reset_parameters`)."""
        for cell in self._all_cells():
            cell.reset_parameters()

    def _all_cells(self) -> list[ConvLSTMCell]:
        return [*self.cells, *(self.cells_reverse or [])]

    def forward(
        self,
        input: Tensor,
        state: Sequence[State] | State | None = None,
        *,
        steps: int | None = None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, list[State]]:
        """Run the stack; see the class docstring for shapes."""
        # nn.ModuleList is not generic: its items type as Module, cast to the cells they are.
        first = cast(ConvLSTMCell, self.cells[0])
        if steps is not None:
            check_positive(steps, "steps")
            first.check_input(input, "input")
            x: Tensor = input
            num_steps = steps
        else:
            if isinstance(input, Tensor) and input.dim() == self.spatial_dims + 2:
                raise ValueError(
                    f"input has {input.dim()} dimensions, a single frame: pass steps=N to feed it "
                    f"N times, or a sequence with {self.spatial_dims + 3} dimensions"
                )
            first.check_input(input, "input", frame_dims=1)
            x = input if self.batch_first else input.transpose(0, 1)
            num_steps = x.shape[1]
            if num_steps == 0:
                raise ValueError(
                    f"input must hold at least one time step, got T=0 (shape "
                    f"{tuple(input.shape)}, {'(B, T' if self.batch_first else '(T, B'}, ...))"
                )
        batch = x.shape[0]
        self._check_deeper_sizes(tuple(x.shape[-self.spatial_dims :]))
        valid = self._valid_mask(lengths, batch, num_steps, x.device)
        states = self._split_state(state, batch, x.shape[-self.spatial_dims :])

        final: list[State] = []
        for layer in range(self.num_layers):
            directions = [cast(ConvLSTMCell, self.cells[layer])]
            if self.cells_reverse is not None:
                directions.append(cast(ConvLSTMCell, self.cells_reverse[layer]))
            outputs = []
            for d, cell in enumerate(directions):
                out, last = self._run(
                    cell, x, num_steps, states[layer * len(directions) + d], valid, reverse=d == 1
                )
                outputs.append(out)
                final.append(last)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        output = x if self.batch_first else x.transpose(0, 1)
        return output, final

    def _check_deeper_sizes(self, size: tuple[int, ...]) -> None:
        """Raise a clear error if a layer after the first would receive an empty input."""
        cells = cast("Sequence[ConvLSTMCell]", self.cells)
        for index, cell in enumerate(cells):
            state_size = cell.output_size(size)
            if index + 1 < self.num_layers and any(
                n < 1 for n in cells[index + 1].output_size(state_size)
            ):
                raise ValueError(
                    f"input spatial size is too small for layer {index + 1}: it receives "
                    f"{state_size} from layer {index}, too small for its "
                    f"kernel_size={cells[index + 1].kernel_size}"
                )
            size = state_size

    def _valid_mask(
        self, lengths: Tensor | None, batch: int, steps: int, device: torch.device
    ) -> Tensor | None:
        """``(B, T)`` bool mask of the steps inside each sequence, or None if all are."""
        if lengths is None:
            return None
        if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.shape[0] != batch:
            shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
            raise ValueError(f"lengths must be a 1-D tensor of {batch} lengths (B,), got {shape}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
        lengths = lengths.to(device)
        if not torch.compiler.is_compiling():
            low, high = int(lengths.min()), int(lengths.max())
            if low < 1 or high > steps:
                raise ValueError(
                    f"lengths must lie in [1, {steps}] (the number of steps), got values in "
                    f"[{low}, {high}]"
                )
        return torch.arange(steps, device=device) < lengths[:, None]

    def _split_state(
        self, state: Sequence[State] | State | None, batch: int, size: Sequence[int]
    ) -> list[State | None]:
        directions = 2 if self.bidirectional else 1
        count = self.num_layers * directions
        if state is None:
            return [None] * count
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], Tensor):
            state = [state]  # a single (h, c) pair
        if not isinstance(state, Sequence) or len(state) != count:
            got = len(state) if isinstance(state, Sequence) else type(state).__name__
            raise ValueError(
                f"state must be a list of num_layers * directions = {count} (h, c) pairs, got {got}"
            )
        checked: list[State | None] = []
        for index, cell in enumerate(self._ordered_cells()):
            state_size = cell.output_size(size)
            checked.append(cell.check_state(state[index], batch, state_size, f"state[{index}]"))
            if (index + 1) % directions == 0:
                size = state_size
        return checked

    def _ordered_cells(self) -> list[ConvLSTMCell]:
        if self.cells_reverse is None:
            cells = list(self.cells)
        else:
            cells = [c for pair in zip(self.cells, self.cells_reverse, strict=True) for c in pair]
        return cast("list[ConvLSTMCell]", cells)

    def _run(
        self,
        cell: ConvLSTMCell,
        x: Tensor,
        steps: int,
        state: State | None,
        valid: Tensor | None,
        reverse: bool,
    ) -> tuple[Tensor, State]:
        """One direction of one layer: ``x`` ``(B, T, C, *S)`` (or one frame ``(B, C, *S)``) ->
        ``output (B, T, C_h, *S')`` and the final ``(h, c)``."""
        batch = x.shape[0]
        repeated = x.dim() == self.spatial_dims + 2  # one frame fed at every step
        frame = x if repeated else x[:, 0]
        geometry = cell.geometry(frame.shape[2:])
        checkpointed = self.checkpoint_steps and torch.is_grad_enabled()
        described: dict[str, Any] = dict(
            dtype=cell.weight_hh.dtype, repeated=repeated, masked=valid is not None,
            checkpointed=checkpointed,
        )  # fmt: skip
        key = _plan.tuning_key(geometry, frame, steps, **described)
        forced: contextlib.AbstractContextManager = contextlib.nullcontext()
        if key is not None:  # fast.settings(autotune=True): time the choices once per shape
            trial = functools.partial(self._trial, cell, x, steps, state, valid, reverse)
            forced = fast.settings(**_plan.tune(key, _plan.choices(geometry), trial))
        with forced:
            plan = _plan.plan_layer(geometry, frame, steps, **described)
        channels_last = plan.channels_last
        if channels_last and state is not None:
            state = (to_channels_last(state[0]), to_channels_last(state[1]))
        h_mask = None
        if self.recurrent_dropout and self.training:
            shape = (batch, cell.hidden_channels, *geometry.output_size)
            h_mask = F.dropout(frame.new_ones(shape), self.recurrent_dropout, training=True)
            h_mask = to_channels_last(h_mask) if channels_last else h_mask
        if plan.fused:
            run = Run(
                geometry, steps, reverse, recompute=checkpointed, norm_groups=cell.gate_groups
            )
            return _run_fused_loop(cell, x, state, h_mask, run, channels_last)
        order = None
        times = range(steps)
        if reverse and valid is None:
            times = range(steps - 1, -1, -1)
        elif reverse:  # reverse each sequence within its length: reorder the frames
            order = self._reverse_order(valid, batch, steps, x.device)
            if not repeated:
                x = x[torch.arange(batch, device=x.device)[:, None], order]
        # One input convolution for the whole sequence, or one per step (joint with the
        # recurrent convolution), or one per chunk inside its checkpoint (no gate tensor kept).
        per_step = plan.input_conv in ("joint", "per_step")
        if plan.input_conv == "once":
            frames = to_channels_last(x) if channels_last else x
            gates = cell.input_conv(frames).unsqueeze(1).expand(-1, steps, *(-1,) * (x.dim() - 1))
        elif per_step:
            frames = to_channels_last(x.flatten(0, 1)).view(x.shape) if channels_last else x
        else:
            frames = x.flatten(0, 1)
            gates = cell.input_conv(to_channels_last(frames) if channels_last else frames)
            gates = gates.view(batch, steps, *gates.shape[1:])
        joint_weight = cell.joint_weight() if plan.input_conv == "joint" else None
        outputs: list[Tensor] = []
        if checkpointed:
            # One checkpoint per chunk of about sqrt(T) steps, each chunk's input convolution
            # in one call inside it: it keeps each chunk's first state and the outputs.
            sources = gates[:, 0] if repeated else frames
            outputs, state = _run_checkpointed(
                cell, list(times), sources, not repeated, channels_last, state, h_mask, valid
            )
            times = range(0)
        # unbind, not indexing per step: the backward of T selects would build T full-size
        # zero tensors, that of one unbind stacks the T gradients once.
        inputs = (frames if per_step else gates).unbind(1) if times else ()
        for t in times:
            if joint_weight is None:
                h, c = cell.step(inputs[t], state, h_mask)
            elif state is None:
                h, c = cell.step(cell.input_conv(inputs[t]), None)
            else:
                h, c = cell.joint_step(inputs[t], state, joint_weight, h_mask)
            output, state = _advance(h, c, state, None if valid is None else valid[:, t])
            outputs.append(output)
        if reverse and valid is None:
            outputs.reverse()
        out = _stack_steps(outputs, channels_last)
        if order is not None:
            out = out[torch.arange(batch, device=x.device)[:, None], order]
        assert state is not None
        return out, state

    def _trial(
        self,
        cell: ConvLSTMCell,
        x: Tensor,
        steps: int,
        state: State | None,
        valid: Tensor | None,
        reverse: bool,
        choice: dict[str, Any],
    ) -> None:
        """:meth:`_run` on detached copies with ``choice`` forced (:func:`convlstm.fast.settings`),
        and its backward if autograd is on: one timing of :func:`convlstm._plan.tune`. The
        gradients are returned by ``torch.autograd.grad``, not accumulated into ``.grad``."""
        inputs = x.detach().requires_grad_(x.requires_grad)
        if state is not None:
            state = (state[0].detach(), state[1].detach())
        with fast.settings(**choice):
            out, _ = self._run(cell, inputs, steps, state, valid, reverse)
        if out.requires_grad:
            wanted = [t for t in (inputs, *cell.parameters()) if t.requires_grad]
            torch.autograd.grad(out, wanted, torch.ones_like(out), allow_unused=True)

    @staticmethod
    def _reverse_order(
        valid: Tensor | None, batch: int, steps: int, device: torch.device
    ) -> Tensor:
        """``(B, T)`` time indices that reverse each sequence within its length (an involution)."""
        t = torch.arange(steps, device=device).expand(batch, steps)
        if valid is None:
            return t.flip(1)
        lengths = valid.sum(1, keepdim=True)
        return torch.where(valid, lengths - 1 - t, t)

    def extra_repr(self) -> str:
        first = self.cells[0]
        s = f"{self.in_channels}, {self.hidden_channels}, kernel_size={first.kernel_size}"
        s += f", num_layers={self.num_layers}, spatial_dims={self.spatial_dims}"
        if not self.batch_first:
            s += ", batch_first=False"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        if self.checkpoint_steps:
            s += ", checkpoint_steps=True"
        return s


def _stack_steps(outputs: list[Tensor], channels_last: bool) -> Tensor:
    """Stack ``T`` tensors ``(B, C, *S)`` to ``(B, T, C, *S)``; channels-last ones so that each
    frame stays channels-last and ``flatten(0, 1)`` is a view, ready for the next layer."""
    if not channels_last:
        return torch.stack(outputs, dim=1)
    return torch.stack([o.movedim(1, -1) for o in outputs], dim=1).movedim(-1, 2)


def _run_fused_loop(
    cell: ConvLSTMCell,
    x: Tensor,
    state: State | None,
    h_mask: Tensor | None,
    run: Run,
    channels_last: bool,
) -> tuple[Tensor, State]:
    """:meth:`ConvLSTM._run` as one autograd node per layer (:mod:`convlstm._recurrence`):
    ``x`` ``(B, T, C, *S)`` -> ``output (B, T, C_h, *S')`` (a view of time-major memory) and the
    final ``(h, c)``; ``run.recompute`` recomputes the gates in backward instead of saving them."""
    batch, steps = x.shape[:2]
    frames = x.transpose(0, 1).reshape(steps * batch, *x.shape[2:])
    frames = to_channels_last(frames) if channels_last else frames
    peepholes: list[Tensor | None] = [cell.weight_ci, cell.weight_cf, cell.weight_co]
    if channels_last and cell.peephole == "spatial":  # (C, H, W) in the states' memory order
        cl = torch.channels_last
        peepholes = [
            w.unsqueeze(0).contiguous(memory_format=cl)[0] for w in peepholes if w is not None
        ]
    w_ci, w_cf, w_co = peepholes
    weights = (cell.weight_ih, cell.bias, cell.weight_hh, w_ci, w_cf, w_co, cell.norm_weight)
    hs, c_last = recurrence(frames, state, weights, h_mask, run)
    out = hs.unflatten(0, (steps, batch)).transpose(0, 1)
    return out, (out[:, 0 if run.reverse else -1], c_last)


def _run_checkpointed(
    cell: ConvLSTMCell,
    times: list[int],
    sources: Tensor,
    is_frames: bool,
    channels_last: bool,
    state: State | None,
    h_mask: Tensor | None,
    valid: Tensor | None,
) -> tuple[list[Tensor], State]:
    """The steps ``times`` (in run order) as checkpoints of about ``sqrt(T)`` steps each.

    ``sources`` are the frames ``(B, T, C_in, *S)`` (``is_frames``) or, for one frame fed at every
    step, its input convolution ``(B, 4*C_h, *S')``. Returns the output ``h`` of each step, in run
    order, and the last state. Per chunk, backward keeps its first state and its outputs, and
    reruns the chunk (one input convolution for its frames) -- one checkpoint per chunk rather
    than per step: fewer replays of the checkpoint machinery and a batched convolution.
    """
    size = math.isqrt(len(times) - 1) + 1
    outputs: list[Tensor] = []
    for start in range(0, len(times), size):
        group = times[start : start + size]
        lo, hi = min(group), max(group) + 1
        source = sources[:, lo:hi] if is_frames else sources
        mask = None if valid is None else valid[:, lo:hi]
        h0, c0 = (None, None) if state is None else state
        result = checkpoint(
            _checkpointed_chunk, cell, [t - lo for t in group], source, is_frames, channels_last,
            h0, c0, h_mask, mask, use_reentrant=False,
        )  # fmt: skip
        outputs.extend(result[:-2])
        state = (result[-2], result[-1])
    assert state is not None
    return outputs, state


def _checkpointed_chunk(
    cell: ConvLSTMCell,
    times: list[int],
    source: Tensor,
    is_frames: bool,
    channels_last: bool,
    h: Tensor | None,
    c: Tensor | None,
    h_mask: Tensor | None,
    valid: Tensor | None,
) -> tuple[Tensor, ...]:
    """Steps ``times`` (indices into the chunk, in run order) from ``(h, c)`` (``None`` for
    zeros): ``source`` the chunk's frames ``(B, k, C_in, *S)`` (``is_frames``) or the input
    convolution fed at every step; ``valid`` ``(B, k)`` or ``None``. Returns each step's output
    ``h`` (zero past a sequence's end), then the final ``(h, c)``."""
    if is_frames:
        batch, count = source.shape[:2]
        rows = source.reshape(batch * count, *source.shape[2:])
        gates = cell.input_conv(to_channels_last(rows) if channels_last else rows)
        inputs = gates.view(batch, count, *gates.shape[1:]).unbind(1)
    else:
        inputs = (source,) * (max(times) + 1)
    state = None if h is None or c is None else (h, c)
    outputs = []
    for t in times:
        h_new, c_new = cell.step(inputs[t], state, h_mask)
        output, state = _advance(h_new, c_new, state, None if valid is None else valid[:, t])
        outputs.append(output)
    assert state is not None
    return (*outputs, *state)


def _advance(
    h: Tensor, c: Tensor, state: State | None, keep: Tensor | None
) -> tuple[Tensor, State]:
    """A step's output and the state after it, from its ``(h, c)``, the state before it
    (``None`` for zeros) and ``keep`` ``(B,)``, whether the step lies within each sequence
    (``None``: all do); past a sequence's end the output is zero and the state unchanged."""
    if keep is None:
        return h, (h, c)
    keep = keep.view(-1, *(1,) * (h.dim() - 1))
    if state is None:
        return h * keep, (h * keep, c * keep)
    return h * keep, (torch.where(keep, h, state[0]), torch.where(keep, c, state[1]))


class ConvLSTM1d(ConvLSTM):
    """:class:`ConvLSTM` over sequences of 1-D frames ``(B, T, C_in, W)``.

    >>> ConvLSTM1d(2, 4, 3)(torch.randn(1, 5, 2, 10))[0].shape
    torch.Size([1, 5, 4, 10])
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | list[int],
        kernel_size,
        num_layers: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels, hidden_channels, kernel_size, num_layers, spatial_dims=1, **kwargs
        )


class ConvLSTM2d(ConvLSTM):
    """:class:`ConvLSTM` over sequences of images ``(B, T, C_in, H, W)``.

    >>> ConvLSTM2d(2, 4, 3)(torch.randn(1, 5, 2, 8, 8))[0].shape
    torch.Size([1, 5, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | list[int],
        kernel_size,
        num_layers: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels, hidden_channels, kernel_size, num_layers, spatial_dims=2, **kwargs
        )


class ConvLSTM3d(ConvLSTM):
    """:class:`ConvLSTM` over sequences of volumes ``(B, T, C_in, D, H, W)``.

    >>> ConvLSTM3d(2, 4, 3)(torch.randn(1, 3, 2, 4, 6, 6))[0].shape
    torch.Size([1, 3, 4, 4, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | list[int],
        kernel_size,
        num_layers: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels, hidden_channels, kernel_size, num_layers, spatial_dims=3, **kwargs
        )
