"""Export a trained forecaster to TorchScript and ONNX: :func:`export_model` (the library behind
``convlstm export``, whose command line is :mod:`convlstm.cli.export`).

Both formats run a fixed number of input frames ``T_in`` and forecast a fixed ``horizon`` (the
recurrence is unrolled); the batch size is free. The exported program takes one input
``inputs`` ``(B, T_in, C, H, W)`` float32 and returns ``(B, horizon, C, H, W)``.

An export folder holds::

    model.torchscript.pt   torch.jit.load(...)(inputs)
    model.onnx             onnxruntime.InferenceSession(...).run(None, {"inputs": inputs})
    export.json            shapes, horizon, exporter used, checked maximum absolute differences

Each file is checked against the PyTorch model on fresh random inputs (with onnxruntime for
ONNX, skipped with a message when it is not installed); the folder is written atomically, and
not at all if a check fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from convlstm._atomic import atomic_dir
from convlstm._deprecated import moved

__all__ = ["FILES", "FORMATS", "ExportCheckError", "FixedHorizon", "export_model"]

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}


class ExportCheckError(RuntimeError):
    """An exported model's outputs differ from the PyTorch model's by more than the tolerance."""


class FixedHorizon(nn.Module):
    """``model(inputs, horizon)`` with ``horizon`` fixed, so that ``forward(inputs)`` takes a
    single tensor ``(B, T_in, C, H, W)`` as exporters expect.

    >>> class Last(nn.Module):
    ...     def forward(self, x, horizon):
    ...         return x[:, -1:].repeat(1, horizon, 1, 1, 1)
    >>> FixedHorizon(Last(), 3)(torch.zeros(2, 4, 1, 8, 8)).shape
    torch.Size([2, 3, 1, 8, 8])
    """

    def __init__(self, model: nn.Module, horizon: int) -> None:
        super().__init__()
        self.model = model
        self.horizon = horizon

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs, self.horizon)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' chatter: tracer and deprecation warnings, registry log lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _torchscript(wrapper: FixedHorizon, example: Tensor, path: Path) -> str:
    with _quiet():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        torch.jit.save(traced, str(path))
    return "torch.jit.trace"


def _onnx(wrapper: FixedHorizon, example: Tensor, path: Path) -> str:
    """Export with the dynamo exporter, falling back to the legacy TorchScript-based one."""
    try:
        with _quiet():
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                verbose=False,
                input_names=["inputs"],
                output_names=["forecast"],
            )
            if program is None:
                raise RuntimeError("the dynamo exporter returned no program")
            program.save(str(path), external_data=False)
        return "torch.onnx.export (dynamo)"
    except Exception as dynamo_error:  # the legacy exporter may still succeed
        try:
            with _quiet():
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(path),
                    dynamo=False,
                    dynamic_axes={"inputs": {0: "batch"}, "forecast": {0: "batch"}},
                    verbose=False,
                    input_names=["inputs"],
                    output_names=["forecast"],
                )
        except Exception as legacy_error:
            raise RuntimeError(
                f"ONNX export failed: dynamo exporter: {dynamo_error}; "
                f"legacy exporter: {legacy_error}"
            ) from legacy_error
        return "torch.onnx.export (legacy, after dynamo failed)"


def _run_torchscript(path: Path, inputs: Tensor) -> np.ndarray | None:
    with _quiet():
        loaded = torch.jit.load(str(path), map_location=inputs.device)
    with torch.no_grad():
        return loaded(inputs).cpu().numpy()


def _run_onnx(path: Path, inputs: Tensor) -> np.ndarray | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"inputs": inputs.cpu().numpy()})[0]


_EXPORTERS: dict[str, Callable[[FixedHorizon, Tensor, Path], str]] = {
    "torchscript": _torchscript,
    "onnx": _onnx,
}
_RUNNERS: dict[str, Callable[[Path, Tensor], np.ndarray | None]] = {
    "torchscript": _run_torchscript,
    "onnx": _run_onnx,
}


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be some of {', '.join(FORMATS)}; got {list(formats)}")
    return tuple(dict.fromkeys(formats))


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    example_inputs: Tensor,
    horizon: int,
    formats: Sequence[str] = FORMATS,
    *,
    overwrite: bool = False,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> dict[str, float | None]:
    """Export ``model`` for ``example_inputs``' shape and ``horizon``; check and write the files.

    Args:
        model: ``model(inputs (B, T_in, C, H, W), horizon) -> (B, horizon, C, H, W)``; exported
            in eval mode (its mode is restored afterwards), on its device.
        out_dir: the folder to create (see the module docstring for its files).
        example_inputs: ``(B, T_in, C, H, W)``: fixes ``T_in``, ``C``, ``H``, ``W``.
        horizon: frames forecast by the exported model.
        formats: some of ``"torchscript"``, ``"onnx"``.
        overwrite: replace an existing ``out_dir``; otherwise ``FileExistsError``.
        tolerance: an exported model whose outputs differ from ``model``'s by more than this
            raises :class:`ExportCheckError` and nothing is written.
        seed: seed of the random check inputs (batch ``B + 1``, uniform in [0, 1)).

    Returns:
        ``{format: maximum absolute difference}``; ``None`` where the check was skipped
        (ONNX without onnxruntime; a message is printed to stderr).

    >>> import tempfile, pathlib
    >>> class Last(nn.Module):
    ...     def forward(self, x, horizon):
    ...         return x[:, -1:].repeat(1, horizon, 1, 1, 1)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "exported"
    >>> export_model(Last(), out, torch.zeros(1, 4, 1, 8, 8), 2, ["torchscript"])
    {'torchscript': 0.0}
    >>> sorted(p.name for p in out.iterdir())
    ['export.json', 'model.torchscript.pt']
    """
    formats = _check_formats(formats)
    if example_inputs.ndim != 5:
        raise ValueError(
            f"example_inputs must be (B, T_in, C, H, W), got shape {tuple(example_inputs.shape)}"
        )
    wrapper = FixedHorizon(model, horizon)
    # a batch of one would be specialised by torch.export: trace with at least two sequences
    example = example_inputs if len(example_inputs) > 1 else example_inputs.repeat(2, 1, 1, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    check_shape = (example_inputs.shape[0] + 1, *example_inputs.shape[1:])
    check_inputs = torch.rand(check_shape, generator=generator).to(example_inputs)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = wrapper(check_inputs).cpu().numpy()
        results: dict[str, float | None] = {}
        info: dict[str, Any] = {
            "input_shape": ["B", *example_inputs.shape[1:]],
            "output_shape": ["B", horizon, *example_inputs.shape[2:]],
            "horizon": horizon,
            "dtype": "float32",
            "formats": {},
        }
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            for name in formats:
                path = tmp / FILES[name]
                exporter = _EXPORTERS[name](wrapper, example, path)
                output = _RUNNERS[name](path, check_inputs)
                if output is None:
                    print(f"{name}: check skipped (onnxruntime is not installed)", file=sys.stderr)
                    difference = None
                else:
                    difference = float(np.abs(output.astype(np.float64) - expected).max())
                    if not difference <= tolerance:
                        raise ExportCheckError(
                            f"{name} export differs from the PyTorch model by {difference:.3g} "
                            f"(tolerance {tolerance:g}); nothing was written"
                        )
                results[name] = difference
                info["formats"][name] = {
                    "file": FILES[name],
                    "exporter": exporter,
                    "max_abs_diff": difference,
                }
            (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    finally:
        model.train(training)
    return results


# the command line moved to convlstm.cli.export (deprecated here)
__getattr__ = moved(__name__, {"add_parser": "convlstm.cli.export"})
