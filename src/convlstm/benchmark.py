"""``convlstm benchmark``: time and size our ConvLSTM layer against a naive cell, Keras and the
bare convolutions, in one process, interleaved.

For each shape of a grid (streaming inference to training), every *variant* is first checked
against the plain path on random inputs (forward values and input gradients, plus parameter
gradients for our own variants), within a tolerance that the plain path's own error against a
float64 run of it may widen; a variant that does not match is refused, never timed. The
rest are timed round-robin (each round runs every variant once, in a rotating order), and the
report gives median and quartiles, GFLOP/s from an analytic FLOP count, the fraction of a peak
measured on the spot (a large matrix product), and activation memory.

Variants (training shapes): ``floor`` (the convolutions alone, channels-last), ``naive`` (the
seed's eight-convolution cell with learned peepholes), ``convlstm_peep`` (our layer computing the
naive cell's function), ``convlstm`` (our layer, no peepholes, default fast paths),
``convlstm_plain`` (the same under :func:`convlstm.fast.plain`), ``convlstm_nchw`` or
``convlstm_cl`` (the memory format the plan did not choose), ``convlstm_joint`` or
``convlstm_batched`` (on CPU, the input convolution the plan did not choose, where both are
possible), ``convlstm_bf16`` (bf16 autocast), ``convlstm_ckpt`` (``checkpoint_steps=True``),
``convlstm_compiled`` (:func:`convlstm.fast.compile_layer`; CUDA, or ``--compile``), ``keras``
(Keras 3 ``ConvLSTM2D``, torch backend, if installed). Streaming shapes time one step from a
given state, without gradients: ``naive``, ``floor`` (the two convolutions), ``convlstm_cell``
and ``convlstm_layer``.

Usage: ``convlstm benchmark --quick`` or ``python benchmarks/bench.py --shapes w16 --json out.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from convlstm import _baselines, _measure, _plan, fast
from convlstm.cells import ConvLSTMCell
from convlstm.layers import ConvLSTM2d

__all__ = ["SHAPES", "Shape", "add_parser", "main", "run_suite"]


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark shape: ``batch`` sequences of ``steps`` frames ``(in_channels, size, size)``
    through 2-D layers of ``hidden`` channels and ``kernel``×``kernel`` kernels. ``stream``: one
    step from a given state without gradients (streaming inference) instead of training."""

    name: str
    batch: int
    steps: int
    in_channels: int
    size: int
    hidden: tuple[int, ...]
    kernel: int
    stream: bool = False

    def describe(self) -> str:
        kind = "stream, 1 step" if self.stream else f"train, T={self.steps}"
        hidden = "x".join(map(str, self.hidden))
        return (
            f"B={self.batch} {kind}, {self.in_channels}x{self.size}x{self.size} in, "
            f"hidden {hidden}, k={self.kernel}"
        )


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("stream_tiny", 1, 1, 1, 16, (16,), 3, stream=True),
        Shape("stream_small", 1, 1, 16, 16, (32,), 3, stream=True),
        Shape("stream_main", 1, 1, 16, 16, (64, 64), 3, stream=True),
        # The default main-job model: 64x64x1 frames, 8x8 patches -> 8x8x64, hidden [32, 32],
        # 3x3 kernels, batch 8.
        Shape("main_job", 8, 10, 64, 8, (32, 32), 3),
        Shape("w16", 8, 10, 16, 16, (128, 128), 5),
        Shape("w64", 8, 10, 1, 64, (64, 64), 3),
        # Small shapes for --quick and the smoke test.
        Shape("quick_train", 2, 4, 16, 16, (32, 32), 3),
        Shape("quick_cin1", 2, 4, 1, 32, (16, 16), 3),
    ]
}
FULL = ["stream_tiny", "stream_small", "stream_main", "main_job", "w16", "w64"]
QUICK = ["stream_tiny", "stream_small", "quick_train", "quick_cin1"]
GPU = ["w16", "main_job"]

# (rtol, atol) of the checks against the plain path: fp32 paths differ by summation order only.
TOLERANCE = {"fp32": (1e-3, 1e-4), "bf16": (0.1, 0.1)}
NOISE = 10
"""A variant may differ from the reference by up to this many times the reference's own error."""


def parse_shape(text: str) -> Shape:
    """A grid name, or ``B,T,C_in,S,H1-H2-...,K[,stream]`` (e.g. ``8,10,16,16,128-128,5``)."""
    if text in SHAPES:
        return SHAPES[text]
    parts = text.split(",")
    try:
        batch, steps, cin, size = (int(p) for p in parts[:4])
        hidden = tuple(int(h) for h in parts[4].split("-"))
        kernel = int(parts[5])
    except (ValueError, IndexError):
        raise ValueError(
            f"unknown shape {text!r}: use one of {', '.join(SHAPES)} or B,T,C_in,S,H1-H2,K[,stream]"
        ) from None
    stream = len(parts) > 6 and parts[6] == "stream"
    return Shape(text, batch, 1 if stream else steps, cin, size, hidden, kernel, stream)


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


def _layer(shape: Shape, device: torch.device, **options: Any) -> ConvLSTM2d:
    spatial: dict[str, Any] = (
        {"spatial_size": (shape.size, shape.size)} if options.get("peephole") else {}
    )
    layer = ConvLSTM2d(
        shape.in_channels, list(shape.hidden), shape.kernel, **spatial, **options
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


def _train_variants(
    shape: Shape, device: torch.device, args: argparse.Namespace
) -> tuple[dict[str, Variant], list[str]]:
    """The variants of a training shape, and notes on those left out."""
    torch.manual_seed(0)
    x = torch.randn(shape.batch, shape.steps, shape.in_channels, shape.size, shape.size)
    x = x.to(device)
    layer = _layer(shape, device)
    peep = _layer(shape, device, peephole="spatial")
    ckpt = _layer(shape, device, checkpoint_steps=True)
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
        "floor": Variant("floor", _baselines.FloorConvs(layer), own, x),
        "convlstm": Variant("convlstm", run(layer), own, x, reference="plain", own=True),
        "convlstm_plain": Variant(
            "convlstm_plain", run(layer), own, x, fast.plain, reference="plain", own=True
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
    naive = _baselines.naive_from(peep)
    variants["naive"] = Variant("naive", naive, list(naive.parameters()), x, reference="plain_peep")
    # The plan's per-shape choices, each against its alternative (same function, timed).
    frame, cell = x[:, 0], cast(ConvLSTMCell, layer.cells[0])
    if cell.spatial_dims == 2:  # the memory format the plan did not choose
        chosen = _plan.use_channels_last(cell, frame)
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
    if device.type == "cpu" and cell.joint_conv_possible(frame.shape[2:]):
        other = "batched" if _plan.use_joint_conv(cell, frame, shape.steps) else "joint"
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
    notes = []
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
    if not args.no_keras:
        try:
            stack = _baselines.keras_from(layer, (shape.size, shape.size))
        except (ImportError, RuntimeError) as error:
            notes.append(f"keras left out: {error}")
        else:
            kx = _baselines.to_keras_layout(x)
            variants["keras"] = Variant(
                "keras",
                lambda inp: _baselines.from_keras_layout(stack(inp)),
                stack.parameters(),
                kx,
                reference="plain",
            )
    return variants, notes


def _max_error(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _grad_copy(param: Tensor) -> Tensor:
    """A copy of ``param.grad``; a parameter that backward did not reach is an error."""
    if param.grad is None:
        raise RuntimeError("backward left a parameter without a gradient")
    return param.grad.clone()


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]


def _named(what: str) -> Callable[[str], str]:
    """An ``assert_close`` message: ``what`` and the mismatch statistics on one line."""
    return lambda message: f"{what}: " + " ".join(message.split())


def _run_once(v: Variant, grad: Tensor, input_grad: bool) -> tuple[Tensor, Tensor | None, list]:
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
        x_grad = _baselines.from_keras_layout(x_grad)
    return out.detach().clone(), x_grad, [_grad_copy(p) for p in v.params]


def _check(
    variant: Variant, reference: Variant, grad: Tensor, truth: tuple | None = None
) -> dict[str, Any]:
    """Forward values and gradients of ``variant`` against ``reference``; raises AssertionError
    on a mismatch. Returns the largest differences (gradients relative to their largest value).

    ``truth``: the reference computed in float64 (:func:`_run_once` of ``reference.truth``).
    The reference's own rounding error, measured against it, widens the absolute tolerance to
    ``NOISE`` times that error where it is larger: on GPUs the fp32 weight gradients of the
    convolution libraries can be a thousand times less precise than on CPUs."""
    want, want_dx, want_dp = _run_once(reference, grad, variant.input_grad)
    got, got_dx, got_dp = _run_once(variant, grad, variant.input_grad)
    true_x, true_dx, true_dp = truth if truth is not None else (None, None, [None] * len(want_dp))
    rtol, atol = TOLERANCE[variant.precision]

    def compare(what: str, g: Tensor, w: Tensor, t: Tensor | None, scale: float) -> float:
        bound = atol * scale
        if t is not None:
            bound = max(bound, NOISE * _max_error(w, t))
        torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=bound, msg=_named(what))
        return _max_error(g, w) / scale

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


def _bench_train(
    shape: Shape, device: torch.device, args: argparse.Namespace, peaks: dict[str, float]
) -> dict[str, Any]:
    variants, notes = _train_variants(shape, device, args)
    wanted = set(args.variants) if args.variants else None
    flops_fwd, flops_train = _measure.conv_flops(
        shape.in_channels, shape.hidden, shape.kernel, shape.size, shape.batch, shape.steps, True
    )
    torch.manual_seed(1)
    out_shape = (shape.batch, shape.steps, shape.hidden[-1], shape.size, shape.size)
    grad = torch.randn(out_shape, device=device)
    timed: dict[str, Variant] = {}
    results: dict[str, Any] = {}

    @functools.cache
    def truth(reference: str) -> tuple | None:
        twin = variants[reference].truth
        return None if twin is None else _run_once(twin, grad, True)

    for name, v in variants.items():
        if name.startswith("plain") or (wanted is not None and name not in wanted):
            continue
        entry: dict[str, Any] = {"precision": v.precision}
        if v.reference is not None:
            try:
                entry["check"] = _check(v, variants[v.reference], grad, truth(v.reference))
            except AssertionError as error:
                entry["refused"] = f"does not match {v.reference}: {error}"
                results[name] = entry
                continue
            except Exception as error:  # a path that fails to run (e.g. to compile) is not timed
                entry["refused"] = f"failed: {type(error).__name__}: {_first_line(error)}"
                results[name] = entry
                continue
        timed[name] = v
        results[name] = entry

    def forward(v: Variant) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad(), v.context():
                return v.forward(v.x)

        return call

    def train(v: Variant) -> Callable[[], object]:
        def call() -> None:
            with v.context():
                out = v.forward(v.x)
            out.backward(grad.to(out.dtype) if v.name != "keras" else grad)

        return call

    def clear(v: Variant) -> Callable[[], None]:
        def call() -> None:
            for p in v.params:
                p.grad = None

        return call

    for name, v in list(timed.items()):  # warm-up: compile, caches, allocator
        try:
            forward(v)()
            clear(v)()  # every timed step starts from no gradients, as after zero_grad()
            train(v)()
        except Exception as error:  # a path that fails to run is reported, not timed
            results[name]["refused"] = f"failed: {type(error).__name__}: {_first_line(error)}"
            del timed[name]
    fwd_cases = {name: forward(v) for name, v in timed.items()}
    train_cases = {name: train(v) for name, v in timed.items()}
    fwd_times = _measure.time_interleaved(fwd_cases, args.rounds, device)
    prepare = {name: clear(v) for name, v in timed.items()}
    train_times = _measure.time_interleaved(train_cases, args.rounds, device, prepare=prepare)
    for name, v in timed.items():
        entry = results[name]
        entry["forward"] = _measure.summarise(fwd_times[name])
        entry["forward_gflops"] = flops_fwd / (entry["forward"]["median_ms"] / 1e3) / 1e9
        entry["train"] = _measure.summarise(train_times[name])
        seconds = entry["train"]["median_ms"] / 1e3
        entry["train_gflops"] = flops_train / seconds / 1e9
        entry["train_fraction_of_peak"] = entry["train_gflops"] / peaks[v.precision]
        if not args.no_memory:
            clear(v)()
            with v.context():
                entry["memory_mb"] = _measure.memory_mb(
                    functools.partial(v.forward, v.x),
                    lambda out: out.backward(grad.to(out.dtype)),
                    device,
                )
    return {
        "results": results,
        "notes": notes,
        "flops": {"forward": flops_fwd, "train": flops_train},
    }


def _bench_stream(
    shape: Shape, device: torch.device, args: argparse.Namespace, peaks: dict[str, float]
) -> dict[str, Any]:
    torch.manual_seed(0)
    size = (shape.size, shape.size)
    peep = _layer(shape, device, peephole="spatial")
    naive = _baselines.naive_from(peep)
    x = torch.randn(shape.batch, 1, shape.in_channels, *size, device=device)
    states = [
        tuple(torch.randn(shape.batch, c, *size, device=device) for _ in range(2))
        for c in shape.hidden
    ]
    cells = cast("list[ConvLSTMCell]", list(peep.cells))

    def naive_step() -> Tensor:
        inp = x[:, 0]
        for cell, (h, c) in zip(naive.cells, states, strict=True):
            inp, _ = cell(inp, h, c)
        return inp

    def cell_step() -> Tensor:
        inp = x[:, 0]
        for cell, state in zip(cells, states, strict=True):
            inp, _ = cell(inp, state)
        return inp

    def layer_step() -> Tensor:
        return peep(x, states)[0][:, 0]

    def floor_step() -> Tensor:
        inp = x[:, 0]
        for cell, (h, _) in zip(cells, states, strict=True):
            inp = cell.recurrent_conv(h).add_(cell.input_conv(inp))[:, : cell.hidden_channels]
        return inp

    cases = {
        "naive": naive_step,
        "floor": floor_step,
        "convlstm_cell": cell_step,
        "convlstm_layer": layer_step,
    }
    results: dict[str, Any] = {}
    threads = torch.get_num_threads()
    if args.stream_threads:
        torch.set_num_threads(args.stream_threads)
    with torch.no_grad():
        with fast.plain():
            want = cell_step()
        for name in ("naive", "convlstm_cell", "convlstm_layer"):
            try:
                got = cases[name]()
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
                results[name] = {"check": {"output": _max_error(got, want)}}
            except AssertionError as error:
                results[name] = {"refused": f"does not match plain: {_first_line(error)}"}
                del cases[name]
        results["floor"] = {}
        for call in cases.values():
            call()
        repeat = max(1, args.stream_repeat)
        # dict(): time_interleaved's dict[str, Callable[[], object]] is invariant in its values.
        times = _measure.time_interleaved(dict(cases), args.rounds, device, repeat=repeat)
    torch.set_num_threads(threads)
    flops, _ = _measure.conv_flops(
        shape.in_channels, shape.hidden, shape.kernel, shape.size, shape.batch, 1, False
    )
    for name, samples in times.items():
        results[name]["forward"] = _measure.summarise(samples)
        results[name]["forward_gflops"] = (
            flops / (results[name]["forward"]["median_ms"] / 1e3) / 1e9
        )
        results[name]["precision"] = "fp32"
    notes = (
        [f"timed with {args.stream_threads or threads} CPU thread(s)"]
        if device.type == "cpu"
        else []
    )
    return {"results": results, "notes": notes, "flops": {"forward": flops}}


def _ratios(shape: Shape, results: dict[str, Any]) -> dict[str, float]:
    """Speed-ups (> 1: the first is faster) and memory ratios between variants."""

    def t(name: str, kind: str) -> float | None:
        entry = results.get(name, {})
        return entry[kind]["median_ms"] if kind in entry else None

    pairs = (
        [
            ("convlstm_layer_vs_naive", "convlstm_layer", "naive", "forward"),
            ("convlstm_cell_vs_naive", "convlstm_cell", "naive", "forward"),
        ]
        if shape.stream
        else [
            ("train_convlstm_vs_floor", "convlstm", "floor", "train"),
            ("train_convlstm_peep_vs_naive", "convlstm_peep", "naive", "train"),
            ("train_convlstm_vs_keras", "convlstm", "keras", "train"),
            ("train_convlstm_vs_plain", "convlstm", "convlstm_plain", "train"),
            ("train_channels_last_vs_nchw", "convlstm", "convlstm_nchw", "train"),
            ("train_nchw_vs_channels_last", "convlstm", "convlstm_cl", "train"),
            ("train_joint_vs_batched_input_conv", "convlstm", "convlstm_batched", "train"),
            ("train_batched_vs_joint_input_conv", "convlstm", "convlstm_joint", "train"),
            ("train_bf16_vs_fp32", "convlstm_bf16", "convlstm", "train"),
            ("train_compiled_vs_convlstm", "convlstm_compiled", "convlstm", "train"),
            ("train_compiled_vs_naive", "convlstm_compiled", "naive", "train"),
            ("train_compiled_vs_floor", "convlstm_compiled", "floor", "train"),
            ("forward_convlstm_vs_floor", "convlstm", "floor", "forward"),
            ("forward_convlstm_peep_vs_naive", "convlstm_peep", "naive", "forward"),
            ("forward_convlstm_vs_keras", "convlstm", "keras", "forward"),
        ]
    )
    ratios = {}
    for label, ours, other, kind in pairs:
        a, b = t(ours, kind), t(other, kind)
        if a is not None and b is not None:
            ratios[label] = b / a
    floor_mem = results.get("floor", {}).get("memory_mb")
    if floor_mem:
        for name in ("convlstm", "convlstm_ckpt", "convlstm_peep", "naive", "keras"):
            mem = results.get(name, {}).get("memory_mb")
            if mem:
                ratios[f"after_forward_memory_{name}_vs_floor"] = (
                    mem["after_forward"] / floor_mem["after_forward"]
                )
                ratios[f"peak_memory_{name}_vs_floor"] = mem["peak"] / floor_mem["peak"]
    return ratios


def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32"] = torch.backends.cudnn.allow_tf32
    return info


def run_suite(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the shapes of ``args`` (see :func:`add_parser`); returns the JSON-able report and, if
    ``args.json`` is set, writes it there after each shape (partial results survive a crash)."""
    device = _device(args.device)
    if device.type == "cuda":  # fp32 means fp32: no TF32 unless asked (bf16 is its own variant)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.shapes or (QUICK if args.quick else GPU if device.type == "cuda" else FULL)
    shapes = [parse_shape(n) for n in names]
    if device.type == "cpu" and not args.no_tune_malloc:
        fast.tune_cpu_allocator()
    peaks = {
        "fp32": _measure.peak_gflops(device, torch.float32),
        "bf16": _measure.peak_gflops(device, torch.bfloat16),
    }
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": _machine(device),
        "options": {k: v for k, v in vars(args).items() if k not in ("func", "handler")},
        "peak_gflops": peaks,
        "shapes": [],
    }
    log(f"peak (matmul): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    for shape in shapes:
        log(f"== {shape.name}: {shape.describe()}")
        if shape.stream:  # other load on the machine lowers a measured peak: keep the best
            bench = _bench_stream
        else:
            for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                peaks[precision] = max(peaks[precision], _measure.peak_gflops(device, dtype))
            bench = _bench_train
        entry = {"shape": dataclasses.asdict(shape), **bench(shape, device, args, peaks)}
        entry["ratios"] = _ratios(shape, entry["results"])
        report["shapes"].append(entry)
        log(format_shape(entry))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1))
    return report


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def _fmt_time(entry: dict[str, Any], kind: str) -> str:
    if kind not in entry:
        return "-"
    s = entry[kind]
    return f"{s['median_ms']:.3g} [{s['q1_ms']:.3g}, {s['q3_ms']:.3g}]"


def format_shape(entry: dict[str, Any]) -> str:
    """A text table of one shape's results: times in ms as median [q1, q3]."""
    rows = [("variant", "forward ms", "train ms", "GFLOP/s", "% peak", "MB fwd/peak", "check")]
    for name, r in entry["results"].items():
        if "refused" in r:
            rows.append((name, "-", "-", "-", "-", "-", "REFUSED: " + r["refused"][:60]))
            continue
        gflops = r.get("train_gflops", r.get("forward_gflops"))
        fraction = r.get("train_fraction_of_peak")
        mem = r.get("memory_mb")
        check = r.get("check")
        rows.append(
            (
                name,
                _fmt_time(r, "forward"),
                _fmt_time(r, "train"),
                f"{gflops:.1f}" if gflops else "-",
                f"{100 * fraction:.0f}%" if fraction else "-",
                f"{mem['after_forward']:.0f}/{mem['peak']:.0f}" if mem else "-",
                "ok" if check else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines += [f"  {k}: {v:.2f}" for k, v in entry["ratios"].items()]
    lines += [f"  note: {n}" for n in entry["notes"]]
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``benchmark`` subcommand to ``subparsers``; its handler, ``args.handler(args)``,
    returns the exit code."""
    parser = subparsers.add_parser(
        "benchmark",
        help="time and size the ConvLSTM layer against a naive cell, Keras and the bare convolutions",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    _add_arguments(parser)
    parser.set_defaults(handler=_handle)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds (~1 min)")
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="SHAPE",
        help=f"grid names ({', '.join(SHAPES)}) or B,T,C_in,S,H1-H2,K[,stream]",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT")
    parser.add_argument("--rounds", type=int, help="timing rounds (default 7, --quick 3)")
    parser.add_argument("--variants", nargs="+", help="time only these variants")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--no-tune-malloc",
        action="store_true",
        help="CPU: keep glibc's allocator as it is (by default the suite first calls "
        "convlstm.fast.tune_cpu_allocator(), so that large tensors are not page-faulted afresh "
        "at every step)",
    )
    parser.add_argument("--compile", action="store_true", help="time compile_layer on CPU too")
    parser.add_argument("--no-compile", action="store_true", help="skip compile_layer on CUDA")
    parser.add_argument("--no-keras", action="store_true", help="leave Keras out")
    parser.add_argument("--tf32", action="store_true", help="CUDA: let fp32 use TF32 tensor cores")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--stream-repeat", type=int, default=20, help="calls per timing of a streaming step"
    )
    parser.add_argument(
        "--stream-threads",
        type=int,
        default=1,
        help="CPU threads for streaming shapes (default 1: a B=1 step is latency-bound, and two "
        "threads wait on each other for every small operation; 0 keeps --threads)",
    )


def _handle(args: argparse.Namespace) -> int:
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    try:
        args.shapes = [s.name for s in map(parse_shape, args.shapes)] if args.shapes else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_suite(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark as a script (``benchmarks/bench.py``)."""
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    return _handle(parser.parse_args(argv))
