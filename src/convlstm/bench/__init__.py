"""``convlstm benchmark``: time and size our ConvLSTM layer against a naive cell, Keras,
torchgeo's ConvLSTM and the bare convolutions, in one process, interleaved.

A tool beside the library: nothing in :mod:`convlstm` imports this package. Modules:
:mod:`~convlstm.bench.shapes` (the grid), :mod:`~convlstm.bench.references` (the naive cell,
the convolutions alone, Keras and torchgeo with our weights), :mod:`~convlstm.bench.variants`
(what a training shape is timed in, and the check each must pass),
:mod:`~convlstm.bench.measure` (timing, memory, FLOPs, peak), :mod:`~convlstm.bench.suite`
(:func:`run_suite`) and :mod:`~convlstm.bench.cli` (:func:`add_parser`, :func:`main`).

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
(Keras 3 ``ConvLSTM2D``, torch backend, if installed), ``torchgeo`` (torchgeo 0.10.1's
``ConvLSTM``, its own code with our weights, if installed: ``pip install convlstm[bench]``).
The allocator is the one users get (``--tune-malloc`` tunes it first). Streaming shapes time one step from a
given state, without gradients: ``naive``, ``floor`` (the two convolutions), ``convlstm_cell``
and ``convlstm_layer``.

Usage: ``convlstm benchmark --quick`` or ``python benchmarks/bench.py --shapes w16 --json out.json``.
"""

from __future__ import annotations

from convlstm.bench.cli import add_parser, main
from convlstm.bench.shapes import SHAPES, Shape, parse_shape
from convlstm.bench.suite import format_shape, run_suite

__all__ = ["SHAPES", "Shape", "add_parser", "format_shape", "main", "parse_shape", "run_suite"]
