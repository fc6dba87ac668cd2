"""The core's module structure: imports point one way, each module imports on its own, the
library never imports the benchmark, and the layer's plan is decided in one place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import convlstm
from convlstm import ConvLSTMCell, _plan, fast

SRC = Path(convlstm.__file__).parent

# The core, in layers: a module may import (at run time) only modules of lower layers.
LAYERS = {
    "_checks": 0,
    "_layout": 0,
    "_geometry": 0,
    "fast": 0,
    "_gates": 1,
    "_plan": 1,
    "_recurrence": 2,
    "cells": 2,
    "layers": 3,
}


def _runtime_imports(module: str) -> set[str]:
    """The ``convlstm`` modules ``module`` imports outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse((SRC / f"{module}.py").read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("convlstm"):
            if node.module == "convlstm":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("convlstm."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_core_imports_point_one_way(module):
    imports = _runtime_imports(module)
    assert imports <= set(LAYERS), f"{module} imports outside the core: {imports - set(LAYERS)}"
    upward = {m for m in imports if LAYERS[m] >= LAYERS[module]}
    assert not upward, f"{module} (layer {LAYERS[module]}) imports {upward}"


def test_each_core_module_imports_alone_and_the_library_never_imports_the_benchmark():
    """Each module imported first, in a fresh interpreter state (an import cycle shows as an
    ImportError of a partly initialised module); then the package and its core and interop
    modules, without the benchmark package, matplotlib or keras."""
    code = f"""
import importlib, sys
import torch
for name in {sorted(LAYERS)!r}:
    for loaded in [m for m in sys.modules if m == "convlstm" or m.startswith("convlstm.")]:
        del sys.modules[loaded]
    importlib.import_module("convlstm." + name)
import convlstm, convlstm.layers, convlstm.cells, convlstm.fast, convlstm.interop
bad = [m for m in sys.modules if m.startswith("convlstm.bench") or m in ("matplotlib", "keras")]
assert not bad, bad
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def _geometry(**options):
    return ConvLSTMCell(1, 8, options.pop("kernel", 3), spatial_dims=2, **options).geometry(
        (16, 16)
    )


FRAME = torch.zeros(2, 1, 16, 16)


@pytest.mark.parametrize(
    ("geometry", "steps", "options", "want"),
    [
        (_geometry(), 10, {}, _plan.Plan(False, "batched", True)),
        (_geometry(), 1, {}, _plan.Plan(False, "joint", False)),  # streaming on CPU
        (_geometry(), 1, {"checkpointed": True}, _plan.Plan(False, "per_step", False)),
        (_geometry(), 10, {"repeated": True}, _plan.Plan(False, "once", False)),
        (_geometry(), 10, {"masked": True}, _plan.Plan(False, "batched", False)),
        (
            _geometry(),
            10,
            {"masked": True, "checkpointed": True},
            _plan.Plan(False, "per_step", False),
        ),
        (_geometry(), 10, {"checkpointed": True}, _plan.Plan(False, "batched", True)),
        (_geometry(norm="layer"), 1, {}, _plan.Plan(False, "batched", True)),  # no joint conv
        (_geometry(norm="group"), 10, {}, _plan.Plan(False, "batched", True)),
        # The node recomputes no normalised gates: per-step checkpoints.
        (_geometry(norm="layer"), 10, {"checkpointed": True}, _plan.Plan(False, "per_step", False)),
        (_geometry(kernel=2), 1, {}, _plan.Plan(False, "batched", False)),  # even: asymmetric
        (_geometry(activation="relu"), 10, {}, _plan.Plan(False, "batched", False)),
        (_geometry(), 10, {"dtype": torch.float64}, _plan.Plan(False, "batched", False)),
    ],
)
def test_the_plan_of_a_layer(geometry, steps, options, want):
    options = {"dtype": torch.float32, **options}
    assert _plan.plan_layer(geometry, FRAME, steps, **options) == want


def test_the_plan_follows_the_switches(monkeypatch):
    g = _geometry()
    with fast.settings(input_conv="joint", channels_last=True):
        assert _plan.plan_layer(g, FRAME, 10, dtype=torch.float32) == _plan.Plan(
            True, "joint", False
        )
    with fast.settings(fused_loop=False):
        plan = _plan.plan_layer(g, FRAME, 10, dtype=torch.float32)
    assert plan == _plan.Plan(False, "batched", False)
    big = torch.zeros(8, 1, 64, 64)  # 8 * 8 * 64 * 64 >= CHANNELS_LAST_MIN_WORK
    wide = ConvLSTMCell(1, 8, 3, spatial_dims=2).geometry((64, 64))
    for avx512 in (True, False):  # channels-last on CPUs whose kernels use AVX-512 only
        monkeypatch.setattr(_plan, "CPU_CHANNELS_LAST", avx512)
        assert _plan.plan_layer(wide, big, 10, dtype=torch.float32).channels_last is avx512
    assert not _plan.plan_layer(wide, big[:1, :, :16, :16], 10, dtype=torch.float32).channels_last


def test_the_cell_describes_its_geometry():
    g = ConvLSTMCell(2, 4, (3, 4), spatial_dims=2, stride=(1, 2)).geometry((9, 8))
    assert g.input_pads == ((1, 1), (1, 1)) and g.output_size == (9, 4)
    assert g.hh_pads == ((1, 1), (1, 2)) and not g.hh_symmetric and not g.joint_possible
    same = ConvLSTMCell(2, 4, 3, spatial_dims=3).geometry((3, 4, 5))
    assert same.joint_possible and same.fusable_loop and same.conv is torch.nn.functional.conv3d
    assert ConvLSTMCell(2, 4, 3, spatial_dims=1).geometry((7,)) is not None


def test_sequences_take_the_joint_convolution_where_the_batched_gates_would_be_large(monkeypatch):
    """On CPU a sequence whose batched input convolution output reaches JOINT_MIN_BYTES takes
    the joint convolution (glibc maps and page-faults such buffers afresh at every step), unless
    the allocator was tuned; smaller ones, and other devices, keep the batched convolution."""
    g = ConvLSTMCell(1, 64, 3, spatial_dims=2).geometry((64, 64))
    frame = torch.zeros(8, 1, 64, 64)  # 8 * 10 * 256 * 64 * 64 * 4 bytes = 335 MB of gates
    assert _plan.plan_layer(g, frame, 10, dtype=torch.float32) == _plan.Plan(False, "joint", False)
    assert _plan.plan_layer(g, frame[:1], 4, dtype=torch.float32).input_conv == "batched"
    monkeypatch.setattr(fast, "_allocator_tuned", True)
    assert fast.allocator_tuned()
    assert _plan.plan_layer(g, frame, 10, dtype=torch.float32).input_conv == "batched"
