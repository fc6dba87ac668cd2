"""Process-group helpers for training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (NCCL with one GPU per process when CUDA is
available, gloo on CPU) with a bounded timeout on every collective. Without those variables it
describes a single process and starts nothing.

>>> context = init_distributed("cpu", timeout_s=60)
>>> context.world_size, context.rank, context.is_main
(1, 0, True)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from convlstm.devices import resolve_device

__all__ = ["DistContext", "init_distributed", "resolve_device"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, and its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group with more than one process is active."""
        return self.world_size > 1

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce a small CPU tensor over all ranks (``sum`` or ``max``), returned on the CPU."""
        if not self.distributed:
            return tensor
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        on_device = tensor.to(self.device)
        dist.all_reduce(on_device, op=reduce_op)
        return on_device.cpu()

    def barrier(self) -> None:
        """Wait for all ranks (no-op in a single process)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group, if this process joined one."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    """The whole number in environment variable ``name`` (set by ``torchrun``)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise RuntimeError(f"{name} must be a whole number >= 0 (torchrun sets it), got {text!r}")
    return value


def init_distributed(device: str, timeout_s: float) -> DistContext:
    """Join the ``torchrun`` process group if there is one; see the module docstring.

    Args:
        device: the configured device (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        timeout_s: timeout of every collective, in seconds.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} must be in [0, WORLD_SIZE={world_size})")
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s), rank=rank, world_size=world_size
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)
