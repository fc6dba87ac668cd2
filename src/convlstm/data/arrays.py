"""Users' own arrays as forecasting datasets: :class:`ArrayDataset` and :func:`split_record`."""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ._checks import check_float, check_index, check_int, check_sample_bytes
from ._io import ArraySource
from .transforms import Transform, resolve_transform

Layout = Literal["samples", "record"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SCAN_BYTES = 64 << 20  # chunk size of the check_finite scan


def split_record(
    length: int,
    window: int,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    gap: int | None = None,
) -> dict[str, range]:
    """Cut ``length`` time steps into contiguous train / val / test blocks with gaps.

    The blocks follow each other in time, separated by ``gap`` discarded steps (by
    default one ``window``), so no window of one split shares a frame with another split
    and the last target of a block is at least ``gap`` steps from the next block's first
    input. After removing the two gaps, the remaining steps are shared by ``fractions``
    (rounded down for train and val; test takes the rest).

    Args:
        length: number of time steps (frames) in the record.
        window: frames per sample (``input_len + output_len``).
        fractions: ``(train, val, test)`` shares, each >= 0, summing to 1.
        gap: steps dropped between consecutive blocks (default ``window``).

    Returns:
        ``{"train": range, "val": range, "test": range}`` of step indices; a split with
        fraction 0 gets an empty range.

    Raises:
        ValueError: a split with a positive fraction is shorter than ``window``.

    Example:
        >>> split_record(100, window=5)
        {'train': range(0, 72), 'val': range(77, 86), 'test': range(91, 100)}
    """
    length = check_int(length, "length")
    window = check_int(window, "window")
    gap = window if gap is None else check_int(gap, "gap", minimum=0)
    if len(fractions) != len(SPLITS):
        raise ValueError(f"fractions must be (train, val, test), got {fractions!r}")
    shares = [check_float(f, f"fractions[{i}]", low=0, high=1) for i, f in enumerate(fractions)]
    if not math.isclose(sum(shares), 1.0, abs_tol=1e-9):
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(shares):g})")
    usable = length - 2 * gap
    sizes = [math.floor(usable * shares[0]), math.floor(usable * shares[1])]
    sizes.append(usable - sum(sizes))
    blocks: dict[str, range] = {}
    start = 0
    for name, share, size in zip(SPLITS, shares, sizes, strict=True):
        if share > 0 and size < window:
            raise ValueError(
                f"split_record: the {name} block would have {max(size, 0)} steps, fewer than "
                f"window = {window} (length {length}, gap {gap}, fractions {fractions})"
            )
        blocks[name] = range(start, start + size) if share > 0 else range(start, start)
        start += size + gap
    return blocks


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Forecasting samples cut from a user's array or file by a sliding window.

    **Sources.** A numpy array, a torch tensor, or a path to a ``.npy`` (memory-mapped),
    ``.npz`` (array ``key``; memory-mapped when stored uncompressed, as ``np.savez``
    does) or HDF5 file (``.h5``/``.hdf5``, dataset ``dataset``, read lazily with h5py).
    A key may be omitted when the file holds exactly one array. Files are only read.

    **Layout** (how the axes are read), never guessed where ambiguous:

    * ``"samples"``: independent sequences ``(N, T, H, W)`` or ``(N, T, C, H, W)``;
    * ``"record"``: one continuous record ``(T, H, W)`` or ``(T, C, H, W)``.

    With ``layout=None`` a 3-D array is a record and a 5-D array is samples; a 4-D
    array is ambiguous (``(N, T, H, W)`` or ``(T, C, H, W)``) and raises until
    ``layout`` is given. A missing channel axis becomes ``C = 1``.

    **Windows.** Every sequence (each sample, or the record) is cut into windows of
    ``input_len + output_len`` consecutive frames starting at ``0, stride, 2 * stride,
    ...``; a window's first ``input_len`` frames are the inputs, the rest the targets.
    Index order: sequence by sequence, windows in time order.

    **Splits.** ``split="train" | "val" | "test"`` keeps one contiguous block of the
    leading axis as cut by :func:`split_record` with ``split_fractions``: time steps of
    a record (separated by ``split_gap`` frames, default one window, so no window
    overlaps two splits) or whole samples (``split_gap`` default 0).

    **Values.** ``uint8`` is divided by 255 into [0, 1]; other integers, bools and
    floats are cast to float32 unchanged; ``scale``, when given, multiplies instead
    (also for ``uint8``). Each window is checked when read and a NaN or infinity raises
    ``ValueError`` naming the window; ``check_finite=True`` also scans the whole array
    up front. ``transform`` (a callable on tensors, or ``"dbz"`` / ``"log"`` for rain
    rates, see :mod:`convlstm.data.transforms`) is applied to inputs and targets.

    Args:
        source: array, tensor or file path.
        input_len: input frames ``T_in``.
        output_len: target frames ``T_out``.
        layout: ``"samples"``, ``"record"`` or ``None`` (see above).
        stride: steps between window starts.
        key: array name in a ``.npz``.
        dataset: dataset name in an HDF5 file.
        scale: factor applied to the values (see above).
        check_finite: scan the whole array for NaN/inf at construction.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` (everything).
        split_fractions: ``(train, val, test)`` shares for ``split``.
        split_gap: steps (record) or samples dropped between split blocks.
        transform: applied to inputs and targets.

    Returns (per item):
        ``(inputs, targets)``: float32 tensors ``(input_len, C, H, W)`` and
        ``(output_len, C, H, W)``.

    Attributes:
        layout: the resolved layout, ``"samples"`` or ``"record"``.
        source: the data; ``source.array`` is the ndarray, read-only ``np.memmap`` or
            ``h5py.Dataset`` read from, ``source.shape`` / ``source.dtype`` its shape and dtype.

    Example:
        >>> record = np.arange(6 * 2 * 2, dtype=np.float32).reshape(6, 2, 2)
        >>> ds = ArrayDataset(record, input_len=2, output_len=1, layout="record", stride=2)
        >>> len(ds), ds[1][0].shape
        (2, torch.Size([2, 1, 2, 2]))
        >>> ds[1][1].flatten().tolist()  # frame 4 is the target of the window starting at 2
        [16.0, 17.0, 18.0, 19.0]
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | np.ndarray | torch.Tensor,
        input_len: int,
        output_len: int,
        *,
        layout: Layout | None = None,
        stride: int = 1,
        key: str | None = None,
        dataset: str | None = None,
        scale: float | None = None,
        check_finite: bool = False,
        split: str | None = None,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        split_gap: int | None = None,
        transform: str | Transform | None = None,
    ) -> None:
        self.input_len = check_int(input_len, "input_len")
        self.output_len = check_int(output_len, "output_len")
        self.stride = check_int(stride, "stride")
        self.scale = None if scale is None else check_float(scale, "scale")
        self.transform = resolve_transform(transform)
        self.source = ArraySource(source, where="ArrayDataset", key=key, dataset=dataset)
        self.name = f"ArrayDataset({self.source.name})"
        self.layout = self._resolve_layout(layout)
        shape = self.source.shape
        if self.layout == "record":
            self._has_channels = len(shape) == 4
            num_series, frames = 1, shape[0]
        else:
            self._has_channels = len(shape) == 5
            num_series, frames = shape[0], shape[1]
        if 0 in shape:
            raise ValueError(f"{self.name}: the array is empty, shape {shape}")
        window = self.input_len + self.output_len
        frame_shape = shape[-3:] if self._has_channels else (1, *shape[-2:])
        check_sample_bytes((window, *frame_shape), self.name)
        if frames < window:
            unit = "the record" if self.layout == "record" else "each sample"
            raise ValueError(
                f"{self.name}: {unit} has {frames} frames (shape {shape}), but "
                f"input_len + output_len = {window} are needed"
            )
        self._series, self._starts = self._windows(
            num_series, frames, window, split, split_fractions, split_gap
        )
        if check_finite:
            self._scan_finite()

    def _resolve_layout(self, layout: Layout | None) -> Layout:
        ndim = len(self.source.shape)
        expected = {"record": (3, 4), "samples": (4, 5)}
        if layout is None:
            if ndim == 4:
                raise ValueError(
                    f"{self.name}: a 4-D array of shape {self.source.shape} is ambiguous: "
                    "pass layout='samples' for (N, T, H, W) or layout='record' for (T, C, H, W)"
                )
            if ndim not in (3, 5):
                raise ValueError(
                    f"{self.name}: expected a record (T, H, W) / (T, C, H, W) or samples "
                    f"(N, T, H, W) / (N, T, C, H, W), found {ndim}-D shape {self.source.shape}"
                )
            layout = "record" if ndim == 3 else "samples"
        if layout not in expected:
            raise ValueError(f"layout must be 'samples', 'record' or None, got {layout!r}")
        if ndim not in expected[layout]:
            wanted = (
                "(T, H, W) or (T, C, H, W)"
                if layout == "record"
                else "(N, T, H, W) or (N, T, C, H, W)"
            )
            raise ValueError(
                f"{self.name}: layout={layout!r} expects shape {wanted}, "
                f"found {ndim}-D shape {self.source.shape}"
            )
        return layout

    def _windows(
        self,
        num_series: int,
        frames: int,
        window: int,
        split: str | None,
        fractions: tuple[float, float, float],
        gap: int | None,
    ) -> tuple[range, range]:
        """Return the sequences used and the window starts within each sequence."""
        series, steps = range(num_series), range(frames)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
            if self.layout == "record":
                steps = split_record(frames, window, fractions, gap)[split]
            else:
                series = split_record(num_series, 1, fractions, gap or 0)[split]
            if len(series) == 0 or len(steps) == 0:
                raise ValueError(f"{self.name}: split {split!r} is empty (fractions {fractions})")
        last = steps.stop - window
        return series, range(steps.start, last + 1, self.stride)

    def _scan_finite(self) -> None:
        if self.source.dtype.kind != "f":
            return
        leading = self.source.shape[0]
        row_bytes = math.prod(self.source.shape[1:]) * self.source.dtype.itemsize
        step = max(1, _SCAN_BYTES // row_bytes)
        unit = "frame" if self.layout == "record" else "sample"
        for begin in range(0, leading, step):
            chunk = self.source.read(slice(begin, begin + step))
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            if not finite.all():
                raise ValueError(
                    f"{self.name}: {unit} {begin + int(np.argmin(finite))} contains NaN or "
                    "infinite values (check_finite=True)"
                )

    def __len__(self) -> int:
        return len(self._series) * len(self._starts)

    def locate(self, index: int) -> tuple[int, int]:
        """Return ``(sequence, first_frame)`` of window ``index``; the sequence is 0 for a record.

        Example:
            >>> ds = ArrayDataset(np.zeros((3, 8, 4, 4)), 2, 2, layout="samples", stride=2)
            >>> len(ds), ds.locate(4)
            (9, (1, 2))
        """
        index = check_index(index, len(self), self.name)
        sequence, position = divmod(index, len(self._starts))
        return self._series[sequence], self._starts[position]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sequence, start = self.locate(index)
        frames = slice(start, start + self.input_len + self.output_len)
        raw = self.source.read(frames if self.layout == "record" else (sequence, frames))
        if not self._has_channels:
            raw = raw[:, None]
        with np.errstate(over="ignore"):  # overflow to inf is reported just below
            values = raw.astype(np.float32)
            if self.scale is not None:
                values *= np.float32(self.scale)
            elif raw.dtype == np.uint8:
                values /= 255
        if not np.isfinite(values).all():
            where = f"frames {start}..{frames.stop - 1}"
            if self.layout == "samples":
                where = f"sample {sequence}, {where}"
            raise ValueError(
                f"{self.name}: window {index} ({where}) contains NaN or infinite values"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(values))
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor[: self.input_len], tensor[self.input_len :]
