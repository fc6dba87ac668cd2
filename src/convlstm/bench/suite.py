"""The benchmark suite: every shape's variants checked, timed interleaved, and reported."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from convlstm import fast
from convlstm._atomic import atomic_write_text
from convlstm.bench import measure, references
from convlstm.bench.shapes import FULL, GPU, QUICK, Shape, parse_shape
from convlstm.bench.variants import (
    Variant,
    bias_free_copy,
    check,
    first_line,
    make_layer,
    max_error,
    run_once,
    train_variants,
)
from convlstm.cells import ConvLSTMCell
from convlstm.layers import ConvLSTM2d

__all__ = ["bench_stream", "bench_train", "format_shape", "resolve_device", "run_suite"]


def bench_train(
    shape: Shape, device: torch.device, args: argparse.Namespace, peaks: dict[str, float]
) -> dict[str, Any]:
    variants, notes = train_variants(shape, device, args)
    wanted = set(args.variants) if args.variants else None
    flops_fwd, flops_train = measure.conv_flops(
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
        return None if twin is None else run_once(twin, grad, True)

    for name, v in variants.items():
        if name.startswith("plain") or (wanted is not None and name not in wanted):
            continue
        entry: dict[str, Any] = {"precision": v.precision}
        if v.reference is not None:
            try:
                entry["check"] = check(v, variants[v.reference], grad, truth(v.reference))
            except AssertionError as error:
                entry["refused"] = f"does not match {v.reference}: {error}"
                results[name] = entry
                continue
            except Exception as error:  # a path that fails to run (e.g. to compile) is not timed
                entry["refused"] = f"failed: {type(error).__name__}: {first_line(error)}"
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
            results[name]["refused"] = f"failed: {type(error).__name__}: {first_line(error)}"
            del timed[name]
    fwd_cases = {name: forward(v) for name, v in timed.items()}
    train_cases = {name: train(v) for name, v in timed.items()}
    fwd_times = measure.time_interleaved(fwd_cases, args.rounds, device)
    prepare = {name: clear(v) for name, v in timed.items()}
    train_times = measure.time_interleaved(train_cases, args.rounds, device, prepare=prepare)
    for name, v in timed.items():
        entry = results[name]
        entry["forward"] = measure.summarise(fwd_times[name])
        entry["forward_gflops"] = flops_fwd / (entry["forward"]["median_ms"] / 1e3) / 1e9
        entry["train"] = measure.summarise(train_times[name])
        seconds = entry["train"]["median_ms"] / 1e3
        entry["train_gflops"] = flops_train / seconds / 1e9
        entry["train_fraction_of_peak"] = entry["train_gflops"] / peaks[v.precision]
        if not args.no_memory:
            clear(v)()
            with v.context():
                entry["memory_mb"] = measure.memory_mb(
                    functools.partial(v.forward, v.x),
                    lambda out: out.backward(grad.to(out.dtype)),
                    device,
                )
    return {
        "results": results,
        "notes": notes,
        "flops": {"forward": flops_fwd, "train": flops_train},
    }


def bench_stream(
    shape: Shape, device: torch.device, args: argparse.Namespace, peaks: dict[str, float]
) -> dict[str, Any]:
    """One step of a stack from given states, without gradients: the naive cell and the peers
    (:mod:`convlstm.bench.references`) against our cell and layer computing the same function."""
    torch.manual_seed(0)
    size = (shape.size, shape.size)
    peep = make_layer(shape, device, peephole="spatial")
    bare = make_layer(shape, device)
    bias_free = bias_free_copy(bare)
    x = torch.randn(shape.batch, 1, shape.in_channels, *size, device=device)
    states = [
        tuple(torch.randn(shape.batch, c, *size, device=device) for _ in range(2))
        for c in shape.hidden
    ]

    def ours(layer: ConvLSTM2d) -> Callable[[], Tensor]:
        cells = cast("list[ConvLSTMCell]", list(layer.cells))

        def step() -> Tensor:
            inp = x[:, 0]
            for cell, state in zip(cells, states, strict=True):
                inp, _ = cell(inp, state)
            return inp

        return step

    def theirs(peer: torch.nn.Module) -> Callable[[], Tensor]:
        cells = list(cast(torch.nn.ModuleList, peer.cells))  # forward(x, h, c)

        def step() -> Tensor:
            inp = x[:, 0]
            for cell, (h, c) in zip(cells, states, strict=True):
                inp, _ = cell(inp, h, c)
            return inp

        return step

    peep_cells = cast("list[ConvLSTMCell]", list(peep.cells))

    def floor_step() -> Tensor:
        inp = x[:, 0]
        for cell, (h, _) in zip(peep_cells, states, strict=True):
            inp = cell.recurrent_conv(h).add_(cell.input_conv(inp))[:, : cell.hidden_channels]
        return inp

    # name: (step, the plain step it must match)
    cases: dict[str, tuple[Callable[[], Tensor], Callable[[], Tensor] | None]] = {
        "naive": (theirs(references.naive_from(peep)), ours(peep)),
        "floor": (floor_step, None),
        "convlstm_cell": (ours(peep), ours(peep)),
        "convlstm_layer": (lambda: peep(x, states)[0][:, 0], ours(peep)),
    }
    if shape.kernel % 2:
        cases["ndrplz"] = (theirs(references.joint_from(bare)), ours(bare))
        cases["convlstm_cell_bare"] = (ours(bare), ours(bare))
        cases["openstl"] = (theirs(references.openstl_from(bias_free)), ours(bias_free))
        cases["convlstm_cell_nobias"] = (ours(bias_free), ours(bias_free))
    results: dict[str, Any] = {}
    threads = torch.get_num_threads()
    with torch.no_grad(), _global_settings(threads=args.stream_threads or None):
        for name, (call, reference) in list(cases.items()):
            if reference is None:
                results[name] = {}
                continue
            with fast.plain():
                want = reference()
            try:
                got = call()
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
                results[name] = {"check": {"output": max_error(got, want)}}
            except AssertionError as error:
                results[name] = {"refused": f"does not match plain: {first_line(error)}"}
                del cases[name]
        steps = {name: call for name, (call, _) in cases.items()}
        for call in steps.values():
            call()
        repeat = max(1, args.stream_repeat)
        times = measure.time_interleaved(dict(steps), args.rounds, device, repeat=repeat)
    flops, _ = measure.conv_flops(
        shape.in_channels, shape.hidden, shape.kernel, shape.size, shape.batch, 1, False
    )
    for name, samples in times.items():
        results[name]["forward"] = measure.summarise(samples)
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
            ("convlstm_cell_vs_ndrplz", "convlstm_cell_bare", "ndrplz", "forward"),
            ("convlstm_cell_vs_openstl", "convlstm_cell_nobias", "openstl", "forward"),
        ]
        if shape.stream
        else [
            ("train_convlstm_vs_floor", "convlstm", "floor", "train"),
            ("train_convlstm_peep_vs_naive", "convlstm_peep", "naive", "train"),
            ("train_convlstm_vs_keras", "convlstm", "keras", "train"),
            ("train_convlstm_vs_torchgeo", "convlstm", "torchgeo", "train"),
            ("train_convlstm_vs_ndrplz", "convlstm", "ndrplz", "train"),
            ("train_convlstm_vs_openstl", "convlstm", "openstl", "train"),
            ("train_convlstm_vs_per_step", "convlstm", "convlstm_per_step", "train"),
            ("train_tuned_vs_convlstm", "convlstm_tuned", "convlstm", "train"),
            ("train_tuned_vs_openstl", "convlstm_tuned", "openstl", "train"),
            ("train_tuned_vs_ndrplz", "convlstm_tuned", "ndrplz", "train"),
            ("train_bf16_convlstm_vs_torchgeo", "convlstm_bf16", "torchgeo_bf16", "train"),
            ("train_bf16_convlstm_vs_ndrplz", "convlstm_bf16", "ndrplz_bf16", "train"),
            ("train_bf16_convlstm_vs_openstl", "convlstm_bf16", "openstl_bf16", "train"),
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
            ("forward_convlstm_vs_torchgeo", "convlstm", "torchgeo", "forward"),
            ("forward_convlstm_vs_ndrplz", "convlstm", "ndrplz", "forward"),
            ("forward_convlstm_vs_openstl", "convlstm", "openstl", "forward"),
            ("forward_bf16_convlstm_vs_ndrplz", "convlstm_bf16", "ndrplz_bf16", "forward"),
            ("forward_bf16_convlstm_vs_openstl", "convlstm_bf16", "openstl_bf16", "forward"),
        ]
    )
    ratios = {}
    for label, ours, other, kind in pairs:
        a, b = t(ours, kind), t(other, kind)
        if a is not None and b is not None:
            ratios[label] = b / a
    floor_mem = results.get("floor", {}).get("memory_mb")
    if floor_mem:
        for name in ("convlstm", "convlstm_ckpt", "convlstm_peep", "naive", "keras", "torchgeo"):
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


@contextlib.contextmanager
def _global_settings(threads: int | None = None, tf32: bool | None = None) -> Iterator[None]:
    """Within the block, torch's CPU thread count and (on CUDA) TF32 are as given (``None``
    keeps one); afterwards they are what they were, even if the block raises."""
    before = (
        torch.get_num_threads(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    try:
        if threads:
            torch.set_num_threads(threads)
        if tf32 is not None:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[1:]


def run_suite(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the shapes of ``args`` (see :func:`convlstm.bench.cli.add_parser`); returns the
    JSON-able report and, if ``args.json`` is set, writes it there after each shape (partial
    results survive a crash).

    The thread count (``args.threads``) and, on CUDA, TF32 (``args.tf32``) are set for the run
    and restored afterwards. The allocator is the one users get unless ``args.tune_malloc``
    (:func:`convlstm.fast.tune_cpu_allocator`, permanent for the process).
    """
    device = resolve_device(args.device)
    # fp32 means fp32 on CUDA: no TF32 unless asked (bf16 is its own variant).
    tf32 = bool(args.tf32) if device.type == "cuda" else None
    with _global_settings(threads=args.threads, tf32=tf32):
        return _run_shapes(args, device, log)


def _run_shapes(
    args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> dict[str, Any]:
    names = args.shapes or (QUICK if args.quick else GPU if device.type == "cuda" else FULL)
    shapes = [parse_shape(n) for n in names]
    if device.type == "cpu" and args.tune_malloc:
        fast.tune_cpu_allocator()
    peaks = {
        "fp32": measure.peak_gflops(device, torch.float32),
        "bf16": measure.peak_gflops(device, torch.bfloat16),
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
            bench = bench_stream
        else:
            for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                peaks[precision] = max(peaks[precision], measure.peak_gflops(device, dtype))
            bench = bench_train
        entry = {"shape": dataclasses.asdict(shape), **bench(shape, device, args, peaks)}
        entry["ratios"] = _ratios(shape, entry["results"])
        report["shapes"].append(entry)
        log(format_shape(entry))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.json, json.dumps(report, indent=1), overwrite=True)
    return report


def resolve_device(name: str) -> torch.device:
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
