"""Load: a long streaming run keeps memory flat and equals the one-shot computation; evaluating
a memory-mapped file far larger than what is read keeps memory bounded.

Memory is measured as the process's resident set (``VmRSS`` of ``/proc/self/status``) and as the
number of live tensors the garbage collector sees, after a warm-up. A positive control (states
carried with their autograd graph, never detached) shows that the measurement does see a leak.
The 100k-step soak of the same loop is ``scripts/soak.py stream``.
"""

from __future__ import annotations

import gc
import io
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm import ConvLSTM
from convlstm.checkpoint import make_checkpoint, save_checkpoint
from convlstm.config import Config, apply_overrides, config_to_dict
from convlstm.evaluation import evaluate_checkpoint
from convlstm.models import EncoderForecaster
from test_reliability_support import rss_mb

STEPS = 3000
CHUNKS = [1, 2, 3, 4, 1, 5]


pytestmark = pytest.mark.usefixtures("one_thread")


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.fixture(scope="module")
def stream():
    torch.manual_seed(0)
    layer = ConvLSTM(1, [4, 4], 3, spatial_dims=2, peephole="channel", dtype=torch.float64)
    x = torch.randn(1, STEPS, 1, 8, 8, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (module fixtures run before the autouse one_thread)
    try:
        with torch.no_grad():
            full, states = layer(x)
    finally:
        torch.set_num_threads(threads)
    return layer, x, full, states


def run_stream(layer, x, full, mode: str, steps: int) -> dict:
    """Feed ``x`` in chunks, carrying the state; compare every chunk with the one-shot output."""
    state, pos, index = None, 0, 0
    figures: dict = {}
    while pos < steps:
        n = CHUNKS[index % len(CHUNKS)]
        chunk = x[:, pos : pos + n]
        if mode == "no_grad":
            with torch.no_grad():
                out, state = layer(chunk, state)
        else:
            out, state = layer(chunk, state)
            if mode == "detach":  # truncated backpropagation through time
                out.square().mean().backward()
                state = [(h.detach(), c.detach()) for h, c in state]
        # One-shot batches the input convolution over time, a 1-step chunk convolves [x, h]
        # jointly: the sums round in another order, so equal up to float64 rounding, no drift.
        error = (out.detach() - full[:, pos : pos + n]).abs().max().item()
        assert error <= 1e-12, (mode, pos, error)
        pos += n
        index += 1
        if index == 100:  # after warm-up
            figures["rss_start"], figures["tensors_start"] = rss_mb(), live_tensors()
    figures["rss_end"], figures["tensors_end"] = rss_mb(), live_tensors()
    figures["state"] = state
    layer.zero_grad(set_to_none=True)
    return figures


@pytest.mark.parametrize("mode", ["no_grad", "detach"])
def test_long_streaming_keeps_memory_flat_and_equals_one_shot(stream, mode) -> None:
    layer, x, full, states = stream
    figures = run_stream(layer, x, full, mode, STEPS)
    growth = figures["rss_end"] - figures["rss_start"]
    print(f"{mode}: {STEPS} steps, RSS {figures['rss_start']:.1f} -> {figures['rss_end']:.1f} MiB,"
          f" live tensors {figures['tensors_start']} -> {figures['tensors_end']}")  # fmt: skip
    assert figures["tensors_end"] <= figures["tensors_start"]
    assert growth < 8, f"RSS grew {growth:.1f} MiB over {STEPS} steps"
    for (h, c), (fh, fc) in zip(figures["state"], states, strict=True):
        torch.testing.assert_close(h.detach(), fh, rtol=0, atol=1e-12)
        torch.testing.assert_close(c.detach(), fc, rtol=0, atol=1e-12)


LEAK_CONTROL = """
import torch
from convlstm import ConvLSTM
from test_reliability_support import rss_mb
torch.manual_seed(0)
layer = ConvLSTM(1, [4, 4], 3, spatial_dims=2, dtype=torch.float64)
x = torch.randn(1, 1, 1, 16, 16, dtype=torch.float64)
state = None
for step in range(600):
    _, state = layer(x, state)
    if step == 100:
        start = rss_mb()
print(rss_mb() - start)
"""


def test_the_measurement_sees_a_leak() -> None:
    """Positive control: states carried with their graph (no ``detach``) hold every step.

    Run in a fresh process: in this one, heap pages freed by earlier tests can absorb the growth.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", LEAK_CONTROL], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) > 8  # ~25 kB of saved tensors per step and layer


# ----------------------------------------------------------------------------- memory-mapped files


def sparse_npy(path: Path, shape: tuple[int, ...], dtype: str) -> int:
    """A .npy file of ``shape`` whose data are a hole (zeros), written in microseconds."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    )
    size = len(header.getvalue()) + int(np.prod(shape)) * np.dtype(dtype).itemsize
    with path.open("wb") as handle:
        handle.write(header.getvalue())
        handle.truncate(size)
    return size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = EncoderForecaster(1, [4], 3, patch_size=4)
    config = config_to_dict(apply_overrides(Config(), ["data.input_len=3", "data.horizon=2"]))
    folder = tmp_path_factory.mktemp("memmap")
    return save_checkpoint(folder / "model.pt", make_checkpoint(model, "moving_mnist", config))


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "layout"),
    [
        ("mnist_test_seq.npy", (20, 2_500, 64, 64), "uint8", None),  # published layout, 205 MB
        ("arrays.npy", (12_500, 5, 1, 32, 32), "float32", "samples"),  # user arrays, 256 MB
    ],
)
def test_evaluating_a_large_memory_mapped_file_reads_only_what_it_needs(
    tmp_path, checkpoint, name, shape, dtype, layout
) -> None:
    small = tmp_path / f"small-{name}"
    sparse_npy(small, (shape[0], 8, *shape[2:]) if layout is None else (8, *shape[1:]), dtype)
    evaluate_checkpoint(checkpoint, small, tmp_path / "warm-up", num_samples=2, batch_size=2,
                        num_gifs=1, layout=layout, progress=False)  # fmt: skip
    big = tmp_path / name
    size_mb = sparse_npy(big, shape, dtype) / 2**20
    assert size_mb > 190
    start = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = evaluate_checkpoint(checkpoint, big, tmp_path / "report", num_samples=4,
                                  batch_size=2, num_gifs=1, layout=layout, progress=False)  # fmt: skip
    growth = rss_mb() - start
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak
    print(f"{name}: {size_mb:.0f} MiB file, RSS +{growth:.1f} MiB, peak +{peak_growth:.1f} MiB")
    assert results["dataset"]["num_sequences"] == 4
    assert growth < 40 and peak_growth < 40, (size_mb, growth, peak_growth)
    assert os.stat(big).st_blocks * 512 < 2**20  # still sparse: nothing was written to it
