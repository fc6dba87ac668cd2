"""Measuring for the benchmark (:mod:`convlstm.bench`): interleaved timing, activation memory,
FLOP counts, peak speed.

Shape legend: ``B`` batch, ``T`` steps, ``C_in`` input channels, ``C`` hidden channels of a layer,
``S`` frame side (frames are ``S×S``), ``k`` kernel side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "conv_flops",
    "memory_mb",
    "peak_gflops",
    "summarise",
    "time_interleaved",
]


def conv_flops(
    in_channels: int,
    hidden: Sequence[int],
    kernel: int,
    size: int,
    batch: int,
    steps: int,
    from_zero_state: bool,
) -> tuple[float, float]:
    """Analytic FLOPs (multiply-adds count 2) of a 2-D ConvLSTM stack's convolutions:
    ``(forward, forward + backward)``.

    Forward: per layer the input convolution over ``B*T`` frames and the recurrent one over
    ``T`` steps (``T - 1`` from a zero state, whose first step has none). Backward: twice the
    forward (input and weight gradients), except the first layer's input gradient, which the
    input does not need. Gate arithmetic is not counted (under 1% of the FLOPs here).
    """
    pixels = batch * size * size
    recurrent_steps = steps - 1 if from_zero_state else steps
    forward = backward = 0.0
    channels = in_channels
    for layer, c in enumerate(hidden):
        x_conv = 2.0 * pixels * steps * 4 * c * channels * kernel * kernel
        h_conv = 2.0 * pixels * recurrent_steps * 4 * c * c * kernel * kernel
        forward += x_conv + h_conv
        backward += (1 if layer == 0 else 2) * x_conv + 2 * h_conv
        channels = c
    return forward, forward + backward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gflops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Measured matrix-product speed (GFLOP/s) for ``dtype`` on ``device``: the best of several
    ``n×n @ n×n`` products, the reference for "fraction of peak"."""
    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(10 if device.type == "cuda" else 1):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / (10 if device.type == "cuda" else 1))
    return 2.0 * n**3 / best / 1e9


def time_interleaved(
    cases: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    repeat: int = 1,
    prepare: dict[str, Callable[[], None]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each case, timed in ``rounds`` rounds; each round runs every case once
    (``repeat`` calls), in an order that rotates between rounds so that no case always follows the
    same neighbour. ``prepare[name]`` runs untimed before each timing of ``name``."""
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if prepare and name in prepare:
                prepare[name]()
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeat):
                cases[name]()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / repeat)
    return samples


def summarise(seconds: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max in milliseconds, and the sample count."""
    ms = sorted(s * 1e3 for s in seconds)
    quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": quartiles[0],
        "q3_ms": quartiles[2],
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "n": len(ms),
    }


def memory_mb(
    forward: Callable[[], Tensor], backward: Callable[[Tensor], None], device: torch.device
) -> dict[str, float]:
    """Memory of one training step above what was allocated before it, in MB (1e6 bytes).

    ``after_forward``: held when the forward returns (its output and what autograd keeps for
    backward — the activation memory). ``peak``: the most held at once during forward and
    backward. On CUDA from the caching allocator's counters; on CPU from the profiler's record of
    every allocation and free (works for checkpointing too, whose saved inputs no saved-tensor hook
    sees).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = forward()
        torch.cuda.synchronize(device)
        after = torch.cuda.memory_allocated(device) - base
        backward(out)
        del out
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        return {"after_forward": after / 1e6, "peak": peak / 1e6}
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = forward()
        with record_function("convlstm_benchmark_backward"):
            backward(out)
        del out
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    boundary = min(e.start_ns() for e in events if e.name() == "convlstm_benchmark_backward")
    allocations = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    held = peak = after = 0
    for stamp, nbytes in allocations:
        if stamp < boundary:
            after += nbytes
        held += nbytes
        peak = max(peak, held)
    return {"after_forward": after / 1e6, "peak": peak / 1e6}
