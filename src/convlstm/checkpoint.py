"""Self-describing training checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is one dict of tensors and plain Python values (so
``torch.load(path, weights_only=True)`` can read it, without unpickling arbitrary objects):

=================  ==========================================================================
key                value
=================  ==========================================================================
format             ``"convlstm.checkpoint"``
format_version     :data:`FORMAT_VERSION`
model_name         the registered model name (``convlstm.models.list_models()``)
model_config       the model's constructor arguments (``EncoderForecaster(**model_config)``)
model_state        ``model.state_dict()``
config             the full resolved training configuration (nested plain values)
optimizer          ``optimizer.state_dict()`` (``None`` in weights-only exports)
scheduler          ``scheduler.state_dict()``
epoch, step        the epoch and the global optimiser step reached; ``epoch_step`` the steps
                   done inside ``epoch`` (0 at an epoch boundary)
best_metric        best validation loss so far (``None`` before the first validation)
rng                RNG states of torch (CPU and CUDA), numpy and Python's ``random``
trainer            the trainer's bookkeeping (planned steps, skipped steps, ...)
data_transform     rain data only: the data's ``RainTransform.to_dict()`` (``{"kind": "log",
                   ...}``), so the loaded model can work in mm/h (:mod:`convlstm.units`);
                   absent in older checkpoints and for other data
=================  ==========================================================================

Files are written with a temporary file in the same folder, flushed and fsync'ed, then renamed
over the target (:func:`convlstm._atomic.atomic_file`), so a crash leaves the previous file.
Reading checks the CRC-32 of every record of the archive (:func:`verify_archive`: a flipped
bit is an error, not silently wrong weights) and refuses anything but tensors and plain values.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from convlstm._atomic import atomic_file
from convlstm.models import EncoderForecaster

if TYPE_CHECKING:
    from convlstm.data.transforms import RainTransform

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "capture_rng",
    "checkpoint_transform",
    "load_checkpoint",
    "load_model",
    "load_state_checked",
    "make_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "verify_archive",
]

FORMAT = "convlstm.checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("format", "format_version", "model_name", "model_config", "model_state", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, of another format, or that does not fit."""


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (replacing an existing file).

    >>> import tempfile, pathlib
    >>> model = EncoderForecaster(1, [4], 3, patch_size=2)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "last.pt"
    >>> _ = save_checkpoint(path, make_checkpoint(model, "moving_mnist", {}))
    >>> load_model(path)[0].config == model.config
    True
    """
    missing = [key for key in _REQUIRED if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint is missing the key(s) {', '.join(missing)}")
    buffer = io.BytesIO()  # serialised first, so that a failed write reports its real cause
    torch.save(checkpoint, buffer)
    try:
        with atomic_file(path, overwrite=True) as handle:
            handle.write(buffer.getbuffer())
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(error.errno, f"cannot write checkpoint {path}: {reason}") from None
    return Path(path)


def make_checkpoint(
    model: EncoderForecaster, model_name: str, config: dict[str, Any], **state: Any
) -> dict[str, Any]:
    """A checkpoint dict for ``model`` (see the module docstring), plus ``state`` entries."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_config": dict(model.config),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config,
        "torch_version": str(torch.__version__),
        **state,
    }


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or not a convlstm checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        verify_archive(path)
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise CheckpointError(
                f"checkpoint {path} is unreadable (truncated or corrupt?): {_first_line(error)}"
            ) from None
        detail = _refused_detail(error)
        if "global" in detail.lower():  # a class or function: what a code-running pickle uses
            raise CheckpointError(
                f"checkpoint {path} is refused: it holds objects other than tensors and plain "
                f"data ({detail}), which could run code when loaded; only checkpoints written "
                "by convlstm are accepted"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?) or not written by "
            f"convlstm: the safe loader, which accepts only tensors and plain data, stopped at "
            f"{detail}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {_first_line(error)}"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a convlstm checkpoint (no format={FORMAT!r} entry)")
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this convlstm reads versions "
            f"up to {FORMAT_VERSION}"
        )
    missing = [key for key in _REQUIRED if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {', '.join(missing)}")
    return checkpoint


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _refused_detail(error: BaseException) -> str:
    """What torch's weights-only unpickler refused (``unsupported GLOBAL posix.mkdir``, ...),
    without its advice to load the file unsafely."""
    for line in str(error).splitlines():
        line = line.strip().rstrip(".")
        if line.lower().startswith(("trying to load unsupported", "unsupported")):
            line = line.removeprefix("Trying to load ").replace(" whose module", ", module")
            return line[:1].lower() + line[1:]
    return "rejected by the weights-only unpickler"


_CRC_CHUNK = 1 << 20


def verify_archive(path: str | os.PathLike[str]) -> None:
    """Check the CRC-32 of every record of a zip-format checkpoint (what :func:`torch.save`
    writes), reading it in 1 MiB chunks; files in torch's legacy format are left to the loader.

    ``torch.load`` does not check these checksums, so without this a flipped bit in the weights
    would load as if healthy.

    Raises:
        CheckpointError: naming the file and the first damaged record.
    """
    path = Path(path)
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return  # not a zip archive: the legacy format (or garbage, which torch.load refuses)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                try:
                    with archive.open(info) as record:
                        while record.read(_CRC_CHUNK):
                            pass
                except zipfile.BadZipFile as error:  # a CRC mismatch or a damaged header
                    raise CheckpointError(
                        f"checkpoint {path} is corrupt: record {info.filename} fails its "
                        f"checksum ({_first_line(error)})"
                    ) from None
                except (OSError, EOFError, ValueError, zlib.error) as error:
                    raise CheckpointError(
                        f"checkpoint {path} is corrupt: record {info.filename} cannot be read "
                        f"({_first_line(error)})"
                    ) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {_first_line(error)}"
        ) from None


def load_state_checked(module: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``module`` after checking that every key and shape matches.

    Raises:
        CheckpointError: listing the missing and unexpected keys and the differing shapes.
    """
    _check_fit(module.state_dict(), state, source)
    module.load_state_dict(state)


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_fit(own: dict[str, Any], state: dict[str, Any], source: str) -> None:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{key}: checkpoint {_shape(state[key])} vs model {_shape(own[key])}"
        for key in sorted(set(own) & set(state))
        if _shape(state[key]) != _shape(own[key])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: {' | '.join(problems)}")


def load_model(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, physical_units: bool = False
) -> tuple[EncoderForecaster, dict[str, Any]]:
    """The model stored in checkpoint ``path`` (in eval mode) and the run's configuration.

    Args:
        path: the checkpoint file.
        map_location: where the weights go.
        physical_units: when the checkpoint carries a rain data transform
            (``data_transform``), return the model wrapped in
            :class:`~convlstm.units.PhysicalUnits`, which takes and returns rain rates in
            mm/h; other checkpoints load unwrapped either way.

    Returns:
        ``(model, config)``: the :class:`~convlstm.models.EncoderForecaster` with its weights on
        ``map_location`` (or its :class:`~convlstm.units.PhysicalUnits` wrapper, which exposes
        the same attributes), and the training configuration as nested plain values
        (``config["data"]["horizon"]``, ...; see :mod:`convlstm.config`).

    Raises:
        CheckpointError: missing/corrupt file, or weights that do not fit the stored model.
    """
    checkpoint = load_checkpoint(path, map_location)
    source = f"checkpoint {path}"
    try:
        with torch.device("meta"):  # check the shapes before allocating anything
            skeleton = EncoderForecaster(**checkpoint["model_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source} has an invalid model_config: {error}") from None
    _check_fit(skeleton.state_dict(), checkpoint["model_state"], source)
    model = EncoderForecaster(**checkpoint["model_config"])
    load_state_checked(model, checkpoint["model_state"], source)
    model = model.to(map_location).eval()
    transform = checkpoint_transform(checkpoint, source)
    if transform is not None and physical_units:
        from convlstm.units import PhysicalUnits

        return PhysicalUnits(model, transform).eval(), checkpoint["config"]  # type: ignore[return-value]
    return model, checkpoint["config"]


def checkpoint_transform(checkpoint: dict[str, Any], source: str) -> RainTransform | None:
    """The rain data transform that the checkpoint dict ``checkpoint`` (read from ``source``,
    named in errors) carries in ``data_transform`` (:func:`convlstm.units.rain_transform`), or
    ``None``.

    Raises:
        CheckpointError: an invalid ``data_transform`` entry.
    """
    from convlstm.units import rain_transform

    try:
        return rain_transform(checkpoint)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source} has an invalid data_transform: {error}") from None


# ----------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), numpy's global and Python's ``random`` generators,
    as tensors and plain values (readable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`capture_rng`.

    >>> state = capture_rng(); a = torch.rand(1); restore_rng(state)
    >>> bool(torch.equal(a, torch.rand(1)))
    True
    """
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    numpy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
