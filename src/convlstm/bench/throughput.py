"""Inference throughput: sequences per second of :func:`convlstm.predict.predict` (what
``convlstm predict`` and ``convlstm evaluate`` run per batch) and its memory, by batch size.

Models (:data:`MODELS`): ``default``, the main job's model as its recipe trains it
(``moving_mnist`` with layer-normalised gates: 64x64 frames in 8x8 patches, 2 x 32 channels), and
``openstl``, OpenSTL's ConvLSTM size for Moving MNIST (``moving_mnist_large``: 4 x 128 channels,
5x5 kernels, 16x16 after 4x4 patches). Both read 10 frames and forecast 10, untrained weights
(speed does not depend on them).

Example:
    >>> import torch
    >>> report = run_throughput(["default"], [1, 2], torch.device("cpu"), rounds=1)
    >>> sorted(report["default"]["batches"][0])
    ['batch', 'median_ms', 'peak_mb', 'sequences_per_s']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from convlstm.bench import measure
from convlstm.models import create_model
from convlstm.predict import predict

__all__ = ["FRAME", "MODELS", "SATURATED", "format_throughput", "run_throughput"]

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("moving_mnist", {"norm": "layer"}),
    "openstl": ("moving_mnist_large", {}),
}
"""Name -> (registered model, constructor overrides)."""
FRAME = (1, 64, 64)
"""``(C, H, W)`` of the frames, Moving MNIST's."""
INPUT_LEN = HORIZON = 10
SATURATED = 0.95
"""The saturating batch is the smallest reaching this fraction of the best throughput."""


def run_throughput(
    models: Sequence[str], batches: Sequence[int], device: torch.device, rounds: int = 5
) -> dict[str, Any]:
    """Per model: ``batches``, one entry per batch size (``median_ms`` per call of
    :func:`~convlstm.predict.predict` on one batch of ``(batch, 10, 1, 64, 64)`` frames,
    ``sequences_per_s``, ``peak_mb``: the most memory held during a call above what was held
    before it), and ``saturating_batch``. Batch sizes are timed interleaved, ``rounds`` rounds."""
    report: dict[str, Any] = {}
    for name in models:
        registered, overrides = MODELS[name]
        model = create_model(registered, **overrides).to(device).eval()
        frames = {b: torch.rand(b, INPUT_LEN, *FRAME, device=device) for b in batches}

        cases = {str(b): _call(model, frames[b]) for b in batches}
        for case in cases.values():  # warm-up: allocator, oneDNN's kernels
            case()
        times = measure.time_interleaved(cases, rounds, device)
        entries = []
        for b in batches:
            median = measure.summarise(times[str(b)])["median_ms"]
            peak = measure.memory_mb(cases[str(b)], lambda _: None, device)["peak"]
            entries.append(
                {
                    "batch": b,
                    "median_ms": median,
                    "sequences_per_s": b / median * 1e3,
                    "peak_mb": peak,
                }
            )
        best = max(e["sequences_per_s"] for e in entries)
        saturating = next(e["batch"] for e in entries if e["sequences_per_s"] >= SATURATED * best)
        report[name] = {
            "model": registered,
            "overrides": overrides,
            "parameters": sum(p.numel() for p in model.parameters()),
            "batches": entries,
            "saturating_batch": saturating,
        }
    return report


def _call(model: torch.nn.Module, frames: torch.Tensor) -> Callable[[], Any]:
    """One :func:`~convlstm.predict.predict` call on all of ``frames`` ``(B, T_in, C, H, W)``."""
    return lambda: predict(model, frames, HORIZON, batch_size=len(frames))


def format_throughput(report: dict[str, Any]) -> str:
    """A text table per model of :func:`run_throughput`'s report."""
    lines = []
    for name, entry in report.items():
        lines.append(
            f"== {name}: {entry['model']} {entry['overrides'] or ''} "
            f"({entry['parameters']:,} parameters), 10 frames in, 10 out, 64x64"
        )
        lines.append("batch  ms/call  sequences/s  peak MB")
        for e in entry["batches"]:
            mark = "  <- saturates" if e["batch"] == entry["saturating_batch"] else ""
            lines.append(
                f"{e['batch']:>5}  {e['median_ms']:7.1f}  {e['sequences_per_s']:11.1f}  "
                f"{e['peak_mb']:7.1f}{mark}"
            )
    return "\n".join(lines)
