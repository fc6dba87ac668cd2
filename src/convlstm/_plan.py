"""How a layer runs, decided in one place: :func:`plan_layer` returns a :class:`Plan` (memory
format, how the input convolution is batched, whether the whole layer runs as one autograd node)
from the cell's public description (:class:`~convlstm._geometry.CellGeometry`), the input frame
and the switches of :mod:`convlstm.fast`; the layer (:mod:`convlstm.layers`) executes it.

The rules come from ``benchmarks/`` measurements (``benchmarks/README.md``); every choice gives
the same function, and :func:`convlstm.fast.settings` can force each one.

* **channels-last** (2-D only): oneDNN's and cuDNN's fastest convolutions use NHWC. On CPU it
  pays on AVX-512 machines once a step has enough work to amortise the layout's copies (for the
  tiny tensors of streaming inference the standard layout is faster); on an AVX2-only CPU (a
  2-core AMD EPYC, torch 2.13, fwd+bwd) it lost at every benchmark shape: 0.80x the standard
  layout's speed at ``w16``, 0.95x at ``w64``, 0.98x at ``main_job``, so it is not used where
  torch reports no AVX-512. On CUDA in fp32 it paid only for wide layers: on an H200 (cuDNN
  9.19, fwd+bwd, B=8, T=10, k=5, 16×16) channels-last ran 0.94× and 0.92× the standard
  layout's speed at 32 and 64 hidden channels and 1.07× at 128, and 0.93× at B=16, 1×64×64
  in, hidden 64, k=3. Under autocast (bf16/fp16 tensor cores) it is kept.
* **joint input convolution** (CPU only): for a single step (streaming) there is nothing to
  batch, so convolving ``[x_t, h]`` with ``[W_ih, W_hh]`` in one call beats two calls. For a
  sequence it wins where the batched input convolution's output (the gates of every step) is
  large, :data:`JOINT_MIN_BYTES` or more, and the allocator is as users get it: glibc maps
  every allocation over 32 MB afresh, and that output page-faults at every training step. At
  ``w64`` (B=8, T=10, 1x64x64 in, hidden 64-64, fwd+bwd, 335 MB of gates per layer) the joint
  convolution ran 1.07x faster than the batched one on a 2-core AVX2 EPYC and 1.2x on a 2-core
  Xeon with AMX; with :func:`convlstm.fast.tune_cpu_allocator` it was 0.74-0.78x on the Xeon,
  so a tuned allocator keeps the batched convolution. Below that size the batched convolution
  won or tied (``main_job``, 2.6 MB: 1.12x; ``w16``, 42 MB: 1.01x, AVX2 EPYC).

Where rules measured on a few machines do not fit another, :func:`tune` measures:
``convlstm.fast.settings(autotune=True)`` (or ``fast.set_autotune()``) times the alternatives
at the first call of each shape with enough work (:data:`TUNE_MIN_WORK`) and keeps the fastest.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from convlstm import fast
from convlstm._geometry import CellGeometry

__all__ = [
    "CHANNELS_LAST_MIN_WORK",
    "CPU_CHANNELS_LAST",
    "CUDA_CHANNELS_LAST_MIN_HIDDEN",
    "JOINT_MIN_BYTES",
    "TUNE_MIN_WORK",
    "Plan",
    "choices",
    "clear_tuned",
    "plan_layer",
    "tune",
    "tuning_key",
    "use_channels_last",
    "use_joint_conv",
]

CHANNELS_LAST_MIN_WORK = 1 << 16
"""Smallest ``B * C_h * prod(S')`` (elements of one state tensor) for channels-last on CPU."""
CUDA_CHANNELS_LAST_MIN_HIDDEN = 128
"""Fewest hidden channels for channels-last on CUDA in full precision."""
CPU_CHANNELS_LAST = "AVX512" in torch.backends.cpu.get_cpu_capability()
"""Whether channels-last may pay on this CPU: where torch's kernels use AVX-512."""
JOINT_MIN_BYTES = 1 << 26
"""Smallest batched input convolution output (bytes) for which sequences take the joint
convolution on CPU (unless :func:`convlstm.fast.tune_cpu_allocator` was called)."""
TUNE_MIN_WORK = 1 << 20
"""Smallest ``B * T * 4C_h * prod(S')`` (elements of the gates of a sequence) that
:func:`tune` measures; below it the rules decide (the choices differ little, and timings of a few
milliseconds are noisy)."""

_tuned: dict[tuple, dict[str, Any]] = {}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one direction of one layer runs over a sequence.

    Attributes:
        channels_last: run the 2-D convolutions and states in the channels-last memory format.
        input_conv: ``"batched"``: one input convolution of the whole sequence; ``"joint"``: one
            convolution of ``[x_t, h]`` with ``[W_ih, W_hh]`` per step; ``"per_step"``: the input
            convolution inside the checkpoint of each chunk of about ``sqrt(T)`` steps
            (``checkpoint_steps``); ``"once"``: a single frame fed at every step, convolved once.
        fused: the whole layer as one autograd node (:mod:`convlstm._recurrence`), which then
            runs the batched input convolution itself.
    """

    channels_last: bool
    input_conv: str
    fused: bool


def use_channels_last(geometry: CellGeometry, frame: Tensor) -> bool:
    """Run a cell described by ``geometry`` in channels-last for frames shaped like ``frame``
    ``(B, C_in, *S)``?"""
    if geometry.spatial_dims != 2:
        return False
    forced = fast.current().channels_last
    if forced is not None:
        return forced
    if frame.device.type == "cuda":
        return (
            torch.is_autocast_enabled("cuda")
            or geometry.hidden_channels >= CUDA_CHANNELS_LAST_MIN_HIDDEN
        )
    work = frame.shape[0] * geometry.hidden_channels * math.prod(geometry.output_size)
    return frame.device.type == "cpu" and CPU_CHANNELS_LAST and work >= CHANNELS_LAST_MIN_WORK


def use_joint_conv(geometry: CellGeometry, frame: Tensor, steps: int) -> bool:
    """Convolve ``[x_t, h]`` jointly at each of ``steps`` steps for frames shaped like ``frame``?

    Only possible when the input convolution has the recurrent one's geometry (stride 1, no
    dilation, the same symmetric "same" padding) and the bias goes into the convolution
    (no ``norm``): :attr:`~convlstm._geometry.CellGeometry.joint_possible`.
    """
    if not geometry.joint_possible:
        return False
    forced = fast.current().input_conv
    if forced is not None:
        return forced == "joint"
    if frame.device.type != "cpu":
        return False
    if steps == 1:
        return True
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False  # a test of the batch size would pin a dynamic one in the graph
    gates = _gate_elements(geometry, frame, steps)
    return gates * frame.element_size() >= JOINT_MIN_BYTES and not fast.allocator_tuned()


def _gate_elements(geometry: CellGeometry, frame: Tensor, steps: int) -> int:
    """``B * T * 4C_h * prod(S')``: elements of the gates of ``steps`` steps of frames shaped
    like ``frame`` ``(B, C_in, *S)`` (the batched input convolution's output)."""
    return frame.shape[0] * steps * 4 * geometry.hidden_channels * math.prod(geometry.output_size)


def _use_fused_loop(geometry: CellGeometry, frame: Tensor, dtype: torch.dtype) -> bool:
    """Run a layer's time loop as one autograd node (:mod:`convlstm._recurrence`)?

    Whenever it applies: sigmoid/tanh gates, symmetric padding of both convolutions (odd
    kernels), the weights' ``dtype`` without autocast, eager mode (not under compilers or
    tracers).
    """
    return (
        fast.current().fused_loop
        and geometry.fusable_loop
        and frame.dtype == dtype
        and not torch.is_autocast_enabled(frame.device.type)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()  # TorchScript tracing and the legacy ONNX exporter
    )


def plan_layer(
    geometry: CellGeometry,
    frame: Tensor,
    steps: int,
    *,
    dtype: torch.dtype,
    repeated: bool = False,
    masked: bool = False,
    checkpointed: bool = False,
) -> Plan:
    """The :class:`Plan` of one direction of one layer.

    Args:
        geometry: the cell's description for ``frame``'s spatial size.
        frame: a frame ``(B, C_in, *S)`` of the input (its device, dtype and size count).
        steps: number of steps ``T``.
        dtype: the cell's weights' dtype.
        repeated: one frame fed at every step (``steps=`` of the layer).
        masked: sequences of unequal ``lengths``.
        checkpointed: ``checkpoint_steps`` in force (training with autograd).

    Example:
        >>> from convlstm import ConvLSTMCell
        >>> cell = ConvLSTMCell(1, 8, 3, spatial_dims=2)
        >>> frame = torch.zeros(2, 1, 16, 16)
        >>> plan_layer(cell.geometry((16, 16)), frame, 10, dtype=torch.float32)
        Plan(channels_last=False, input_conv='batched', fused=True)
    """
    channels_last = use_channels_last(geometry, frame)
    if repeated:
        return Plan(channels_last, "once", False)
    if use_joint_conv(geometry, frame, steps):
        return Plan(channels_last, "per_step" if checkpointed else "joint", False)
    # The node recomputes no normalised gates (checkpoint_steps with norm: per-step checkpoints).
    recomputes_norm = checkpointed and geometry.norm is not None
    if not masked and not recomputes_norm and _use_fused_loop(geometry, frame, dtype):
        return Plan(channels_last, "batched", True)
    return Plan(channels_last, "per_step" if checkpointed else "batched", False)


def tuning_key(
    geometry: CellGeometry, frame: Tensor, steps: int, *, dtype: torch.dtype, repeated: bool,
    masked: bool, checkpointed: bool,
) -> tuple | None:  # fmt: skip
    """What :func:`tune` keeps a choice under for one direction of one layer (arguments as
    :func:`plan_layer`'s), or ``None`` where it does not measure: autotune off, a choice forced
    by :func:`convlstm.fast.settings`, one repeated frame, too little work, or under a compiler
    or tracer."""
    now = fast.current()
    if (
        not now.autotune
        or now.channels_last is not None
        or now.input_conv is not None
        or repeated
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
    ):
        return None
    if _gate_elements(geometry, frame, steps) < TUNE_MIN_WORK:
        return None
    device = frame.device.type
    autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    return (
        frame.device, tuple(frame.shape), frame.dtype, dtype, steps, geometry, autocast,
        torch.is_grad_enabled(), masked, checkpointed,
    )  # fmt: skip


def choices(geometry: CellGeometry) -> list[dict[str, Any]]:
    """The alternatives :func:`tune` times, each a full set of forced choices for
    :func:`convlstm.fast.settings` (both given, so that a trial plans without tuning)."""
    formats = [False, True] if geometry.spatial_dims == 2 else [False]
    convs = ["batched", "joint"] if geometry.joint_possible else ["batched"]
    return [{"channels_last": f, "input_conv": c} for f in formats for c in convs]


def tune(
    key: tuple, options: list[dict[str, Any]], trial: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """The fastest of ``options`` for ``key``, measured once per process: ``trial(option)`` runs
    the layer's direction with that option forced (forward, and backward if it trains), once to
    warm up (oneDNN builds its kernels at a shape's first call) and twice timed, the faster time
    counting; the random number generators are restored afterwards, so tuning draws no numbers
    the run would have drawn (recurrent dropout)."""
    chosen = _tuned.get(key)
    if chosen is not None:
        return chosen
    device = key[0]
    cuda = device.type == "cuda"
    times = []
    with torch.random.fork_rng(devices=[device] if cuda else []):
        for option in options:
            trial(option)
            best = math.inf
            for _ in range(2):
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                trial(option)
                if cuda:
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - start)
            times.append(best)
    chosen = _tuned[key] = options[times.index(min(times))]
    return chosen


def clear_tuned() -> None:
    """Forget :func:`tune`'s choices (the next call of each shape measures again)."""
    _tuned.clear()
