"""Forecasts for the user's own frames: :func:`predict`, and the file reading and writing behind
``convlstm predict`` (its command line is :mod:`convlstm.cli.predict`).

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
TNHW     ``(T, N, H, W)``                   never (the published Moving MNIST file's layout;
                                            ``convlstm predict`` picks it as ``evaluate``
                                            does, see :mod:`convlstm.cli.predict`)
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

import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch
from torch import Tensor

from convlstm._atomic import atomic_file
from convlstm._checks import check_choice, check_positive
from convlstm._deprecated import moved
from convlstm.data._io import open_npy, open_npz
from convlstm.devices import inference, model_device

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "Frames",
    "forecast_frames",
    "from_model_range",
    "infer_layout",
    "inference",
    "load_frames",
    "model_device",
    "predict",
    "save_forecast",
    "to_model_range",
]

LAYOUTS = ("THW", "TCHW", "NTHW", "NTCHW", "TNHW")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
Forecaster = Callable[[Tensor, int], Tensor]


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

    >>> from torch import nn
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
    if layout == "TNHW":
        return array.transpose(1, 0, 2, 3)[:, :, None]
    if "C" not in layout:
        array = array[..., None, :, :]
    return array if layout.startswith("N") else array[None]


def _from_batch(array: np.ndarray, layout: str) -> np.ndarray:
    """``(N, T, C, H, W)`` back to ``layout`` (the inverse of :func:`_to_batch`)."""
    if layout == "TNHW":
        return array[:, :, 0].transpose(1, 0, 2, 3)
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

    def count_nonfinite(self, batch_size: int = 16) -> int:
        """The number of NaN and infinite values in the frames (0 for integer dtypes), read
        ``batch_size`` sequences at a time."""
        if not np.issubdtype(self.dtype, np.floating):
            return 0
        return sum(
            int(np.count_nonzero(~np.isfinite(np.asarray(self.array[i : i + batch_size]))))
            for i in range(0, len(self.array), batch_size)
        )


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


# names that moved to convlstm.devices and convlstm.cli (deprecated here)
_MOVED = {
    "check_device": "convlstm.devices",
    "default_device": "convlstm.devices",
    "CliError": "convlstm.cli._args",
    "run_cli": "convlstm.cli._args",
    "check_targets": "convlstm.cli._args",
    "cli_device": "convlstm.cli._args",
    "positive_int": "convlstm.cli._args",
    "non_negative_int": "convlstm.cli._args",
    "positive_float": "convlstm.cli._args",
    "add_parser": "convlstm.cli.predict",
}


__getattr__ = moved(__name__, _MOVED)
