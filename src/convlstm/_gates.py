"""The ConvLSTM gate arithmetic as one autograd node that keeps only what its backward needs.

Shape legend: ``B`` batch, ``C`` hidden channels, ``*S`` spatial size. ``pre`` is the sum of the two
convolutions (and the bias), ``(B, 4*C, *S)`` in gate order (i, f, g, o); ``c`` is ``(B, C, *S)``;
a peephole weight is ``(C, 1, ..., 1)`` ("channel") or ``(C, *S)`` ("spatial").

For ``sigmoid``/``tanh`` gates, :func:`fused_gates` computes, with ``∘`` the Hadamard product::

    i = σ(pre_i + w_ci ∘ c)       f = σ(pre_f + w_cf ∘ c)       g = tanh(pre_g)
    c' = f ∘ c + i ∘ g            o = σ(pre_o + w_co ∘ c')      h' = o ∘ tanh(c')

Autograd through those expressions saves about eight ``(B, C, *S)`` tensors per step and allocates
a fresh tensor per operation. :class:`FusedGates` writes the activations ``(i, f, g, o)`` over
``pre`` when the caller owns it, and saves that buffer together with ``c`` and ``c'`` — which are
the neighbouring steps' states, so storage shared with them — and recomputes ``tanh(c')`` in
backward. Its values equal the plain expressions' (the same operations in the same order).
"""

from __future__ import annotations

import torch
from torch import Tensor

from convlstm._layout import is_channels_last

__all__ = [
    "FAST_TANH_MIN",
    "FusedGates",
    "activate",
    "backward",
    "cell_state",
    "fused_gates",
    "tanh",
]

# The overloads themselves: calling the packet with ``grad_input=`` resolves the overload at
# every call (9 us against 4.5 us per call on a 2-core Xeon).
_sigmoid_backward_into = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward_into = torch.ops.aten.tanh_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.default

FAST_TANH_MIN = 8192
"""Fewest elements for which :func:`tanh` computes float32 on CPU through the sigmoid."""


def activate(
    act: Tensor,
    c: Tensor | None,
    w_ci: Tensor | None,
    w_cf: Tensor | None,
    w_co: Tensor | None,
    h_out: Tensor | None = None,
    c_out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Turn the pre-activations in ``act`` ``(B, 4C, *S)`` into ``(i, f, g, o)`` in place; return
    ``(h', c')``, each ``(B, C, *S)``, written into ``h_out`` and ``c_out`` if given."""
    a_i, a_f, a_g, a_o = act.chunk(4, dim=1)
    if c is not None and w_ci is not None and w_cf is not None:  # the peepholes come together
        a_i.addcmul_(w_ci, c)
        a_f.addcmul_(w_cf, c)
    if c is None:
        a_i.sigmoid_()
    else:
        act[:, : 2 * a_i.shape[1]].sigmoid_()  # i and f in one pass
    _tanh_(a_g)
    c_new = cell_state(a_i, a_f, a_g, c, c_out)
    if w_co is not None:
        a_o.addcmul_(w_co, c_new)
    a_o.sigmoid_()
    h = tanh(c_new, out=h_out)
    return h.mul_(a_o), c_new


def tanh(t: Tensor, out: Tensor | None = None) -> Tensor:
    """``tanh(t)``, written into ``out`` if given (``out`` may be ``t`` itself).

    For float32 on CPU, from ``FAST_TANH_MIN`` elements, as ``2σ(2t) − 1``: torch's vectorised
    tanh costs twice that (one thread of an AVX2 EPYC: 51 against 30 µs for 16k floats, 6.6
    against 2.7 ms for 2M; level at 4k, where the four calls' overhead counts), for an absolute
    error below 2e-7 (torch's own: 3e-8). Elsewhere ``torch.tanh``: in float64 for its
    exactness, in half precision because the cancellation near 0 would cost most of the digits.
    """
    if t.dtype != torch.float32 or not t.is_cpu or t.numel() < FAST_TANH_MIN:
        return torch.tanh(t) if out is None else torch.tanh(t, out=out)
    out = t.mul(2) if out is None else torch.mul(t, 2, out=out)
    return out.sigmoid_().mul_(2).sub_(1)


def _tanh_(t: Tensor) -> None:
    """``t = tanh(t)`` in place. A channel slice of a channels-last CPU tensor takes torch's
    strided kernels, which run 5x slower than a dense copy's (tanh of 8x128x16x16 of
    8x512x16x16 on a 2-core Xeon: 636 us against 124 us for copy, tanh and copy back)."""
    if t.is_cpu and t.dim() == 4 and t.stride(1) == 1 and not t.is_contiguous():
        dense = t.contiguous(memory_format=torch.channels_last)
        t.copy_(tanh(dense, out=dense))
    else:
        tanh(t, out=t)


def cell_state(i: Tensor, f: Tensor, g: Tensor, c: Tensor | None, out: Tensor | None) -> Tensor:
    """``c' = f∘c + i∘g`` (``i∘g`` for ``c`` ``None``) from activated gates, each ``(B, C, *S)``,
    written into ``out`` if given: the one expression the forward pass and its replay share."""
    if c is None:
        return i * g if out is None else torch.mul(i, g, out=out)
    c_new = f * c if out is None else torch.mul(f, c, out=out)
    return c_new.addcmul_(i, g)


def backward(
    act: Tensor,
    c: Tensor | None,
    c_new: Tensor,
    dh: Tensor | None,
    dc_new: Tensor | None,
    peepholes: tuple[Tensor | None, Tensor | None, Tensor | None],
    d_pre: Tensor,
    need: tuple[bool, bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of :func:`activate`: writes ``dL/dpre`` into ``d_pre`` ``(B, 4C, *S)``.

    Args:
        act: the activations ``(i, f, g, o)`` that :func:`activate` left, ``(B, 4C, *S)``.
        c, c_new: the cell states before and after the step (``c`` ``None`` for zeros).
        dh, dc_new: incoming gradients of ``h'`` and ``c'`` (``None`` for zero).
        peepholes: ``(w_ci, w_cf, w_co)``, each ``None`` without peepholes.
        need: which of ``(dL/dc, dL/dw_ci, dL/dw_cf, dL/dw_co)`` to return (else ``None``).

    Returns:
        ``(dL/dc, dL/dw_ci, dL/dw_cf, dL/dw_co)``, peephole gradients reduced to their shapes.
    """
    w_ci, w_cf, w_co = peepholes
    i, f, g, o = act.chunk(4, dim=1)
    d_i, d_f, d_g, d_o = d_pre.chunk(4, dim=1)
    tc = tanh(c_new)
    # dL/dc' from h' = o ∘ tanh(c') and from the next step, then through the o peephole.
    if dh is None:
        d_o.zero_()
        dc = torch.zeros_like(c_new) if dc_new is None else dc_new.clone()
    else:
        _sigmoid_backward_into(dh * tc, o, grad_input=d_o)
        dc = _tanh_backward(dh * o, tc)
        if dc_new is not None:
            dc.add_(dc_new)
    if w_co is not None:
        dc.addcmul_(d_o, w_co)
    _sigmoid_backward_into(dc * g, i, grad_input=d_i)
    _tanh_backward_into(dc * i, g, grad_input=d_g)
    d_c = d_wci = d_wcf = d_wco = None
    if c is None:
        d_f.zero_()
    else:
        _sigmoid_backward_into(dc * c, f, grad_input=d_f)
        if need[1] and w_ci is not None:
            d_wci = _sum_to(d_i * c, w_ci.shape)
        if need[2] and w_cf is not None:
            d_wcf = _sum_to(d_f * c, w_cf.shape)
        if need[0]:
            d_c = dc.mul_(f)
            if w_ci is not None and w_cf is not None:
                d_c.addcmul_(d_i, w_ci).addcmul_(d_f, w_cf)
    if need[3] and w_co is not None:
        d_wco = _sum_to(d_o * c_new, w_co.shape)
    return d_c, d_wci, d_wcf, d_wco


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """``t.sum_to_size(shape)``; a channels-last ``(B, C, H, W)`` summed over ``B`` to a spatial
    peephole's ``(C, H, W)`` in its own memory order, giving a channels-last-ordered result
    (for 8x64x64x64 on a 2-core Xeon without AMX: 0.7 ms against 6.8)."""
    if is_channels_last(t) and tuple(shape) == tuple(t.shape[1:]):
        return t.permute(0, 2, 3, 1).sum(0).permute(2, 0, 1)
    return t.sum_to_size(shape)


class FusedGates(torch.autograd.Function):
    """Autograd node of :func:`fused_gates`: saves ``(i, f, g, o)``, ``c`` and ``c'`` only."""

    @staticmethod
    def forward(
        ctx,
        pre: Tensor,
        c: Tensor | None,
        w_ci: Tensor | None,
        w_cf: Tensor | None,
        w_co: Tensor | None,
        inplace: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        act = pre if inplace else pre.clone()
        h, c_new = activate(act, c, w_ci, w_cf, w_co)
        if inplace:
            ctx.mark_dirty(act)
        ctx.mark_non_differentiable(act)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(act, c, c_new, w_ci, w_cf, w_co)
        return h, c_new, act

    @staticmethod
    def backward(
        ctx, dh: Tensor | None, dc_new: Tensor | None, _: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        act, c, c_new, w_ci, w_cf, w_co = ctx.saved_tensors
        d_pre = torch.empty_like(act)
        need = ctx.needs_input_grad
        grads = backward(act, c, c_new, dh, dc_new, (w_ci, w_cf, w_co), d_pre, need[1:5])
        return d_pre, *grads, None


def fused_gates(
    pre: Tensor,
    c: Tensor | None,
    w_ci: Tensor | None = None,
    w_cf: Tensor | None = None,
    w_co: Tensor | None = None,
    *,
    inplace: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(h', c')`` of the sigmoid/tanh ConvLSTM gates, each ``(B, C, *S)``.

    Args:
        pre: ``(B, 4*C, *S)`` gate pre-activations (i, f, g, o), convolutions plus bias.
        c: ``(B, C, *S)`` previous cell state, or ``None`` for zeros (its terms are skipped).
        w_ci, w_cf, w_co: peephole weights broadcastable to ``(B, C, *S)``, all or none.
        inplace: overwrite ``pre`` with the activations (the caller must own it: no view of a
            tensor that is read again).

    Without autograd it runs the arithmetic directly (no graph node, fewest kernels).
    """
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (pre, c, w_ci, w_cf, w_co)
    ):
        h, c_new, _ = FusedGates.apply(pre, c, w_ci, w_cf, w_co, inplace)
        return h, c_new
    return activate(pre if inplace else pre.clone(), c, w_ci, w_cf, w_co)
