"""Which device to run on: the one resolver behind ``device=`` arguments and ``--device``, and
how a model is run for inference.

:func:`default_device` picks CUDA when available, else the CPU; :func:`check_device` checks that
this machine has a named device before anything is loaded, with an error naming the argument;
:func:`pick_device` does both (``--device`` of ``evaluate`` and ``predict``);
:func:`resolve_device` is a training run's ``run.device`` for one process of a distributed run
(also importable from :mod:`convlstm.distributed`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "check_device",
    "default_device",
    "inference",
    "model_device",
    "pick_device",
    "resolve_device",
]


def default_device(device: str | None) -> str:
    """``device``, or ``"cuda"`` when available, else ``"cpu"`` (``None`` and ``"auto"``).

    >>> default_device("cpu")
    'cpu'
    """
    if device is not None and device != "auto":
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


def pick_device(device: str | None, name: str = "device") -> str:
    """:func:`default_device` then :func:`check_device`: the device name to run on.

    >>> pick_device("cpu", "--device")
    'cpu'
    """
    chosen = default_device(device)
    check_device(chosen, name)
    return chosen


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """A training run's ``run.device`` for the process of ``local_rank``: ``auto`` ->
    ``cuda:<local_rank>`` if CUDA is available, else ``cpu``; ``cuda`` -> ``cuda:<local_rank>``;
    other names as given (``RuntimeError`` naming ``run.device`` for a CUDA device this machine
    lacks).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"run.device={device!r} but CUDA is not available here")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(
                f"run.device={device!r} (local rank {local_rank}): this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}"
            )
    return resolved


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
