"""Reading arrays from .npy / .npz / HDF5 files and writing .npy files atomically (internal).

Files are validated from their headers before any data is touched, so a truncated or
foreign file fails with a message naming the file, the shape found and the shape expected.
``.npy`` files and uncompressed ``.npz`` members are memory-mapped; nothing is ever
unpickled.
"""

from __future__ import annotations

import math
import os
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ._checks import require_numeric

NPY_SUFFIXES = (".npy",)
NPZ_SUFFIXES = (".npz",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")

_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, skipped fields, name/extra lengths


def require_file(path: str | os.PathLike[str], where: str) -> Path:
    """Return ``path`` as a :class:`Path` after checking it names an existing regular file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{where}: no such file: '{p}'")
    if not p.is_file():
        raise ValueError(f"{where}: '{p}' is not a regular file")
    return p


def _read_npy_header(fp: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header from ``fp``; leave ``fp`` at the first data byte."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise ValueError(f"{where}: not a readable .npy array ({exc})") from exc
    require_numeric(dtype, where)
    if any(n < 0 for n in shape):
        raise ValueError(
            f"{where}: its header declares a negative dimension in shape {tuple(shape)}"
        )
    return tuple(shape), bool(fortran), dtype


def _check_length(where: str, shape: tuple[int, ...], dtype: np.dtype, have: int) -> None:
    need = math.prod(shape) * dtype.itemsize
    if have < need:
        raise ValueError(
            f"{where}: truncated: its header declares shape {shape} {dtype} "
            f"({need} data bytes) but only {max(have, 0)} data bytes are present"
        )


def open_npy(path: Path, where: str) -> np.ndarray:
    """Memory-map a .npy file read-only after checking its header and length."""
    with path.open("rb") as fp:
        shape, _, dtype = _read_npy_header(fp, f"{where} '{path}'")
        offset = fp.tell()
    _check_length(f"{where} '{path}'", shape, dtype, path.stat().st_size - offset)
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def open_npz(path: Path, key: str | None, where: str) -> np.ndarray:
    """Return array ``key`` of a .npz archive, memory-mapped when stored uncompressed."""
    label = f"{where} '{path}'"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{label}: not a readable .npz archive ({exc})") from exc
    with archive:
        names = sorted(n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy"))
        if key is None:
            if len(names) != 1:
                raise ValueError(f"{label} holds arrays {names}; pass key= to choose one")
            key = names[0]
        elif key not in names:
            raise ValueError(f"{label} has no array {key!r}; it holds {names}")
        info = archive.getinfo(key + ".npy")
        label = f"{label}[{key!r}]"
        if info.compress_type == zipfile.ZIP_STORED:
            return _map_stored_member(path, info, label)
        try:
            with archive.open(info) as member:
                shape, fortran, dtype = _read_npy_header(member, label)
                # the declared size first: nothing is decompressed for a header that lies
                _check_length(label, shape, dtype, info.file_size - member.tell())
                data = member.read(math.prod(shape) * dtype.itemsize)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ValueError(f"{label}: corrupt compressed member ({exc})") from exc
    _check_length(label, shape, dtype, len(data))
    count = math.prod(shape)
    flat = np.frombuffer(data, dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C")


def _map_stored_member(path: Path, info: zipfile.ZipInfo, label: str) -> np.ndarray:
    with path.open("rb") as fp:
        fp.seek(info.header_offset)
        local = fp.read(_ZIP_LOCAL_HEADER.size)
        if len(local) < _ZIP_LOCAL_HEADER.size or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{label}: corrupt .npz archive (bad local file header)")
        _, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(local)
        start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len
        fp.seek(start)
        shape, fortran, dtype = _read_npy_header(fp, label)
        offset = fp.tell()
    available = min(start + info.file_size, path.stat().st_size) - offset
    _check_length(label, shape, dtype, available)
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def import_h5py(where: str) -> Any:
    """Import h5py, or explain that the optional dependency is needed."""
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            f"{where}: reading HDF5 files needs the optional package h5py "
            "(pip install h5py, or pip install 'convlstm[nowcast]')"
        ) from exc
    return h5py


def _hdf5_dataset_name(handle: Any, name: str | None, label: str, h5py: Any) -> str:
    found: list[str] = []
    handle.visititems(lambda n, obj: found.append(n) if isinstance(obj, h5py.Dataset) else None)
    if name is None:
        if len(found) != 1:
            raise ValueError(f"{label} holds datasets {found}; pass dataset= to choose one")
        return found[0]
    if name.strip("/") not in found:
        raise ValueError(f"{label} has no dataset {name!r}; it holds {found}")
    return name


class ArraySource:
    """A read-only array held in memory or in a .npy, .npz or HDF5 file.

    Files are opened lazily in each process (and reopened after a fork or unpickling),
    so a dataset that holds an ``ArraySource`` is safe in ``DataLoader`` workers.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | np.ndarray | torch.Tensor,
        *,
        where: str,
        key: str | None = None,
        dataset: str | None = None,
    ) -> None:
        self.path: Path | None = None
        self._key = key
        self._dataset = dataset
        self._handle: Any = None
        self._pid = -1
        if isinstance(source, torch.Tensor):
            source = source.detach().cpu().numpy()
        if isinstance(source, np.ndarray):
            self.name = f"<array of shape {source.shape}>"
            self._array: Any = source
            self.kind = "memory"
        elif isinstance(source, (str, os.PathLike)):
            self.path = require_file(source, where)
            self.name = f"'{self.path}'"
            self.kind = self._kind_of(self.path, where)
            self._array = None
        else:
            raise TypeError(
                f"{where}: expected a file path, a numpy array or a torch tensor, "
                f"got {type(source).__name__}"
            )
        if key is not None and self.kind != "npz":
            raise ValueError(f"{where}: key= applies to .npz files only, got {self.name}")
        if dataset is not None and self.kind != "hdf5":
            raise ValueError(f"{where}: dataset= applies to HDF5 files only, got {self.name}")
        self._where = where
        opened = self.array
        self.shape: tuple[int, ...] = tuple(opened.shape)
        self.dtype: np.dtype = np.dtype(opened.dtype)
        if self.kind == "hdf5":
            self.close()
        require_numeric(self.dtype, f"{where} {self.name}")

    @staticmethod
    def _kind_of(path: Path, where: str) -> str:
        suffix = path.suffix.lower()
        for kind, suffixes in (
            ("npy", NPY_SUFFIXES),
            ("npz", NPZ_SUFFIXES),
            ("hdf5", HDF5_SUFFIXES),
        ):
            if suffix in suffixes:
                return kind
        supported = NPY_SUFFIXES + NPZ_SUFFIXES + HDF5_SUFFIXES
        raise ValueError(f"{where}: '{path}' has suffix {suffix!r}; expected one of {supported}")

    @property
    def array(self) -> Any:
        """The underlying array: ndarray, ``np.memmap`` or ``h5py.Dataset``."""
        if self.kind == "memory":
            return self._array
        if self._array is None or self._pid != os.getpid():
            self._array = self._open()
            self._pid = os.getpid()
        return self._array

    def _open(self) -> Any:
        assert self.path is not None
        if self.kind == "npy":
            return open_npy(self.path, self._where)
        if self.kind == "npz":
            return open_npz(self.path, self._key, self._where)
        label = f"{self._where} {self.name}"
        h5py = import_h5py(label)
        try:
            handle = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"{label}: not a readable HDF5 file ({exc})") from exc
        try:
            name = _hdf5_dataset_name(handle, self._dataset, label, h5py)
        except ValueError:
            handle.close()
            raise
        self._handle = handle
        return handle[name]

    def read(self, index: Any) -> np.ndarray:
        """Return ``array[index]`` as an in-memory numpy array."""
        try:
            return np.asarray(self.array[index])
        except OSError as exc:
            raise ValueError(f"{self._where} {self.name}: read failed ({exc})") from exc

    def close(self) -> None:
        """Drop open file handles; the next access reopens them."""
        if self.kind == "memory":
            return
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._array = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.kind != "memory":
            state["_array"] = None
            state["_handle"] = None
        return state


def atomic_write_npy(
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    fill: Callable[[np.ndarray], None],
    *,
    overwrite: bool,
    where: str,
) -> Path:
    """Write a .npy file of ``shape``/``dtype`` whose contents ``fill`` writes into a memmap.

    The data goes to a temporary file in the destination folder, which is flushed,
    fsync'ed and then renamed over ``path`` with :func:`os.replace`, so readers see
    either the old file or the complete new one. An existing ``path`` is refused unless
    ``overwrite=True``.
    """
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise FileNotFoundError(f"{where}: folder '{target.parent}' does not exist")
    if target.is_dir():
        raise ValueError(f"{where}: '{target}' is a directory, expected a file name")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{where}: '{target}' exists; pass overwrite=True to replace it")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        fill(out)
        out.flush()
        del out
        with tmp.open("rb+") as fp:
            os.fsync(fp.fileno())
        if target.exists() and not overwrite:
            raise FileExistsError(f"{where}: '{target}' appeared while writing; not replaced")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target
