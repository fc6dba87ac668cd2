"""Forecasts for the user's own frames: the :func:`predict` function and ``convlstm predict``.

A forecaster is any callable ``model(inputs, horizon) -> forecast`` with ``inputs``
``(B, T_in, C, H, W)`` and ``forecast`` ``(B, horizon, C, H, W)``.

Input files and their layout
----------------------------
A ``.npy`` file, a ``.npz`` file (its only array, or the one named ``frames`` or ``inputs``),
or a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.tif``, ``.tiff``,
sorted by file name, read as grayscale for a 1-channel model and RGB for a 3-channel one).
Arrays may be laid out as

======== ================================== =============================================
layout   shape                              chosen automatically when
======== ================================== =============================================
THW      ``(T, H, W)``                      3-D
TCHW     ``(T, C, H, W)``                   4-D and ``shape[1]`` equals the model's ``C``
NTHW     ``(N, T, H, W)``                   4-D, 1-channel model, ``shape[1] != 1``
NTCHW    ``(N, T, C, H, W)``                5-D
======== ================================== =============================================

A 4-D array ``(A, 1, H, W)`` for a 1-channel model is read as ``TCHW`` (one sequence of ``A``
frames); pass ``layout="NTHW"`` (``--layout NTHW``) for ``A`` sequences of one frame. The
forecast is written in the input's layout with ``T`` replaced by the horizon; an image folder
gives ``THW`` (grayscale) or ``TCHW`` (RGB).

Values: ``uint8``/``uint16`` frames are divided by 255/65535 for the model, and its forecast is
clipped to [0, 1] and scaled back to the input's dtype; float frames are used as they are and
the forecast is returned in the input's float dtype. ``.npy`` inputs are memory-mapped and
converted to floats one batch at a time, so large inputs need little memory beyond the
forecast itself.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor, nn

from convlstm._atomic import atomic_dir, atomic_file, atomic_write_bytes, check_parent
from convlstm._checks import check_choice, check_positive
from convlstm.data._io import open_npy, open_npz
from convlstm.viz import frame_png, sequence_gif

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "CliError",
    "Frames",
    "add_parser",
    "check_device",
    "check_targets",
    "cli_device",
    "default_device",
    "forecast_frames",
    "from_model_range",
    "infer_layout",
    "inference",
    "load_frames",
    "model_device",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "predict",
    "run_cli",
    "save_forecast",
    "to_model_range",
]

LAYOUTS = ("THW", "TCHW", "NTHW", "NTCHW")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
Forecaster = Callable[[Tensor, int], Tensor]


def model_device(model: object) -> torch.device:
    """The device of ``model``'s first parameter or buffer; CPU for a parameterless callable."""
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def inference(model: object) -> Iterator[None]:
    """Run the block without gradients and, for an ``nn.Module``, in eval mode (the previous
    mode is restored afterwards)."""
    module = model if isinstance(model, nn.Module) else None
    training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if module is not None and training:
            module.train()


@overload
def predict(
    model: Forecaster,
    frames: np.ndarray,
    horizon: int,
    *,
    batch_size: int = ...,
    device: str | torch.device | None = ...,
) -> np.ndarray: ...


@overload
def predict(
    model: Forecaster,
    frames: Tensor,
    horizon: int,
    *,
    batch_size: int = ...,
    device: str | torch.device | None = ...,
) -> Tensor: ...


def predict(
    model: Forecaster,
    frames: np.ndarray | Tensor,
    horizon: int,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> np.ndarray | Tensor:
    """Forecast ``horizon`` frames after each input sequence, in batches, without gradients.

    Args:
        model: ``model(inputs (B, T_in, C, H, W), horizon) -> (B, horizon, C, H, W)``; an
            ``nn.Module`` is put in eval mode for the call (its mode is restored afterwards).
        frames: ``(N, T_in, C, H, W)`` float array or tensor, in the model's value range.
        horizon: frames to forecast.
        batch_size: sequences per model call.
        device: where to run; default the model's device (CPU for a parameterless model).

    Returns:
        ``(N, horizon, C, H, W)`` forecasts: a float32 numpy array for array input, else a tensor
        on ``frames``' device with its dtype.

    >>> class Last(nn.Module):
    ...     def forward(self, x, horizon):
    ...         return x[:, -1:].expand(-1, horizon, -1, -1, -1)
    >>> predict(Last(), np.ones((3, 4, 1, 5, 5), np.float32), 2, batch_size=2).shape
    (3, 2, 1, 5, 5)
    """
    check_positive(horizon, "horizon")
    check_positive(batch_size, "batch_size")
    as_numpy = isinstance(frames, np.ndarray)
    inputs = torch.from_numpy(np.asarray(frames, dtype=np.float32)) if as_numpy else frames
    assert isinstance(inputs, Tensor)
    if inputs.ndim != 5:
        raise ValueError(f"frames must be (N, T_in, C, H, W), got shape {tuple(inputs.shape)}")
    device = torch.device(device) if device is not None else model_device(model)
    outputs = []
    with inference(model):
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size].to(device, torch.float32)
            forecast = model(batch, horizon)
            expected = (len(batch), horizon, *batch.shape[2:])
            if tuple(forecast.shape) != expected:
                raise ValueError(
                    f"the model returned shape {tuple(forecast.shape)}, expected {expected}"
                )
            outputs.append(forecast.to(inputs.device, inputs.dtype))
    result = torch.cat(outputs) if outputs else inputs.new_zeros((0, horizon, *inputs.shape[2:]))
    return result.numpy() if as_numpy else result


def infer_layout(shape: tuple[int, ...], channels: int, layout: str | None = None) -> str:
    """The layout of an array of ``shape`` for a model with ``channels`` channels.

    ``layout`` (one of :data:`LAYOUTS`) is checked against ``shape`` when given; otherwise it is
    decided as the module docstring's table says.

    >>> infer_layout((10, 64, 64), 1), infer_layout((5, 10, 64, 64), 1)
    ('THW', 'NTHW')
    >>> infer_layout((10, 1, 64, 64), 1), infer_layout((10, 3, 64, 64), 3)
    ('TCHW', 'TCHW')
    """
    if layout is not None:
        check_choice(layout, LAYOUTS, "layout")
        if len(shape) != len(layout):
            raise ValueError(f"layout {layout} needs a {len(layout)}-D array, got shape {shape}")
    elif len(shape) == 3:
        layout = "THW"
    elif len(shape) == 5:
        layout = "NTCHW"
    elif len(shape) == 4:
        layout = "TCHW" if shape[1] == channels or channels != 1 else "NTHW"
    else:
        raise ValueError(
            f"frames must be (T, H, W), (T, C, H, W), (N, T, H, W) or (N, T, C, H, W); "
            f"got shape {shape}"
        )
    has_channels = "C" in layout
    found = shape[layout.index("C")] if has_channels else 1
    if found != channels:
        where = f"axis {layout.index('C')} of {layout}" if has_channels else f"layout {layout}"
        raise ValueError(
            f"the model takes {channels} channel(s) but the frames have {found} "
            f"({where}, shape {shape})"
        )
    return layout


def _to_batch(array: np.ndarray, layout: str) -> np.ndarray:
    """``array`` in ``layout`` as ``(N, T, C, H, W)``."""
    if "C" not in layout:
        array = array[..., None, :, :]
    return array if layout.startswith("N") else array[None]


def _from_batch(array: np.ndarray, layout: str) -> np.ndarray:
    """``(N, T, C, H, W)`` back to ``layout`` (the inverse of :func:`_to_batch`)."""
    if not layout.startswith("N"):
        array = array[0]
    return array if "C" in layout else array[..., 0, :, :]


def to_model_range(array: np.ndarray) -> np.ndarray:
    """Frames as float32 for the model: ``uint8``/``uint16`` divided by their maximum.

    >>> to_model_range(np.array([0, 255], np.uint8)).tolist()
    [0.0, 1.0]
    """
    if array.dtype in (np.uint8, np.uint16):
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise TypeError(f"frames must be uint8, uint16 or floating point, got dtype {array.dtype}")


def from_model_range(forecast: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The inverse of :func:`to_model_range`: clip and scale back to an integer ``dtype``.

    >>> from_model_range(np.array([-0.5, 0.5, 2.0]), np.dtype(np.uint8)).tolist()
    [0, 128, 255]
    """
    dtype = np.dtype(dtype)
    if dtype in (np.uint8, np.uint16):
        top = np.iinfo(dtype).max
        return np.rint(np.clip(forecast, 0.0, 1.0) * top).astype(dtype)
    return forecast.astype(dtype)


@dataclass(frozen=True)
class Frames:
    """Input frames read by :func:`load_frames`.

    Attributes:
        array: ``(N, T, C, H, W)`` view of the input in its own dtype (memory-mapped for
            ``.npy`` files, so large inputs are read batch by batch).
        layout: the layout the forecast is written in (one of :data:`LAYOUTS`).
        source: the file or folder read, for messages.
    """

    array: np.ndarray
    layout: str
    source: str

    @property
    def dtype(self) -> np.dtype:
        """The input's dtype; the forecast is written in it."""
        return self.array.dtype

    def model_range(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Sequences ``start:stop`` as float32 in the model's range (:func:`to_model_range`)."""
        return to_model_range(np.asarray(self.array[start:stop]))


def _read_array(path: Path) -> np.ndarray:
    """The frames array of a ``.npy`` or ``.npz`` file, through the validated readers of
    :mod:`convlstm.data._io`: headers are checked (dtype, no negative dimensions, the data the
    shape claims is present) before anything is allocated, and nothing is unpickled."""
    where = "--input"
    if path.suffix == ".npy":
        return open_npy(path, where)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"not a readable .npz archive ({error})") from None
    name = (
        names[0] if len(names) == 1 else next((n for n in ("frames", "inputs") if n in names), None)
    )
    if name is None:
        raise ValueError(
            f"holds arrays {names}; expected one array, or one named 'frames' or 'inputs'"
        )
    return open_npz(path, name, where)


def _reason(error: BaseException, path: Path) -> str:
    """``error``'s message without the ``--input '<path>'`` label of the data readers."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    label = f"--input '{path}'"
    if text.startswith(label):
        text = re.sub(r"^\[('[^']*')\]", r"array \1", text[len(label) :])
        text = text.removeprefix(":").strip()
    return text


def _read_images(folder: Path, channels: int) -> np.ndarray:
    """The images in ``folder``, sorted by name, as ``(T, C, H, W)`` ``uint8``."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"image folders need a 1- or 3-channel model, this one has {channels}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    frames: list[np.ndarray] = []
    for file in files:
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ValueError(f"{file}: cannot read it as an image ({reason})") from None
        if frames and pixels.shape != frames[0].shape:
            raise ValueError(
                f"{file}: image size {pixels.shape[1]}x{pixels.shape[0]} differs from "
                f"{files[0].name}'s {frames[0].shape[1]}x{frames[0].shape[0]}"
            )
        frames.append(pixels)
    stacked = np.stack(frames)
    return stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2)


def load_frames(path: str | os.PathLike[str], channels: int, layout: str | None = None) -> Frames:
    """Read a ``.npy``/``.npz`` file or an image folder as described in the module docstring.

    Raises ``FileNotFoundError`` for a missing path, ``ValueError``/``TypeError`` naming the
    file for unusable contents.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        pixels = _read_images(path, channels)
        return Frames(_to_batch(pixels, "TCHW"), "TCHW" if channels > 1 else "THW", str(path))
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: expected a .npy or .npz file or a folder of images")
    try:
        array = _read_array(path)
    except (OSError, ValueError, TypeError, EOFError, MemoryError, OverflowError) as error:
        raise ValueError(
            f"{path}: cannot read it as {path.suffix} ({_reason(error, path)})"
        ) from None
    try:
        layout = infer_layout(tuple(array.shape), channels, layout)
        to_model_range(array[:0])  # checks the dtype
    except (ValueError, TypeError) as error:
        raise type(error)(f"{path}: {error}") from None
    if 0 in array.shape:
        raise ValueError(f"{path}: the array is empty (shape {tuple(array.shape)})")
    return Frames(_to_batch(array, layout), layout, str(path))


def forecast_frames(
    model: Forecaster,
    frames: Frames,
    horizon: int,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """:func:`predict` over ``frames``, ``batch_size`` sequences at a time (only one batch is
    held as floats), returned ``(N, horizon, C, H, W)`` in ``frames.dtype`` (uint8/uint16
    scaled back, see :func:`from_model_range`)."""
    check_positive(batch_size, "batch_size")
    count = len(frames.array)
    out = np.empty((count, horizon, *frames.array.shape[2:]), dtype=frames.dtype)
    for start in range(0, count, batch_size):
        stop = start + batch_size
        batch = predict(model, frames.model_range(start, stop), horizon, device=device)
        out[start:stop] = from_model_range(batch, frames.dtype)
    return out


def save_forecast(
    path: str | os.PathLike[str], forecast: np.ndarray, frames: Frames, overwrite: bool = False
) -> Path:
    """Write ``forecast`` ``(N, horizon, C, H, W)`` (from :func:`forecast_frames`) in
    ``frames``' layout, atomically: ``.npz`` files hold it under the name ``forecast``, anything
    else is ``.npy``."""
    array = _from_batch(forecast, frames.layout)
    with atomic_file(path, overwrite=overwrite) as handle:
        if Path(path).suffix == ".npz":
            np.savez_compressed(handle, forecast=array)
        else:
            np.save(handle, array, allow_pickle=False)
    return Path(path)


class CliError(Exception):
    """A problem with the command line or its input, reported as one line; ``code`` is the exit
    status (2: bad arguments or an existing output, 1: unusable files or data)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def run_cli(prog: str, body: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a subcommand's ``body``; report expected failures as one ``prog: error:`` line on
    stderr and return the exit status instead of a traceback: 0 success, 2 usage error or
    existing output (without ``--overwrite``), 1 unusable input or failure, 130 interrupted."""
    try:
        body(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (CliError, FileExistsError, OSError, ValueError, TypeError, RuntimeError) as error:
        lines = str(error).strip().splitlines()
        print(f"{prog}: error: {lines[0] if lines else type(error).__name__}", file=sys.stderr)
        if isinstance(error, CliError):
            return error.code
        return 2 if isinstance(error, FileExistsError) else 1
    return 0


def default_device(device: str | None) -> str:
    """``device``, or CUDA when available, else CPU."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` after checking that this machine has it; a
    ``ValueError`` naming ``name`` (such as ``--device``) otherwise, before anything is loaded.

    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("tpu", "--device")
    Traceback (most recent call last):
    ...
    ValueError: --device: expected cpu, cuda or cuda:N, got 'tpu'
    """
    text = str(device)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: expected cpu, cuda or cuda:N, got {text!r}") from None
    if resolved.type == "meta":
        raise ValueError(
            f"{name}: expected a device that holds data (cpu, cuda, cuda:N), got 'meta'"
        )
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}: CUDA is not available on this machine, got {text!r} (use cpu)"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"{name}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1}), "
                f"got {text!r}"
            )
        return resolved
    try:
        torch.empty(0, device=resolved)
    except Exception as error:  # a probe: backends fail in many ways (missing modules, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = reason.split(". ")[0][:160]
        raise ValueError(
            f"{name}: device {text!r} is not available on this machine ({reason})"
        ) from None
    return resolved


def cli_device(device: str | None) -> str:
    """``--device`` checked (exit status 2 naming the option), or the default device."""
    chosen = default_device(device)
    try:
        check_device(chosen, "--device")
    except ValueError as error:
        raise CliError(str(error), 2) from None
    return chosen


def check_targets(paths: Sequence[str | None], overwrite: bool) -> None:
    """Fail before any work if an output path exists and ``overwrite`` is false."""
    for path in paths:
        if path is not None and os.path.lexists(path) and not overwrite:
            raise CliError(f"{path} already exists (pass --overwrite to replace it)", 2)


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (counts where 0 means none)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _write_pngs(folder: str, forecast: np.ndarray, vmax: float, overwrite: bool) -> None:
    """``sequence_NNNN_lead_KK.png`` per forecast frame (model range), as a folder written
    atomically."""
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for n, sequence in enumerate(forecast):
            for k, frame in enumerate(sequence):
                png = frame_png(to_model_range(frame), 0.0, vmax)
                (tmp / f"sequence_{n:04d}_lead_{k + 1:02d}.png").write_bytes(png)


def _predict_command(args: argparse.Namespace) -> None:
    from convlstm.checkpoint import load_model

    check_targets([args.out, args.png, args.gif], args.overwrite)
    for target in (args.out, args.png, args.gif):
        if target is not None:
            check_parent(target)  # before any work
    device = cli_device(args.device)
    model, config = load_model(args.checkpoint, map_location=device)
    frames = load_frames(args.input, model.in_channels, args.layout)
    try:
        model.check_frames(torch.from_numpy(frames.model_range(0, 1)))
    except ValueError as error:
        raise ValueError(f"{frames.source}: {error}") from None
    horizon = args.horizon or config["data"]["horizon"]
    forecast = forecast_frames(model, frames, horizon, batch_size=args.batch_size, device=device)
    save_forecast(args.out, forecast, frames, overwrite=args.overwrite)
    # PNG/GIF grey levels span [0, vmax]: [0, 1] for integer frames (scaled) and most float
    # ones; up to the largest input value for unbounded data such as rain rates
    vmax = 1.0 if frames.dtype.kind == "u" else max(1.0, float(frames.array.max()))
    if args.png:
        _write_pngs(args.png, forecast, vmax, args.overwrite)
    if args.gif:
        first = to_model_range(forecast[0])
        gif = sequence_gif(frames.model_range(0, 1)[0], None, first, vmax=vmax)
        atomic_write_bytes(args.gif, gif, overwrite=args.overwrite)
    print(
        f"forecast {tuple(forecast.shape)} (N, horizon, C, H, W) of {frames.source} "
        f"written to {args.out} as {frames.layout} {frames.dtype}"
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convlstm predict`` on an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser(
        "predict",
        help="forecast the frames that follow your own input frames",
        description=(
            "Forecast the frames after INPUT (a .npy/.npz of (T,H,W), (T,C,H,W), (N,T,H,W) or "
            "(N,T,C,H,W), or a folder of images sorted by name) with a trained checkpoint, and "
            "write them in the input's layout and dtype (uint8 in, uint8 out). A 4-D array is "
            "(T,C,H,W) when its axis 1 equals the model's channels, else (N,T,H,W); --layout "
            "overrides."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="trained checkpoint (.pt)"
    )
    parser.add_argument(
        "--input", required=True, metavar="FILE_OR_DIR", help=".npy/.npz file or image folder"
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="forecast (.npy or .npz)")
    parser.add_argument(
        "--horizon", type=positive_int, help="frames to forecast (default: trained)"
    )
    parser.add_argument(
        "--layout", choices=LAYOUTS, help="axes of the input array (default: guess)"
    )
    parser.add_argument("--png", metavar="DIR", help="also write every forecast frame as PNG")
    parser.add_argument("--gif", metavar="FILE", help="also animate the first sequence as GIF")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sequences per batch")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=lambda args: run_cli("convlstm predict", _predict_command, args))
    return parser
