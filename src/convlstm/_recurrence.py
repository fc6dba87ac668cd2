"""A whole layer as one autograd node: the input convolution of the sequence, then the recurrent
convolutions and gate arithmetic of all ``T`` steps.

Shape legend: ``T`` steps, ``B`` batch, ``C_in`` input and ``C`` hidden channels, ``*S`` input
and ``*S'`` state spatial size; ``N = T*B``. Frames are time-major: row ``t*B + b`` of an
``(N, ...)`` tensor is step ``t`` of sequence ``b``.

Per-step autograd keeps, for every step, the recurrent convolution's input, the gate activations,
the cell state and a copy of ``h`` in the stacked output; its backward then holds the gradient of
all gate pre-activations twice (per step, then stacked for the input convolution) next to what is
still saved. :class:`Recurrence` writes ``h`` and ``c`` straight into two ``(N, C, *S')``
buffers (the output is one of them) and the activations over the input convolution's output, and
saves just those and its input. Its backward walks back through time and, every ``chunk`` steps,
hands that chunk's gate gradients to the input convolution's and the recurrent kernel's weight
gradients (one batched call each), so the gate gradients of only ``chunk`` steps exist at once.
Saved tensors are never modified: backward may run twice (``retain_graph=True``). Values and
gradients equal per-step autograd's up to rounding (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from convlstm import _gates

__all__ = ["CHUNKS", "Recurrence", "recurrence"]

Conv = Callable[..., Tensor]
_conv_backward = torch.ops.aten.convolution_backward
# oneDNN's convolution with an "add" post-op, which accumulates into its destination in place
# (the op inductor uses for conv + add on CPU).
_conv_add = getattr(torch.ops.mkldnn, "_convolution_pointwise_", None)

CHUNKS = 4
"""Backward hands the gate gradients to the weight gradients in this many chunks of steps."""


def _order(steps: int, reverse: bool) -> list[int]:
    return list(range(steps - 1, -1, -1) if reverse else range(steps))


def _add_recurrent_conv(
    pre: Tensor, h: Tensor, w_hh: Tensor, conv: Conv, padding: tuple[int, ...]
) -> None:
    """``pre += conv(h, w_hh)`` (stride 1, symmetric ``padding``), ``pre`` ``(B, 4C, *S')``: on CPU
    for 2-D float32/bfloat16 one oneDNN call that adds into ``pre``, saving a ``(B, 4C, *S')``
    output and a pass over it per step."""
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
        pre.add_(conv(h, w_hh, None, 1, padding))


def _forward(
    gates: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    weights: tuple[Tensor, Tensor | None, Tensor | None, Tensor | None],
    h_mask: Tensor | None,
    steps: int,
    conv: Conv,
    padding: tuple[int, ...],
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """Run the loop, overwriting ``gates`` ``(N, 4C, *S')`` with the activations; returns the
    buffers ``h`` and ``c``, each ``(N, C, *S')`` in ``gates``' memory format."""
    w_hh, w_ci, w_cf, w_co = weights
    channels = w_hh.shape[1]
    hs = torch.empty_like(gates[:, :channels])  # keeps the memory format of the frames
    cs = torch.empty_like(hs)
    g, h_steps, c_steps = (t.unflatten(0, (steps, -1)) for t in (gates, hs, cs))
    h, c = h0, c0
    for t in _order(steps, reverse):
        pre = g[t]
        if h is not None:
            _add_recurrent_conv(pre, h if h_mask is None else h * h_mask, w_hh, conv, padding)
        h, c = _gates.activate(pre, c, w_ci, w_cf, w_co, h_out=h_steps[t], c_out=c_steps[t])
    return hs, cs


class Recurrence(torch.autograd.Function):
    """Autograd node of :func:`recurrence`; saves the input, the activations, ``h`` and ``c``."""

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
        h_mask: Tensor | None,
        steps: int,
        conv: Conv,
        ih_geometry: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
        hh_padding: tuple[int, ...],
        reverse: bool,
    ) -> tuple[Tensor, Tensor]:
        gates = conv(frames, w_ih, bias, *ih_geometry)
        weights = (w_hh, w_ci, w_cf, w_co)
        hs, cs = _forward(gates, h0, c0, weights, h_mask, steps, conv, hh_padding, reverse)
        c_last = cs.unflatten(0, (steps, -1))[_order(steps, reverse)[-1]].clone()
        ctx.set_materialize_grads(False)
        saved = (frames, w_ih, bias, gates, hs, cs, h0, c0, w_hh, w_ci, w_cf, w_co, h_mask)
        ctx.save_for_backward(*saved)
        ctx.steps, ctx.ih_geometry, ctx.hh_padding, ctx.reverse = (
            steps,
            ih_geometry,
            hh_padding,
            reverse,
        )
        return hs, c_last

    @staticmethod
    def backward(ctx, d_hs: Tensor | None, d_c_last: Tensor | None) -> tuple[Tensor | None, ...]:
        frames, w_ih, bias, act, hs, cs, h0, c0, w_hh, w_ci, w_cf, w_co, h_mask = ctx.saved_tensors
        steps, reverse = ctx.steps, ctx.reverse
        need = ctx.needs_input_grad
        dims = w_hh.dim() - 2
        hh = ([1] * dims, list(ctx.hh_padding), [1] * dims, False, [0] * dims, 1)
        stride, padding, dilation = (list(v) for v in ctx.ih_geometry)
        ih = (stride, padding, dilation, False, [0] * dims, 1)
        batch = act.shape[0] // steps
        a, h_steps, c_steps = (t.unflatten(0, (steps, -1)) for t in (act, hs, cs))
        d_h_steps = None if d_hs is None else d_hs.unflatten(0, (steps, -1))
        peepholes = (w_ci, w_cf, w_co)
        grads: dict[str, Tensor | None] = dict.fromkeys(
            ("x", "w_ih", "b", "w_hh", "ci", "cf", "co")
        )
        if need[0]:
            grads["x"] = torch.empty_like(frames)
        chunk = math.ceil(steps / CHUNKS)
        d_chunk = torch.empty_like(act[: chunk * batch]).unflatten(0, (chunk, batch))
        order = _order(steps, reverse)
        backward_order = order[::-1]
        # Chunks of consecutive steps in backward order; a step's slot in d_chunk is its time
        # index minus the chunk's first time index, so each chunk's slots are in time order.
        lows = {}
        for start in range(0, steps, chunk):
            group = backward_order[start : start + chunk]
            lows.update(dict.fromkeys(group, min(group)))
        pending: list[int] = []  # steps whose gate gradients wait in d_chunk
        dh_carry = None
        dc = d_c_last
        for k in range(steps - 1, -1, -1):
            t = order[k]
            prev = order[k - 1] if k else None
            dh = None if d_h_steps is None else d_h_steps[t]
            # Keep the gradients in h's memory format even if the loss's gradient is not (a
            # standard-layout loss on a channels-last output): mixed layouts are slow.
            if dh_carry is not None:
                dh = dh_carry if dh is None else dh_carry + dh
            elif dh is not None and dh.stride() != h_steps[t].stride():
                dh = torch.empty_like(h_steps[t]).copy_(dh)
            c_prev = c0 if prev is None else c_steps[prev]
            d_pre = d_chunk[t - lows[t]]
            wanted = (prev is not None or need[4], need[6], need[7], need[8])
            dc, *d_peep = _gates.backward(
                a[t], c_prev, c_steps[t], dh, dc, peepholes, d_pre, wanted
            )
            for name, grad in zip(("ci", "cf", "co"), d_peep, strict=True):
                _accumulate(grads, name, grad)
            h_prev = h0 if prev is None else h_steps[prev]
            dh_carry = None
            if h_prev is not None and (prev is not None or need[3]):
                dh_carry = _conv_backward(d_pre, h_prev, w_hh, None, *hh, [True, False, False])[0]
                if h_mask is not None:
                    dh_carry.mul_(h_mask)
            pending.append(t)
            if len(pending) == chunk or k == 0:
                _flush(pending, d_chunk, frames, w_ih, bias, hs, h0, h_mask, w_hh, reverse,
                       grads, need, ih, hh)  # fmt: skip
                pending = []
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
            *(None,) * 6,
        )


def _accumulate(grads: dict[str, Tensor | None], name: str, value: Tensor | None) -> None:
    if value is not None:
        total = grads[name]
        grads[name] = value if total is None else total.add_(value)


def _flush(
    pending: list[int],
    d_chunk: Tensor,
    frames: Tensor,
    w_ih: Tensor,
    bias: Tensor | None,
    hs: Tensor,
    h0: Tensor | None,
    h_mask: Tensor | None,
    w_hh: Tensor,
    reverse: bool,
    grads: dict[str, Tensor | None],
    need: tuple[bool, ...],
    ih: tuple,
    hh: tuple,
) -> None:
    """Weight gradients of both convolutions and the input gradient for the steps ``pending``
    (consecutive), whose gate gradients are ``d_chunk[t - min(pending)]`` for step ``t``."""
    count = len(pending)
    lo, hi = min(pending), max(pending) + 1
    steps = frames.shape[0] // d_chunk.shape[1]
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
    weights: tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor | None, Tensor | None],
    h_mask: Tensor | None,
    steps: int,
    conv: Conv,
    ih_geometry: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
    hh_padding: tuple[int, ...],
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run a layer over ``steps`` steps; ``reverse`` runs them from the last frame to the first.

    Args:
        frames: ``(N, C_in, *S)`` time-major input frames.
        state: initial ``(h, c)``, each ``(B, C, *S')``, or ``None`` for zeros.
        weights: ``(W_ih, bias, W_hh, w_ci, w_cf, w_co)``: the input kernel ``(4C, C_in, *k)`` and
            bias ``(4C,)`` (or ``None``), the recurrent kernel ``(4C, C, *k)`` (odd sizes, "same"
            padding ``hh_padding``), the peepholes (``None`` without).
        h_mask: optional ``(B, C, *S')`` recurrent-dropout mask on ``h``.
        conv: ``F.conv1d``, ``F.conv2d`` or ``F.conv3d``.
        ih_geometry: ``(stride, padding, dilation)`` of the input convolution (symmetric padding).

    Returns:
        ``(h, c_last)``: ``h`` of every step ``(N, C, *S')``, time-major, and the final ``c``
        ``(B, C, *S')`` (the final ``h`` is ``h``'s last step, or its first if ``reverse``).
    """
    w_ih, bias, w_hh, w_ci, w_cf, w_co = weights
    h0, c0 = state if state is not None else (None, None)
    inputs = (frames, w_ih, bias, h0, c0, w_hh, w_ci, w_cf, w_co, h_mask)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return Recurrence.apply(*inputs, steps, conv, ih_geometry, hh_padding, reverse)
    gates = conv(frames, w_ih, bias, *ih_geometry)
    hh = (w_hh, w_ci, w_cf, w_co)
    hs, cs = _forward(gates, h0, c0, hh, h_mask, steps, conv, hh_padding, reverse)
    return hs, cs.unflatten(0, (steps, -1))[0 if reverse else -1]
