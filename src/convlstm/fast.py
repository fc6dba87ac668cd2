"""Every user-facing switch of the core, like ``torch.backends``: the eager fast paths
(:func:`settings`, :func:`plain`, :func:`current`), and opt-in speed: compiled layers (fused
gates, CUDA graphs) and allocator tuning.

The eager fast paths are on by default and need nothing from here: the gate arithmetic runs as
one autograd node (:mod:`convlstm._gates`), and a per-shape plan (:mod:`convlstm._plan`) picks the
memory format and how the input convolution is batched. Every one gives the plain path's values
and gradients (up to rounding); :func:`plain` turns them all off, :func:`settings` forces each.

>>> import torch
>>> from convlstm import ConvLSTM2d
>>> layer = ConvLSTM2d(1, 8, 3)
>>> x = torch.randn(2, 4, 1, 16, 16)
>>> with plain():
...     reference, _ = layer(x)
>>> torch.allclose(layer(x)[0], reference, atol=1e-6)
True
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "Settings",
    "allocator_tuned",
    "compile_layer",
    "current",
    "plain",
    "set_autotune",
    "settings",
    "tune_cpu_allocator",
]

_INPUT_CONVS = (None, "batched", "joint")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Which fast paths the core may take (the values :func:`settings` and :func:`plain` set).

    Attributes:
        fused_gates: compute the sigmoid/tanh gate arithmetic of a step with one autograd node
            (:mod:`convlstm._gates`) instead of plain autograd.
        fused_loop: run a layer's whole time loop as one autograd node
            (:mod:`convlstm._recurrence`) where it applies.
        channels_last: ``None`` lets the per-shape plan choose; ``True``/``False`` forces 2-D
            layers into or out of the channels-last memory format.
        input_conv: ``None`` lets the plan choose; ``"batched"`` convolves the whole sequence at
            once, ``"joint"`` convolves ``[x_t, h]`` with ``[W_ih, W_hh]`` at each step.
        autotune: time the plan's alternatives (memory format, input convolution) at the first
            call of each shape and keep the fastest, as ``torch.backends.cudnn.benchmark`` does
            for convolution algorithms (:func:`convlstm._plan.tune`). Off by default: the first
            call of a shape takes several times longer, and the choice depends on timings, so
            two runs may round differently.
    """

    fused_gates: bool = True
    fused_loop: bool = True
    channels_last: bool | None = None
    input_conv: str | None = None
    autotune: bool = False


# Process-wide, a module global (which torch.compile can read), as torch.backends' flags are.
_current = Settings()
_allocator_tuned = False


def current() -> Settings:
    """The settings in force.

    >>> current().fused_gates
    True
    """
    return _current


@contextlib.contextmanager
def _override(**changes: Any) -> Iterator[Settings]:
    """Within the block, replace the named fields of the current settings."""
    if changes.get("input_conv") not in _INPUT_CONVS:
        raise ValueError(
            f"input_conv must be None, 'batched' or 'joint', got {changes['input_conv']!r}"
        )
    global _current
    previous = _current
    _current = dataclasses.replace(previous, **changes)
    try:
        yield _current
    finally:
        _current = previous


@contextlib.contextmanager
def settings(
    *,
    fused_gates: bool | None = None,
    fused_loop: bool | None = None,
    channels_last: bool | None = None,
    input_conv: str | None = None,
    autotune: bool | None = None,
) -> Iterator[Settings]:
    """Force fast-path choices within the block (process-wide, not thread-local).

    Args:
        fused_gates: ``False`` computes each step's gates with plain autograd expressions.
        fused_loop: ``False`` keeps one autograd node per step instead of one per layer.
        channels_last: force 2-D layers into (``True``) or out of (``False``) channels-last.
        input_conv: ``"batched"`` (one input convolution per sequence) or ``"joint"`` (one
            convolution of ``[x_t, h]`` per step where the geometry allows it).
        autotune: ``True`` measures the plan's choices where they are not forced (see
            :class:`Settings`; :func:`set_autotune` switches it for the whole process).

    Arguments left ``None`` keep their current value.

    >>> from convlstm import ConvLSTM2d
    >>> layer = ConvLSTM2d(1, 8, 3)
    >>> with settings(autotune=True):
    ...     out, _ = layer(torch.randn(2, 4, 1, 16, 16))  # small: the rules decide, no timing

    Yields:
        The :class:`Settings` in force within the block.
    """
    given = dict(
        fused_gates=fused_gates,
        fused_loop=fused_loop,
        channels_last=channels_last,
        input_conv=input_conv,
        autotune=autotune,
    )
    changes = {name: value for name, value in given.items() if value is not None}
    with _override(**changes) as now:
        yield now


def set_autotune(enabled: bool = True) -> None:
    """Switch :attr:`Settings.autotune` for the whole process (outside any :func:`settings`
    block), like ``torch.backends.cudnn.benchmark = True``."""
    global _current
    _current = dataclasses.replace(_current, autotune=bool(enabled))


@contextlib.contextmanager
def plain() -> Iterator[Settings]:
    """Within the block, the layers run the plain path: autograd gate expressions, the standard
    memory format and one batched input convolution — the reference every fast path is tested
    against."""
    changes = dict(fused_gates=False, fused_loop=False, channels_last=False, input_conv="batched")
    with _override(**changes) as now:
        yield now


def compile_layer(module: nn.Module, *, cuda_graphs: bool | None = None, **options: Any) -> Any:
    """``torch.compile`` a layer (or any module around one) for static shapes.

    The whole forward is traced, its time loop unrolled: the compiler fuses each step's gate
    arithmetic into one kernel (Triton on CUDA, C++ on CPU), and with ``cuda_graphs`` the whole
    loop, forward and backward, is replayed as CUDA graphs (``mode="reduce-overhead"``), which
    removes the per-kernel launch cost. Each new input shape compiles again. On CPU it pays where
    the maps are small and the per-operation costs show (the benchmark's ``main_job`` step then
    runs at about the speed of its bare convolutions); where the convolutions take the time
    (``w16``, ``w64``) it gains little or nothing. Figures in ``benchmarks/README.md``.

    Args:
        module: e.g. a :class:`~convlstm.layers.ConvLSTM2d`, on its final device.
        cuda_graphs: capture CUDA graphs; default: if the module's parameters are on CUDA.
        options: passed to :func:`torch.compile` (e.g. ``backend="aot_eager"`` to test on CPU).

    Returns:
        The compiled module; call it like ``module``. With CUDA graphs, outputs live in memory
        the next call overwrites: clone what you keep, and in a training loop call
        ``torch.compiler.cudagraph_mark_step_begin()`` before each step.
    """
    if cuda_graphs is None:
        cuda_graphs = any(p.is_cuda for p in module.parameters())
    options.setdefault("fullgraph", True)
    options.setdefault("dynamic", False)
    if cuda_graphs:
        options.setdefault("mode", "reduce-overhead")
    return torch.compile(module, **options)


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_cpu_allocator() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of returning it to the system.

    Large CPU tensors (over 32 MB at most) are otherwise ``mmap``-ed and unmapped on every
    allocation, and each page faults again when first written, which can make a convolution
    writing a fresh output of hundreds of MB take several times as long as with this setting
    (figures in ``benchmarks/README.md``). Afterwards the process keeps its peak memory. Process-wide and permanent; call it
    once, at the start of a training or benchmark script. Returns False (and changes nothing)
    where ``mallopt`` is unavailable.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = bool(ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
    global _allocator_tuned
    _allocator_tuned = _allocator_tuned or ok
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` succeeded in this process (the plan then batches
    large input convolutions, whose fresh outputs no longer page-fault)."""
    return _allocator_tuned
