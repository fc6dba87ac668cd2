"""The variants a training shape is timed in, and the check each must pass before it is timed.

A variant computes a function of the input that a reference variant (the plain path, see
:func:`convlstm.fast.plain`) also computes; :func:`check` compares their values and gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from convlstm import _plan, fast
from convlstm.bench import references
from convlstm.bench.shapes import Shape
from convlstm.cells import ConvLSTMCell
from convlstm.layers import ConvLSTM2d

__all__ = [
    "NOISE",
    "TOLERANCE",
    "Variant",
    "bias_free_copy",
    "check",
    "make_layer",
    "run_once",
    "train_variants",
]

# (rtol, atol) of the checks against the plain path: fp32 paths differ by summation order only.
TOLERANCE = {"fp32": (1e-3, 1e-4), "bf16": (0.1, 0.1)}
NOISE = 10
"""A variant may differ from the reference by up to this many times the reference's own error."""


@dataclasses.dataclass
class Variant:
    """A way to run a shape: ``forward()`` returns ``(B, T, C, H, W)``; ``params`` get gradients;
    ``context`` wraps every call (autocast, fast-path settings)."""

    name: str
    forward: Callable[[Tensor], Tensor]
    params: Sequence[Tensor]
    x: Tensor
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    precision: str = "fp32"
    reference: str | None = None  # the variant it must match ("plain" or "plain_peep")
    own: bool = False  # our layer's parameters: compare their gradients too
    input_grad: bool = True  # check the input's gradient (a compiled graph would recompile)
    truth: Variant | None = None  # a reference's float64 twin, which measures its rounding error


def make_layer(shape: Shape, device: torch.device, **options: Any) -> ConvLSTM2d:
    spatial: dict[str, Any] = (
        {"spatial_size": (shape.size, shape.size)} if options.get("peephole") else {}
    )
    layer = ConvLSTM2d(
        shape.in_channels, list(shape.hidden), shape.kernel, norm=shape.norm, **spatial, **options
    ).to(device)
    with torch.no_grad():  # random peepholes and biases, so that no term hides behind a zero
        for p in layer.parameters():
            if p.dim() != 4:
                p.uniform_(-0.5, 0.5)
    return layer


def _autocast(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _forced(**choices: Any) -> Callable[[], contextlib.AbstractContextManager]:
    return lambda: fast.settings(**choices)


def train_variants(
    shape: Shape, device: torch.device, args: argparse.Namespace
) -> tuple[dict[str, Variant], list[str]]:
    """The variants of a training shape, and notes on those left out."""
    torch.manual_seed(0)
    x = torch.randn(shape.batch, shape.steps, shape.in_channels, shape.size, shape.size)
    x = x.to(device)
    layer = make_layer(shape, device)
    peep = make_layer(shape, device, peephole="spatial")
    ckpt = make_layer(shape, device, checkpoint_steps=True)
    ckpt.load_state_dict(layer.state_dict())
    run = lambda m: lambda inp: m(inp)[0]  # noqa: E731
    own = list(layer.parameters())

    def plain(name: str, module: nn.Module) -> Variant:
        twin = copy.deepcopy(module).double()
        exact = Variant(f"{name}_fp64", run(twin), list(twin.parameters()), x.double(), fast.plain)
        return Variant(name, run(module), list(module.parameters()), x, fast.plain, truth=exact)

    variants = {
        "plain": dataclasses.replace(plain("plain", layer), own=True),
        "plain_peep": plain("plain_peep", peep),
        "floor": Variant("floor", references.FloorConvs(layer), own, x),
        "convlstm": Variant("convlstm", run(layer), own, x, reference="plain", own=True),
        "convlstm_plain": Variant(
            "convlstm_plain", run(layer), own, x, fast.plain, reference="plain", own=True
        ),
        "convlstm_per_step": Variant(
            "convlstm_per_step",
            run(layer),
            own,
            x,
            _forced(fused_loop=False),
            "fp32",
            "plain",
            True,
        ),
        "convlstm_tuned": Variant(
            "convlstm_tuned", run(layer), own, x, _forced(autotune=True), "fp32", "plain", True
        ),
        "convlstm_bf16": Variant(
            "convlstm_bf16", run(layer), own, x, _autocast(device), "bf16", "plain", own=True
        ),
        "convlstm_ckpt": Variant(
            "convlstm_ckpt", run(ckpt), list(ckpt.parameters()), x, reference="plain", own=True
        ),
        "convlstm_peep": Variant(
            "convlstm_peep", run(peep), list(peep.parameters()), x, reference="plain_peep"
        ),
    }
    notes = []
    if shape.norm is not None:
        notes.append("naive cell and peers left out: their gates are not normalised")
    else:
        naive = references.naive_from(peep)
        params = list(naive.parameters())
        variants["naive"] = Variant("naive", naive, params, x, reference="plain_peep")
        if shape.kernel % 2:  # the peers pad odd kernels only
            variants.update(_peers(layer, plain, x, device))
    # The plan's per-shape choices, each against its alternative (same function, timed).
    frame, cell = x[:, 0], cast(ConvLSTMCell, layer.cells[0])
    geometry = cell.geometry(frame.shape[2:])
    plan = _plan.plan_layer(geometry, frame, shape.steps, dtype=cell.weight_hh.dtype)
    if cell.spatial_dims == 2:  # the memory format the plan did not choose
        chosen = plan.channels_last
        other = "nchw" if chosen else "cl"
        variants[f"convlstm_{other}"] = Variant(
            f"convlstm_{other}",
            run(layer),
            own,
            x,
            _forced(channels_last=not chosen),
            "fp32",
            "plain",
            True,
        )
    if device.type == "cpu" and geometry.joint_possible:
        other = "batched" if plan.input_conv == "joint" else "joint"
        variants[f"convlstm_{other}"] = Variant(
            f"convlstm_{other}",
            run(layer),
            own,
            x,
            _forced(input_conv=other),
            "fp32",
            "plain",
            True,
        )
    if args.compile or (device.type == "cuda" and not args.no_compile):
        compiled = fast.compile_layer(layer)
        marked = device.type == "cuda"

        def compiled_run(inp: Tensor) -> Tensor:
            if marked:
                torch.compiler.cudagraph_mark_step_begin()
            return compiled(inp)[0]

        variants["convlstm_compiled"] = Variant(
            "convlstm_compiled", compiled_run, own, x, reference="plain", own=True, input_grad=False
        )
    if not args.no_keras and shape.norm is None:
        try:
            stack = references.keras_from(layer, (shape.size, shape.size))
        except (ImportError, RuntimeError) as error:
            notes.append(f"keras left out: {error}")
        else:
            kx = references.to_keras_layout(x)
            variants["keras"] = Variant(
                "keras",
                lambda inp: references.from_keras_layout(stack(inp)),
                stack.parameters(),
                kx,
                reference="plain",
            )
    if not args.no_torchgeo and shape.norm is None:
        if shape.kernel % 2 == 0:
            notes.append("torchgeo left out: its ConvLSTM pads even kernels differently")
        else:
            try:
                peer = references.torchgeo_from(layer)
            except ImportError as error:
                notes.append(
                    f"torchgeo left out: {error} (pip install convlstm[bench], Python >= 3.12; "
                    "its cell runs as ndrplz)"
                )
            else:
                params = list(peer.parameters())
                variants["torchgeo"] = Variant("torchgeo", peer, params, x, reference="plain")
                variants["torchgeo_bf16"] = Variant(
                    "torchgeo_bf16", peer, params, x, _autocast(device), "bf16", "plain"
                )
    return variants, notes


def bias_free_copy(layer: ConvLSTM2d) -> ConvLSTM2d:
    """A ``bias=False`` twin of ``layer`` (no peepholes or norm) with its kernels."""
    first = cast(ConvLSTMCell, layer.cells[0])
    twin = ConvLSTM2d(
        layer.in_channels, list(layer.hidden_channels), first.kernel_size, bias=False
    ).to(first.weight_ih)
    twin.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.endswith(".bias")})
    return twin


def _peers(
    layer: ConvLSTM2d, plain: Callable[[str, nn.Module], Variant], x: Tensor, device: torch.device
) -> dict[str, Variant]:
    """The peers written from their code (:mod:`convlstm.bench.references`), fp32 and bf16:
    ``ndrplz`` (torchgeo's cell) computes ``layer``'s function; ``openstl`` has no bias, so it is
    checked against a bias-free copy of ``layer`` (``plain_nobias``)."""
    bias_free = bias_free_copy(layer)
    joint, openstl = references.joint_from(layer), references.openstl_from(bias_free)
    variants = {"plain_nobias": plain("plain_nobias", bias_free)}
    for name, peer, reference in (("ndrplz", joint, "plain"), ("openstl", openstl, "plain_nobias")):
        params = list(peer.parameters())
        variants[name] = Variant(name, peer, params, x, reference=reference)
        variants[f"{name}_bf16"] = Variant(
            f"{name}_bf16", peer, params, x, _autocast(device), "bf16", reference
        )
    return variants


def max_error(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _grad_copy(param: Tensor) -> Tensor:
    """A copy of ``param.grad``; a parameter that backward did not reach is an error."""
    if param.grad is None:
        raise RuntimeError("backward left a parameter without a gradient")
    return param.grad.clone()


def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]


def _named(what: str) -> Callable[[str], str]:
    """An ``assert_close`` message: ``what`` and the mismatch statistics on one line."""
    return lambda message: f"{what}: " + " ".join(message.split())


def run_once(v: Variant, grad: Tensor, input_grad: bool) -> tuple[Tensor, Tensor | None, list]:
    """``v``'s output, input gradient (``None`` unless ``input_grad``) and parameter gradients
    for the loss ``(output * grad).sum()``."""
    x = v.x.detach().clone().requires_grad_(input_grad)
    for p in v.params:
        p.grad = None
    with v.context():
        out = v.forward(x)
    out.backward(grad.to(out.dtype))
    x_grad = x.grad
    if x_grad is not None and v.name == "keras":
        x_grad = references.from_keras_layout(x_grad)
    return out.detach().clone(), x_grad, [_grad_copy(p) for p in v.params]


def check(
    variant: Variant, reference: Variant, grad: Tensor, truth: tuple | None = None
) -> dict[str, Any]:
    """Forward values and gradients of ``variant`` against ``reference``; raises AssertionError
    on a mismatch. Returns the largest differences (gradients relative to their largest value).

    ``truth``: the reference computed in float64 (:func:`_run_once` of ``reference.truth``).
    The reference's own rounding error, measured against it, widens the absolute tolerance to
    ``NOISE`` times that error where it is larger: on GPUs the fp32 weight gradients of the
    convolution libraries can be a thousand times less precise than on CPUs."""
    want, want_dx, want_dp = run_once(reference, grad, variant.input_grad)
    got, got_dx, got_dp = run_once(variant, grad, variant.input_grad)
    true_x, true_dx, true_dp = truth if truth is not None else (None, None, [None] * len(want_dp))
    rtol, atol = TOLERANCE[variant.precision]

    def compare(what: str, g: Tensor, w: Tensor, t: Tensor | None, scale: float) -> float:
        bound = atol * scale
        if t is not None:
            bound = max(bound, NOISE * max_error(w, t))
        torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=bound, msg=_named(what))
        return max_error(g, w) / scale

    errors = {"output": compare("output", got, want, true_x, 1.0)}
    if variant.input_grad:
        assert want_dx is not None and got_dx is not None  # x required grad: backward set it
        scale = want_dx.abs().max().item() + 1e-12
        errors["input_grad_rel"] = compare("input grad", got_dx, want_dx, true_dx, scale)
    if variant.own:
        worst = 0.0
        for i, (g, w, t) in enumerate(zip(got_dp, want_dp, true_dp, strict=True)):
            what = f"gradient of parameter {i} {tuple(w.shape)}"
            worst = max(worst, compare(what, g, w, t, w.abs().max().item() + 1e-12))
        errors["param_grad_rel"] = worst
    return errors
