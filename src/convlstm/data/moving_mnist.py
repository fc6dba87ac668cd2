"""Moving MNIST: a generator (Srivastava et al., 2015) and the standard ``mnist_test_seq.npy``.

Three public names:

* :class:`MovingMNIST` generates sequences on the fly; sequence ``i`` is a pure function
  of ``(seed, i)``.
* :class:`MovingMNISTFile` reads the published file (``uint8``, shape ``(20, N, 64, 64)``,
  time-major) through a memory map.
* :func:`write_moving_mnist` writes any such dataset, or an array, in that published layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from ._checks import (
    check_index,
    check_int,
    check_range,
    check_sample_bytes,
    check_seed,
    check_size,
)
from ._io import atomic_write_npy, open_npy, require_file
from .mnist import DIGIT_SPLITS, bundled_mnist_digits


class _SequenceDataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def _digit_pool(digits: str | np.ndarray | torch.Tensor) -> np.ndarray:
    """Digit images as read-only float32 in [0, 1], shape (N, h, w)."""
    if isinstance(digits, str):
        if digits not in DIGIT_SPLITS:
            raise ValueError(
                f"digits must be one of {DIGIT_SPLITS} or an array (N, h, w), got {digits!r}"
            )
        images = bundled_mnist_digits(digits)[0]  # type: ignore[arg-type]
    elif isinstance(digits, (np.ndarray, torch.Tensor)):
        images = np.asarray(digits.detach().cpu() if isinstance(digits, torch.Tensor) else digits)
        if images.ndim != 3 or 0 in images.shape:
            raise ValueError(
                f"digits must have shape (N, h, w) with N, h, w >= 1, got shape {images.shape}"
            )
    else:
        raise TypeError(
            f"digits must be one of {DIGIT_SPLITS} or an array (N, h, w), "
            f"got {type(digits).__name__}"
        )
    if images.dtype == np.uint8:
        pool = images.astype(np.float32) / 255
    elif images.dtype.kind == "f":
        pool = images.astype(np.float32)
        if not np.isfinite(pool).all() or pool.min() < 0 or pool.max() > 1:
            raise ValueError("float digits must be finite and within [0, 1]")
    else:
        raise TypeError(f"digits must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
    pool.setflags(write=False)
    return pool


def _reflect(position: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Fold straight-line positions into ``[0, limit]``: elastic bounces off both walls."""
    period = 2 * limit
    folded = np.mod(position, np.where(period > 0, period, 1))
    folded = np.where(folded > limit, period - folded, folded)
    return np.where(limit > 0, folded, 0)


class MovingMNIST(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Generated Moving MNIST sequences in the spirit of Srivastava et al. (2015).

    Each sequence shows ``num_digits`` digits on a black ``size`` canvas. Every digit
    starts at a uniform position, moves in a straight line with a uniform direction and a
    speed drawn from ``speed_range`` (pixels per frame), and bounces off the edges by
    reflecting its velocity, so it always stays fully inside the canvas. Overlapping
    digits are combined by the pixel-wise maximum. Positions are rounded to whole pixels.

    Sequence ``i`` is a pure function of ``(seed, i)`` (drawn from
    ``np.random.default_rng([seed, i])``): any index is reproducible, different indices
    differ, and ``DataLoader`` workers or distributed ranks that receive different indices
    produce disjoint, deterministic samples without any coordination.

    Args:
        num_samples: dataset length.
        input_len: frames given to the model (``T_in``).
        output_len: frames to predict (``T_out``).
        size: canvas ``(H, W)`` or one int for a square canvas.
        num_digits: digits per sequence.
        digits: digit pool: ``"train"`` (7,000 bundled MNIST digits), ``"val"`` (1,000
            other digits, never in ``"train"``), ``"all"`` (8,000), or an array
            ``(N, h, w)`` of ``uint8`` (0..255) or floats in [0, 1], e.g. from
            :func:`load_mnist_digits`.
        speed_range: ``(low, high)`` speed in pixels per frame.
        seed: non-negative integer seed.

    Returns (per item):
        ``(inputs, targets)``: float32 tensors ``(input_len, 1, H, W)`` and
        ``(output_len, 1, H, W)`` with values in [0, 1].

    Attributes:
        digits: the digit pool, read-only float32 ``(N, h, w)`` in [0, 1].

    Example:
        >>> ds = MovingMNIST(num_samples=100, seed=0)
        >>> inputs, targets = ds[3]
        >>> inputs.shape, targets.shape, inputs.dtype
        (torch.Size([10, 1, 64, 64]), torch.Size([10, 1, 64, 64]), torch.float32)
        >>> bool(torch.equal(ds[3][0], MovingMNIST(num_samples=100, seed=0)[3][0]))
        True
    """

    def __init__(
        self,
        num_samples: int = 10_000,
        *,
        input_len: int = 10,
        output_len: int = 10,
        size: int | tuple[int, int] = 64,
        num_digits: int = 2,
        digits: str | np.ndarray | torch.Tensor = "train",
        speed_range: tuple[float, float] = (2.0, 5.0),
        seed: int = 0,
    ) -> None:
        self.num_samples = check_int(num_samples, "num_samples", minimum=0)
        self.input_len = check_int(input_len, "input_len")
        self.output_len = check_int(output_len, "output_len")
        self.size = check_size(size, "size")
        self.num_digits = check_int(num_digits, "num_digits")
        self.speed_range = check_range(speed_range, "speed_range")
        self.seed = check_seed(seed)
        self.digits = _digit_pool(digits)
        digit_h, digit_w = self.digits.shape[1:]
        if digit_h > self.size[0] or digit_w > self.size[1]:
            raise ValueError(
                f"size {self.size} is smaller than the digits ({digit_h}, {digit_w}); "
                "each digit must fit inside the canvas"
            )
        check_sample_bytes((self.input_len + self.output_len, *self.size), "MovingMNIST")

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> np.ndarray:
        """Return sequence ``index`` as a float32 array ``(T_in + T_out, H, W)`` in [0, 1].

        Example:
            >>> MovingMNIST(num_samples=2, size=48).render(1).shape
            (20, 48, 48)
        """
        index = check_index(index, self.num_samples, "MovingMNIST")
        rng = np.random.default_rng([self.seed, index])
        n, frames = self.num_digits, self.input_len + self.output_len
        height, width = self.size
        digit_h, digit_w = self.digits.shape[1:]
        which = rng.integers(len(self.digits), size=n)
        limit = np.array([height - digit_h, width - digit_w], dtype=np.float64)
        start = rng.uniform(0.0, 1.0, size=(n, 2)) * limit
        angle = rng.uniform(0.0, 2 * np.pi, size=n)
        speed = rng.uniform(*self.speed_range, size=n)
        velocity = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
        t = np.arange(frames)
        position = _reflect(start[:, None, :] + velocity[:, None, :] * t[:, None], limit)
        top_left = np.rint(position).astype(np.intp)  # (n, T, 2) rows, cols
        out = np.zeros((frames, height, width), dtype=np.float32)
        # Pasting with one in-place maximum per (digit, frame) slice is faster than a single
        # fancy-indexed scatter of all frames (it writes in place, no index arrays).
        for d in range(n):
            digit = self.digits[which[d]]
            for frame, (row, col) in enumerate(top_left[d].tolist()):
                patch = out[frame, row : row + digit_h, col : col + digit_w]
                np.maximum(patch, digit, out=patch)
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.from_numpy(self.render(index)).unsqueeze(1)
        return frames[: self.input_len], frames[self.input_len :]


class MovingMNISTFile(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The standard Moving MNIST file (``mnist_test_seq.npy``), memory-mapped.

    The published file is ``uint8`` with shape ``(T, N, H, W) = (20, 10000, 64, 64)``,
    time-major. This dataset exposes it batch-major: item ``i`` is sequence ``i``, its
    first ``input_len`` frames as inputs and the next ``output_len`` as targets (extra
    frames are ignored), scaled to [0, 1] with a channel axis. Only the requested
    sequence is read from disk; the file is opened read-only and never written.

    Args:
        path: the ``.npy`` file.
        input_len: input frames ``T_in``.
        output_len: target frames ``T_out``; ``input_len + output_len <= T``.

    Returns (per item):
        ``(inputs, targets)``: float32 tensors ``(input_len, 1, H, W)`` and
        ``(output_len, 1, H, W)`` in [0, 1].

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, not a .npy, not 4-D, or has too few frames.
        TypeError: its dtype is not ``uint8``.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_moving_mnist(pathlib.Path(folder) / "seq.npy",
        ...                               MovingMNIST(num_samples=3, seed=1))
        ...     ds = MovingMNISTFile(path)
        ...     len(ds), ds.array.shape, ds[2][1].shape
        (3, (20, 3, 64, 64), torch.Size([10, 1, 64, 64]))
    """

    def __init__(
        self, path: str | os.PathLike[str], input_len: int = 10, output_len: int = 10
    ) -> None:
        self.input_len = check_int(input_len, "input_len")
        self.output_len = check_int(output_len, "output_len")
        self.path = require_file(path, "MovingMNISTFile")
        self._array: np.ndarray | None = None
        self._pid = -1
        array = self.array
        frames = self.input_len + self.output_len
        label = f"MovingMNISTFile '{self.path}'"
        if array.ndim != 4 or 0 in array.shape:
            raise ValueError(
                f"{label}: expected shape (T, N, H, W) (published: (20, 10000, 64, 64)), "
                f"found {array.shape}"
            )
        if array.dtype != np.uint8:
            raise TypeError(f"{label}: expected dtype uint8, found {array.dtype}")
        if array.shape[0] < frames:
            raise ValueError(
                f"{label}: found {array.shape[0]} frames (shape {array.shape}), "
                f"input_len + output_len = {frames} needed"
            )

    @property
    def array(self) -> np.ndarray:
        """The file's time-major ``(T, N, H, W)`` ``uint8`` array, memory-mapped read-only."""
        if self._array is None or self._pid != os.getpid():
            self._array = open_npy(self.path, "MovingMNISTFile")
            self._pid = os.getpid()
        return self._array

    def __len__(self) -> int:
        return self.array.shape[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = check_index(index, len(self), "MovingMNISTFile")
        frames = self.array[: self.input_len + self.output_len, index].astype(np.float32) / 255
        tensor = torch.from_numpy(frames).unsqueeze(1)
        return tensor[: self.input_len], tensor[self.input_len :]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}


def _to_uint8(frames: np.ndarray, where: str) -> np.ndarray:
    if frames.dtype == np.uint8:
        return frames
    if frames.dtype.kind != "f":
        raise TypeError(f"{where}: expected uint8 or float values in [0, 1], got {frames.dtype}")
    if not np.isfinite(frames).all() or frames.min() < 0 or frames.max() > 1:
        raise ValueError(f"{where}: float values must be finite and within [0, 1]")
    return np.rint(frames * 255).astype(np.uint8)


def write_moving_mnist(
    path: str | os.PathLike[str],
    data: _SequenceDataset | np.ndarray | torch.Tensor,
    *,
    overwrite: bool = False,
) -> Path:
    """Write sequences in the published ``mnist_test_seq.npy`` layout (``uint8`` ``(T, N, H, W)``).

    ``data`` is either a dataset whose items are ``(inputs, targets)`` with one channel
    (e.g. :class:`MovingMNIST`; each item becomes ``T = T_in + T_out`` frames), or a
    batch-major array ``(N, T, H, W)`` / ``(N, T, 1, H, W)`` of ``uint8`` or floats in
    [0, 1]. Floats are stored as ``round(255 * x)``, so frames made from ``uint8`` digits
    read back bit-identical through :class:`MovingMNISTFile`.

    The file is written atomically: to a temporary file in the same folder, flushed and
    fsync'ed, then renamed over ``path``. An existing file is never replaced unless
    ``overwrite=True``.

    Args:
        path: destination ``.npy`` path; its folder must exist.
        data: dataset or array as above.
        overwrite: replace an existing ``path``.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError / TypeError: wrong shapes, channels, dtypes or values.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "mm.npy"
        ...     _ = write_moving_mnist(path, MovingMNIST(num_samples=4))
        ...     np.load(path, mmap_mode="r").shape
        (20, 4, 64, 64)
    """
    where = "write_moving_mnist"
    if isinstance(data, (np.ndarray, torch.Tensor)):
        array = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data)
        if array.ndim == 5 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim != 4 or 0 in array.shape:
            raise ValueError(
                f"{where}: expected an array (N, T, H, W) or (N, T, 1, H, W), "
                f"got shape {array.shape}"
            )
        frames = _to_uint8(array, where)
        n, t, h, w = frames.shape

        def fill(out: np.ndarray) -> None:
            out[...] = frames.transpose(1, 0, 2, 3)

        return atomic_write_npy(
            path, (t, n, h, w), np.uint8, fill, overwrite=overwrite, where=where
        )

    n = len(data)
    if n < 1:
        raise ValueError(f"{where}: the dataset is empty")
    first = _sequence_frames(data, 0, where)

    def fill_from_dataset(out: np.ndarray) -> None:
        out[:, 0] = first
        for i in range(1, n):
            frames = _sequence_frames(data, i, where)
            if frames.shape != first.shape:
                raise ValueError(
                    f"{where}: sample {i} has frames of shape {frames.shape}, "
                    f"sample 0 had {first.shape}"
                )
            out[:, i] = frames

    shape = (first.shape[0], n, *first.shape[1:])
    return atomic_write_npy(
        path, shape, np.uint8, fill_from_dataset, overwrite=overwrite, where=where
    )


def _sequence_frames(data: _SequenceDataset, index: int, where: str) -> np.ndarray:
    item: Sequence[Any] = data[index]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(f"{where}: dataset items must be (inputs, targets) pairs")
    inputs, targets = (np.asarray(torch.as_tensor(x).detach().cpu()) for x in item)
    if inputs.ndim != 4 or targets.shape[1:] != inputs.shape[1:] or inputs.shape[1] != 1:
        raise ValueError(
            f"{where}: sample {index}: expected inputs (T_in, 1, H, W) and targets "
            f"(T_out, 1, H, W), got {inputs.shape} and {targets.shape}"
        )
    return _to_uint8(np.concatenate([inputs[:, 0], targets[:, 0]]), f"{where}: sample {index}")
