"""A whole layer as one autograd node: the input convolution of the sequence, then the recurrent
convolutions and gate arithmetic of all ``T`` steps.

Shape legend: ``T`` steps, ``B`` batch, ``C_in`` input and ``C`` hidden channels, ``*S`` input
and ``*S'`` state spatial size; ``N = T*B``. Frames are time-major: row ``t*B + b`` of an
``(N, ...)`` tensor is step ``t`` of sequence ``b``.

Per-step autograd keeps, for every step, the recurrent convolution's input, the gate activations,
the cell state and a copy of ``h`` in the stacked output; its backward then holds the gradient of
all gate pre-activations twice (per step, then stacked for the input convolution) next to what is
still saved. :class:`Recurrence` writes ``h`` and ``c`` straight into two ``(N, C, *S')``
buffers (the output is one of them) and the activations over the input convolution's output. It
saves its input, the activations, ``h`` and only the ``c`` where each chunk of steps begins: its
backward walks back through time a chunk at a time, replays the chunk's ``c`` from those
(``c' = f∘c + i∘g``, the forward pass's own operations, so the same values) and hands the chunk's
gate gradients to the input convolution's and the recurrent kernel's weight gradients (one batched
call each), so the gate gradients of only one chunk exist at once.

With ``recompute=True`` (the layer's ``checkpoint_steps``) it saves no activations either, only
its input, ``h`` (the output, held anyway) and the chunks' first ``c``, and the chunks are about
``sqrt(T)`` steps long. Backward reruns each chunk as the forward pass did (its input convolution
in one call, then step by step from the chunk's first ``h`` and ``c``) before walking back through
it: one more forward pass of the convolutions, for no saved gate tensor.

With ``norm`` (``Run.norm_groups``: the cell's layer or group norm of the gate
pre-activations, whose shift is the bias) each step normalises the two convolutions' sum before
the gates; the node then keeps the sums (what the norm's backward reads) and the activations in
two buffers, and the norm's mean and reciprocal deviation; backward passes the gates' gradient
back through the norm before the convolutions. Not with ``recompute``.

Saved tensors are never modified: backward may run twice (``retain_graph=True``). Values and
gradients equal per-step autograd's up to rounding (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from convlstm import _gates
from convlstm._geometry import CellGeometry
from convlstm._layout import is_channels_last, to_channels_last

__all__ = ["CHUNKS", "Recurrence", "Run", "Weights", "recurrence"]

_conv_backward = torch.ops.aten.convolution_backward
# oneDNN's convolution with an "add" post-op, which accumulates into its destination in place
# (the op inductor uses for conv + add on CPU).
_conv_add = getattr(torch.ops.mkldnn, "_convolution_pointwise_", None)
_group_norm_into = torch.ops.aten.native_group_norm.out
_group_norm_backward = torch.ops.aten.native_group_norm_backward.default

CHUNKS = 4
"""Backward hands the gate gradients to the weight gradients in this many chunks of steps."""

Weights = tuple[
    Tensor, Tensor | None, Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None
]
"""``(W_ih, bias, W_hh, w_ci, w_cf, w_co, w_norm)`` (see :func:`recurrence`)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """What the node runs besides its tensors: the cell's ``geometry`` (odd kernels, symmetric
    padding), ``steps`` ``T``, ``reverse`` (from the last frame to the first) and ``recompute``
    (save no gate activations; recompute them in backward, a chunk of steps at a time)."""

    geometry: CellGeometry
    steps: int
    reverse: bool = False
    recompute: bool = False
    norm_groups: int = 0
    """Groups of the gates' group norm (4: layer norm), 0 without ``norm``."""
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.norm_groups and self.recompute:
            raise ValueError("the fused node does not recompute normalised gates")

    def input_conv(self, frames: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
        """The input convolution of ``frames`` ``(N, C_in, *S)`` -> ``(N, 4C, *S')``; with
        ``norm`` the bias is the norm's shift, not the convolution's."""
        g = self.geometry
        bias = None if self.norm_groups else bias
        return g.conv(frames, w_ih, bias, g.stride, g.input_padding, g.dilation)


class _Norm(NamedTuple):
    """What the steps of a normalised layer write besides ``h`` and ``c``: the normalised gates
    (then their activations) ``(T, B, 4C, *S')``, and the norm's ``mean`` and ``rstd``, each
    ``(T, B, G)``; and what it normalises with: the gain ``(4C,)``, the shift (the bias,
    ``(4C,)`` or ``None``), the groups ``G`` and ``eps``."""

    act: Tensor
    mean: Tensor
    rstd: Tensor
    weight: Tensor | None
    bias: Tensor | None
    groups: int
    eps: float

    @staticmethod
    def buffers(pre: Tensor, steps: int, weight: Tensor | None, bias: Tensor | None,
                run: Run) -> _Norm:  # fmt: skip
        """Empty buffers for the sums ``pre`` ``(N, 4C, *S')`` of a run of ``steps`` steps."""
        stats = pre.new_empty(2, steps, pre.shape[0] // steps, run.norm_groups)
        act = torch.empty_like(pre).unflatten(0, (steps, -1))
        return _Norm(act, stats[0], stats[1], weight, bias, run.norm_groups, run.eps)

    def apply(self, pre: Tensor, slot: int) -> Tensor:
        """Normalise one step's sums ``pre`` ``(B, 4C, *S')`` into ``act[slot]``; returns it."""
        batch, channels = pre.shape[:2]
        _group_norm_into(
            pre, self.weight, self.bias, batch, channels, pre[0, 0].numel(), self.groups,
            self.eps, out0=self.act[slot], out1=self.mean[slot], out2=self.rstd[slot],
        )  # fmt: skip
        return self.act[slot]

    def backward(self, d: Tensor, pre: Tensor, slot: int, need: tuple[bool, bool]) -> tuple:
        """Turn ``d`` (the gradient of step ``slot``'s normalised gates) into that of its sums
        ``pre``, in place; returns the gradients of the gain and the shift (``need`` says which)."""
        batch, channels = pre.shape[:2]
        mask = [True, need[0] and self.weight is not None, need[1] and self.bias is not None]
        dx, dw, db = _group_norm_backward(
            d, pre, self.mean[slot], self.rstd[slot], self.weight, batch, channels,
            pre[0, 0].numel(), self.groups, mask,
        )  # fmt: skip
        d.copy_(dx)
        return dw, db


class _Saved(NamedTuple):
    """What backward reads of the forward pass (besides the activations and ``c``)."""

    frames: Tensor
    w_ih: Tensor
    bias: Tensor | None
    hs: Tensor
    h0: Tensor | None
    h_mask: Tensor | None
    w_hh: Tensor


def _order(steps: int, reverse: bool) -> list[int]:
    return list(range(steps - 1, -1, -1) if reverse else range(steps))


def _add_recurrent_conv(pre: Tensor, h: Tensor, w_hh: Tensor, geometry: CellGeometry) -> None:
    """``pre += conv(h, w_hh)`` (the recurrent convolution), ``pre`` ``(B, 4C, *S')``: on CPU
    for 2-D float32/bfloat16 one oneDNN call that adds into ``pre``, saving a ``(B, 4C, *S')``
    output and a pass over it per step."""
    padding = geometry.hh_padding
    if (
        _conv_add is not None
        and pre.is_cpu
        and pre.dim() == 4
        and pre.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    ):
        ones = [1, 1]
        _conv_add.binary(
            pre, h, w_hh, None, list(padding), ones, ones, 1, "add", 1.0, None, [], None
        )
    else:
        pre.add_(geometry.conv(h, w_hh, None, 1, padding))


def _run_steps(
    times: list[int],
    pre: Tensor,
    state: tuple[Tensor | None, Tensor | None],
    weights: tuple[Tensor, Tensor | None, Tensor | None, Tensor | None],
    h_mask: Tensor | None,
    geometry: CellGeometry,
    h_out: Sequence[Tensor],
    c_out: Tensor,
    norm: _Norm | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Run the consecutive steps ``times``, in that order, from ``state`` ``(h, c)``.

    With ``low = min(times)``, step ``t`` adds the recurrent convolution to its pre-activations
    ``pre[t - low]`` ``(B, 4C, *S')``, overwrites them with the activations (with ``norm``, it
    normalises them into ``norm.act[t - low]`` and overwrites those) and writes its ``h`` and
    ``c`` into ``h_out[t - low]`` and ``c_out[t - low]``. Returns the last ``(h, c)``.
    """
    w_hh, w_ci, w_cf, w_co = weights
    low = min(times)
    h, c = state
    for t in times:
        step = pre[t - low]
        if h is not None:
            _add_recurrent_conv(step, h if h_mask is None else h * h_mask, w_hh, geometry)
        if norm is not None:
            step = norm.apply(step, t - low)
        h, c = _gates.activate(
            step, c, w_ci, w_cf, w_co, h_out=h_out[t - low], c_out=c_out[t - low]
        )
    return h, c


def _forward(
    frames: Tensor,
    state: tuple[Tensor | None, Tensor | None],
    weights: Weights,
    h_mask: Tensor | None,
    run: Run,
    recompute: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, _Norm | None]:
    """The layer's forward pass: ``(hs, cs, act, c_last, norm)``.

    ``hs`` ``(N, C, *S')`` holds ``h`` of every step (the output), ``c_last`` ``(B, C, *S')`` the
    final ``c``. Without ``recompute``, ``act`` ``(N, 4C, *S')`` holds every step's activations
    (with ``norm``: the convolutions' sums, and ``norm.act`` the activations) and ``cs``
    ``(T, B, C, *S')`` every ``c``. With it, the input convolution runs a chunk of steps at a
    time, no more than a chunk of activations exists at once, ``act`` is ``None`` and ``cs`` is
    what :func:`_chunk_starts` would keep of every ``c``. ``recompute`` overrides
    ``run.recompute`` (without autograd there is nothing to save).
    """
    steps, reverse, geometry = run.steps, run.reverse, run.geometry
    w_ih, bias, w_hh, w_ci, w_cf, w_co, w_norm = weights
    w_ih, w_hh = _kernels_like(frames, w_ih, w_hh)
    hh = (w_hh, w_ci, w_cf, w_co)
    channels, batch = w_hh.shape[1], frames.shape[0] // steps
    if not recompute:
        act = run.input_conv(frames, w_ih, bias)
        hs = _empty_like(act, act.shape[0], channels)
        h_steps = hs.unflatten(0, (steps, -1))
        c_steps = torch.empty_like(h_steps)
        pre = act.unflatten(0, (steps, -1))
        norm = _Norm.buffers(act, steps, w_norm, bias, run) if run.norm_groups else None
        times = _order(steps, reverse)
        _, c = _run_steps(times, pre, state, hh, h_mask, geometry, h_steps, c_steps, norm)
        assert c is not None
        return hs, c_steps, act, c.clone(), norm
    x_steps = frames.unflatten(0, (steps, -1))
    groups = _groups(steps, reverse, True)
    runs = groups[::-1]  # the chunks in the order they run
    pre = _chunk_input(runs[0], x_steps, w_ih, bias, run)
    hs = _empty_like(pre[0], steps * batch, channels)
    h_steps = hs.unflatten(0, (steps, -1))
    cs = torch.empty_like(h_steps[: len(runs) - 1])
    c_chunk = torch.empty_like(h_steps[: len(groups[0])])
    h, c = state
    for index, group in enumerate(runs):
        if index:
            assert c is not None
            cs[-index].copy_(c)  # cs[slot] for groups[slot], this chunk
            pre = _chunk_input(group, x_steps, w_ih, bias, run)
        h_chunk = h_steps[min(group) : max(group) + 1]
        times = sorted(group, reverse=reverse)
        h, c = _run_steps(times, pre, (h, c), hh, h_mask, geometry, h_chunk, c_chunk)
    assert c is not None
    return hs, cs, None, c.clone(), None


def _chunk_starts(c_steps: Tensor, steps: int, reverse: bool) -> Tensor:
    """Of ``c_steps`` ``(T, B, C, *S')``, the ``c`` each chunk of :func:`_groups` (without
    recompute) starts from, but the last chunk's (the initial state): ``(len(groups) - 1, B, C,
    *S')``, what backward replays the other steps' ``c`` from."""
    groups = _groups(steps, reverse, False)
    starts = torch.empty_like(c_steps[: len(groups) - 1])
    for slot, group in enumerate(groups[:-1]):
        starts[slot].copy_(c_steps[_entering(group, steps, reverse)])
    return starts


def _replay_cells(times: list[int], act: Tensor, c: Tensor | None, c_out: Tensor) -> None:
    """Write ``c`` of the consecutive steps ``times`` (in run order) into ``c_out[t - min(times)]``
    from their activations ``act[t - min(times)]`` ``(B, 4C, *S')`` and the ``c`` before them,
    with the forward pass's :func:`convlstm._gates.cell_state`, so the same values."""
    low = min(times)
    for t in times:
        i, f, g, _ = act[t - low].chunk(4, dim=1)
        c = _gates.cell_state(i, f, g, c, c_out[t - low])


def _chunk_input(
    group: list[int], x_steps: Tensor, w_ih: Tensor, bias: Tensor | None, run: Run
) -> Tensor:
    """The input convolution of the consecutive steps ``group`` of ``x_steps`` ``(T, B, C_in, *S)``,
    in time order: ``(len(group), B, 4C, *S')``."""
    rows = x_steps[min(group) : max(group) + 1]
    return run.input_conv(rows.flatten(0, 1), w_ih, bias).unflatten(0, rows.shape[:2])


def _groups(steps: int, reverse: bool, recompute: bool) -> list[list[int]]:
    """The chunks of consecutive steps that backward takes in turn, each listed in backward
    order (the last step run first): ``CHUNKS`` chunks, or chunks of ``ceil(sqrt(steps))`` steps
    if it recomputes them (keeping one ``c`` per chunk and one chunk's gates at a time)."""
    chunk = math.isqrt(steps - 1) + 1 if recompute else math.ceil(steps / CHUNKS)
    backward_order = _order(steps, reverse)[::-1]
    return [backward_order[start : start + chunk] for start in range(0, steps, chunk)]


class Recurrence(torch.autograd.Function):
    """Autograd node of :func:`recurrence`; saves the input, ``h`` and either the activations and
    every ``c`` or (``recompute``) the ``c`` entering each chunk of steps."""

    @staticmethod
    def forward(
        ctx,
        frames: Tensor,
        w_ih: Tensor,
        bias: Tensor | None,
        h0: Tensor | None,
        c0: Tensor | None,
        w_hh: Tensor,
        w_ci: Tensor | None,
        w_cf: Tensor | None,
        w_co: Tensor | None,
        w_norm: Tensor | None,
        h_mask: Tensor | None,
        run: Run,
    ) -> tuple[Tensor, Tensor]:
        weights = (w_ih, bias, w_hh, w_ci, w_cf, w_co, w_norm)
        hs, cs, act, c_last, norm = _forward(frames, (h0, c0), weights, h_mask, run, run.recompute)
        if not run.recompute:
            cs = _chunk_starts(cs, run.steps, run.reverse)
        ctx.set_materialize_grads(False)
        stats = (None, None, None) if norm is None else (norm.act, norm.mean, norm.rstd)
        saved = (frames, w_ih, bias, act, hs, cs, h0, c0, w_hh, w_ci, w_cf, w_co, h_mask)
        ctx.save_for_backward(*saved, w_norm, *stats)
        ctx.run = run
        return hs, c_last

    @staticmethod
    def backward(ctx, d_hs: Tensor | None, d_c_last: Tensor | None) -> tuple[Tensor | None, ...]:
        frames, w_ih, bias, act, hs, cs, h0, c0, w_hh, w_ci, w_cf, w_co, h_mask, *rest = (
            ctx.saved_tensors
        )
        run: Run = ctx.run
        w_norm, normed, mean, rstd = rest
        norm = None
        if run.norm_groups:
            norm = _Norm(normed, mean, rstd, w_norm, bias, run.norm_groups, run.eps)
        steps, reverse, recompute, geometry = run.steps, run.reverse, run.recompute, run.geometry
        need = ctx.needs_input_grad
        w_ih, w_hh = _kernels_like(frames, w_ih, w_hh)
        hh = _backward_args(geometry, recurrent=True)
        input_only = [True, False, False]  # the recurrent convolution's gradient of h, per step
        batch = frames.shape[0] // steps
        h_steps = hs.unflatten(0, (steps, -1))
        d_h_steps = None if d_hs is None else d_hs.unflatten(0, (steps, -1))
        peepholes = (w_ci, w_cf, w_co)
        grads: dict[str, Tensor | None] = dict.fromkeys(
            ("x", "w_ih", "b", "w_hh", "ci", "cf", "co", "norm")
        )
        if need[0]:
            grads["x"] = torch.empty_like(frames)
        groups = _groups(steps, reverse, recompute)
        chunk = len(groups[0])
        d_chunk = _empty_like(hs, chunk * batch, 4 * w_hh.shape[1]).unflatten(0, (chunk, batch))
        c_buffer = torch.empty_like(h_steps[:chunk])
        if recompute:
            x_steps, scratch = frames.unflatten(0, (steps, -1)), [torch.empty_like(h_steps[0])]
        else:
            pre_steps = act.unflatten(0, (steps, -1))  # with norm: the sums it normalised
            a_steps = pre_steps if norm is None else norm.act
        order = _order(steps, reverse)
        position = {t: k for k, t in enumerate(order)}
        dh_carry = None
        dc = d_c_last
        conv_bias = None if norm is not None else bias
        saved = _Saved(frames, w_ih, conv_bias, hs, h0, h_mask, w_hh)
        for slot, group in enumerate(groups):
            # A step's slot in the chunk's tensors is its time index minus the group's lowest,
            # so the slots are in time order.
            low, count = min(group), len(group)
            before = _entering(group, steps, reverse)
            c_in = c0 if before is None else cs[slot]
            c_steps = c_buffer[:count]
            times = sorted(group, reverse=reverse)
            if recompute:  # rerun the chunk as the forward pass did
                h_in = h0 if before is None else h_steps[before]
                a = None  # free the previous chunk's first
                a = _chunk_input(group, x_steps, w_ih, bias, run)
                weights = (w_hh, *peepholes)
                _run_steps(times, a, (h_in, c_in), weights, h_mask, geometry, scratch * count,
                           c_steps)  # fmt: skip
            else:
                a = a_steps[low : low + count]
                _replay_cells(times, a, c_in, c_steps)
            for t in group:
                k = position[t]
                prev = order[k - 1] if k else None
                dh = None if d_h_steps is None else d_h_steps[t]
                # Keep the gradients in h's memory format even if the loss's gradient is not (a
                # standard-layout loss on a channels-last output): mixed layouts are slow.
                if dh_carry is not None:
                    dh = dh_carry if dh is None else dh_carry + dh
                elif dh is not None and dh.stride() != h_steps[t].stride():
                    dh = torch.empty_like(h_steps[t]).copy_(dh)
                c_prev = c_steps[prev - low] if prev in group else c_in
                d_pre = d_chunk[t - low]
                wanted = (prev is not None or need[4], need[6], need[7], need[8])
                dc, *d_peep = _gates.backward(
                    a[t - low], c_prev, c_steps[t - low], dh, dc, peepholes, d_pre, wanted
                )
                for name, grad in zip(("ci", "cf", "co"), d_peep, strict=True):
                    _accumulate(grads, name, grad)
                if norm is not None:
                    d_gain, d_shift = norm.backward(d_pre, pre_steps[t], t, (need[9], need[2]))
                    _accumulate(grads, "norm", d_gain)
                    _accumulate(grads, "b", d_shift)
                h_prev = h0 if prev is None else h_steps[prev]
                dh_carry = None
                if h_prev is not None and (prev is not None or need[3]):
                    dh_carry = _conv_backward(d_pre, h_prev, w_hh, None, *hh, input_only)[0]
                    if h_mask is not None:
                        dh_carry.mul_(h_mask)
            _flush(group, d_chunk, saved, run, grads, need)
        return (
            grads["x"],
            grads["w_ih"],
            grads["b"],
            dh_carry,
            dc,
            grads["w_hh"],
            grads["ci"],
            grads["cf"],
            grads["co"],
            grads["norm"],
            None,  # h_mask
            None,  # run
        )


def _kernels_like(frames: Tensor, *kernels: Tensor) -> tuple[Tensor, ...]:
    """The ``kernels`` in channels-last if the 2-D ``frames`` ``(N, C_in, H, W)`` are (a copy of
    each, made once per pass and not saved: a convolution of channels-last input with a
    standard-layout kernel copies the kernel at every call, 57 copies of a 512x128x5x5 kernel
    per training step at ``w16``)."""
    if not is_channels_last(frames):
        return kernels
    return tuple(to_channels_last(k) for k in kernels)


def _entering(group: list[int], steps: int, reverse: bool) -> int | None:
    """The step whose ``c`` the chunk ``group`` starts from, or ``None`` for the initial state."""
    before = max(group) + 1 if reverse else min(group) - 1
    return before if 0 <= before < steps else None


def _empty_like(t: Tensor, rows: int, channels: int) -> Tensor:
    """An uninitialised ``(rows, channels, *S)`` tensor with ``t``'s ``(N, C, *S)`` dtype, device
    and memory format."""
    shape = (rows, channels, *t.shape[2:])
    fmt = torch.channels_last if is_channels_last(t) else torch.contiguous_format
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=fmt)


def _accumulate(grads: dict[str, Tensor | None], name: str, value: Tensor | None) -> None:
    if value is not None:
        total = grads[name]
        grads[name] = value if total is None else total.add_(value)


def _backward_args(geometry: CellGeometry, recurrent: bool) -> tuple:
    """``(stride, padding, dilation, transposed, output_padding, groups)`` of the input
    convolution, or of the recurrent one, as ``aten.convolution_backward`` takes them."""
    dims = geometry.spatial_dims
    ones = [1] * dims
    if recurrent:
        return (ones, list(geometry.hh_padding), ones, False, [0] * dims, 1)
    padding = list(geometry.input_padding)
    return (list(geometry.stride), padding, list(geometry.dilation), False, [0] * dims, 1)


def _flush(
    pending: list[int],
    d_chunk: Tensor,
    saved: _Saved,
    run: Run,
    grads: dict[str, Tensor | None],
    need: tuple[bool, ...],
) -> None:
    """Weight gradients of both convolutions and the input gradient for the steps ``pending``
    (consecutive), whose gate gradients are ``d_chunk[t - min(pending)]`` for step ``t``."""
    frames, w_ih, bias, hs, h0, h_mask, w_hh = saved
    ih = _backward_args(run.geometry, recurrent=False)
    hh = _backward_args(run.geometry, recurrent=True)
    count = len(pending)
    lo, hi = min(pending), max(pending) + 1
    steps, reverse = run.steps, run.reverse
    d_pre = d_chunk[:count]
    d_rows = d_pre.flatten(0, 1)
    x_rows = frames.unflatten(0, (steps, -1))[lo:hi].flatten(0, 1)
    mask = [need[0], need[1], bool(need[2] and bias is not None)]
    if any(mask):
        bias_sizes = None if bias is None else list(bias.shape)
        dx, dw, db = _conv_backward(d_rows, x_rows, w_ih, bias_sizes, *ih, mask)
        if dx is not None:
            x_grad = grads["x"]
            assert x_grad is not None  # allocated by the caller when need[0]
            x_grad.unflatten(0, (steps, -1))[lo:hi].copy_(dx.unflatten(0, (count, -1)))
        _accumulate(grads, "w_ih", dw)
        _accumulate(grads, "b", db)
    if not need[5]:
        return
    # Step t convolved h of step t - 1 (t + 1 if reversed); the first step convolved h0.
    h_steps = hs.unflatten(0, (steps, -1))
    first = steps - 1 if reverse else 0
    shift = 1 if reverse else -1
    pairs = []
    with_prev = [t for t in range(lo, hi) if t != first]
    if with_prev:
        a, b = min(with_prev), max(with_prev) + 1
        pairs.append((d_pre[a - lo : b - lo], h_steps[a + shift : b + shift]))
    if h0 is not None and lo <= first < hi:
        pairs.append((d_pre[first - lo : first - lo + 1], h0.unsqueeze(0)))
    for d, h in pairs:
        h = h if h_mask is None else h * h_mask
        dw = _conv_backward(d.flatten(0, 1), h.flatten(0, 1), w_hh, None, *hh, [False, True, False])
        _accumulate(grads, "w_hh", dw[1])


def recurrence(
    frames: Tensor,
    state: tuple[Tensor, Tensor] | None,
    weights: Weights,
    h_mask: Tensor | None,
    run: Run,
) -> tuple[Tensor, Tensor]:
    """Run a layer over ``run.steps`` steps; ``run.reverse`` runs them from the last frame to
    the first.

    Args:
        frames: ``(N, C_in, *S)`` time-major input frames.
        state: initial ``(h, c)``, each ``(B, C, *S')``, or ``None`` for zeros.
        weights: ``(W_ih, bias, W_hh, w_ci, w_cf, w_co, w_norm)``: the input kernel
            ``(4C, C_in, *k)`` and bias ``(4C,)`` (or ``None``), the recurrent kernel
            ``(4C, C, *k)``, the peepholes (``None`` without) and the norm's gain ``(4C,)``
            (``None`` without ``run.norm_groups``).
        h_mask: optional ``(B, C, *S')`` recurrent-dropout mask on ``h``.
        run: the cell's geometry (symmetric padding of both convolutions), the number of steps,
            the direction and whether backward recomputes the gates.

    Returns:
        ``(h, c_last)``: ``h`` of every step ``(N, C, *S')``, time-major, and the final ``c``
        ``(B, C, *S')`` (the final ``h`` is ``h``'s last step, or its first if ``reverse``).
    """
    w_ih, bias, w_hh, w_ci, w_cf, w_co, w_norm = weights
    h0, c0 = state if state is not None else (None, None)
    inputs = (frames, w_ih, bias, h0, c0, w_hh, w_ci, w_cf, w_co, w_norm, h_mask)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return Recurrence.apply(*inputs, run)
    hs, _, _, c_last, _ = _forward(frames, (h0, c0), weights, h_mask, run, False)
    return hs, c_last
