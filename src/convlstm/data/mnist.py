"""MNIST digit images for Moving MNIST: the bundled 8,000 digits and user-supplied files.

The package ships 8,000 real MNIST digits (``assets/mnist_digits_8k.npz``, see
``assets/DATA_LICENSE.md``), sorted by label. They are split into two disjoint pools so
that validation sequences only use digits never seen in training:

* ``"val"``: the digits whose position ``i`` in the file satisfies ``i % 8 == 7``
  (exactly 1,000 digits; since the file is sorted by label, every class gets ~1/8 of
  its digits, about 100 each),
* ``"train"``: the other 7,000 digits,
* ``"all"``: all 8,000.

A full MNIST can be read from the standard IDX files with :func:`load_mnist_digits`.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from ._io import open_npy, open_npz, require_file

DigitSplit = Literal["train", "val", "all"]
DIGIT_SPLITS: tuple[str, ...] = ("train", "val", "all")
_VAL_EVERY = 8
_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


@functools.cache
def _bundled() -> tuple[np.ndarray, np.ndarray]:
    asset = resources.files("convlstm.data").joinpath("assets", "mnist_digits_8k.npz")
    with asset.open("rb") as fp, np.load(fp, allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def bundled_mnist_digits(split: DigitSplit = "all") -> tuple[np.ndarray, np.ndarray]:
    """Return the bundled MNIST digits of one pool as ``(images, labels)``.

    Args:
        split: ``"train"`` (7,000 digits), ``"val"`` (1,000 digits, disjoint from
            ``"train"``) or ``"all"`` (8,000); see the module docstring for the rule.

    Returns:
        ``images`` of shape ``(N, 28, 28)`` and ``labels`` of shape ``(N,)``, both
        ``uint8`` and read-only.

    Example:
        >>> images, labels = bundled_mnist_digits("val")
        >>> images.shape, images.dtype, labels.shape
        ((1000, 28, 28), dtype('uint8'), (1000,))
    """
    images, labels = _bundled()
    position = np.arange(len(images))
    if split == "all":
        return images, labels
    if split == "val":
        keep = position % _VAL_EVERY == _VAL_EVERY - 1
    elif split == "train":
        keep = position % _VAL_EVERY != _VAL_EVERY - 1
    else:
        raise ValueError(f"split must be one of {DIGIT_SPLITS}, got {split!r}")
    chosen_images, chosen_labels = images[keep], labels[keep]
    chosen_images.setflags(write=False)
    chosen_labels.setflags(write=False)
    return chosen_images, chosen_labels


def load_mnist_digits(path: str | os.PathLike[str], *, key: str = "images") -> np.ndarray:
    """Read digit images from an MNIST IDX file (optionally gzipped), a .npy or a .npz.

    IDX is the format of the original MNIST distribution, e.g.
    ``train-images-idx3-ubyte`` or ``t10k-images-idx3-ubyte.gz`` (gzip is detected from
    the file's first bytes). ``.npy`` files are read directly and ``.npz`` archives by
    ``key``. The result can be passed as ``digits=`` to :class:`MovingMNIST`.

    Args:
        path: the file to read.
        key: array name inside a ``.npz`` archive.

    Returns:
        ``uint8`` array of shape ``(N, H, W)`` (``(N, 28, 28)`` for MNIST).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, not IDX/npy/npz, or not 3-D.
        TypeError: the images are not ``uint8``.

    Example:
        >>> import tempfile, pathlib
        >>> images, _ = bundled_mnist_digits("val")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "digits.npz"
        ...     np.savez(path, images=images[:5])
        ...     load_mnist_digits(path).shape
        (5, 28, 28)
    """
    where = "load_mnist_digits"
    p = require_file(path, where)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        images = np.array(open_npy(p, where))
    elif suffix == ".npz":
        images = np.array(open_npz(p, key, where))
    else:
        images = _read_idx(p, where)
    if images.ndim != 3 or 0 in images.shape:
        raise ValueError(
            f"{where} '{p}': expected images of shape (N, H, W) with N, H, W >= 1, "
            f"found shape {images.shape}"
        )
    if images.dtype != np.uint8:
        raise TypeError(f"{where} '{p}': expected uint8 images, found dtype {images.dtype}")
    return images


def _read_idx(path: Path, where: str) -> np.ndarray:
    with path.open("rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
    label = f"{where} '{path}'"
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as fp:
            data = fp.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{label}: unreadable gzip data ({exc})") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError(
            f"{label}: not an IDX file (expected magic 0x0000080N, found "
            f"{data[:4].hex() or 'nothing'}); supported: IDX (optionally gzipped), .npy, .npz"
        )
    type_code, ndim = data[2], data[3]
    if type_code != _IDX_UBYTE:
        raise TypeError(
            f"{label}: expected unsigned-byte IDX data (type 0x08), found 0x{type_code:02x}"
        )
    if ndim != 3:
        hint = " (is this a labels file?)" if ndim == 1 else ""
        raise ValueError(f"{label}: expected 3-D IDX images (N, H, W), found {ndim}-D{hint}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{label}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    need = math.prod(shape)
    if len(data) - header < need:
        raise ValueError(
            f"{label}: truncated: header declares shape {shape} ({need} bytes) "
            f"but only {len(data) - header} bytes follow"
        )
    return np.frombuffer(data, np.uint8, count=need, offset=header).reshape(shape).copy()
