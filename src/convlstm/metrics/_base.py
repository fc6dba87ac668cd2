"""The plumbing shared by the accumulating metrics: a :class:`torchmetrics.Metric` whose states
are sums per lead time, with the number of lead times ``T`` set by the first update.

torchmetrics provides the state bookkeeping (``add_state``, ``reset``, ``merge_state``, the
all-gather and sum across processes, ``state_dict``). What it cannot know is added here:

* every state holds ``T`` on its axis 1, and ``T`` is unknown until the first update, so the
  states start with ``T = 0`` and grow on the first update, merge or synchronisation; ranks
  agree on ``T`` before they sum (a rank that saw no data takes part with zeros, ranks with
  different ``T`` all raise rather than deadlock);
* ``update`` and ``merge`` return ``self`` (chaining), ``a + b`` is the merged metric (not
  torchmetrics' lazily composed metric) and states merge only between equal settings;
* ``state_dict`` carries the settings, and loading a state checks them;
* with NCCL, states kept on the CPU travel through the current CUDA device.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, Self

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

_CONFIG_KEY = "config"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _collective_device(group: Any) -> torch.device:
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree_on_lead_times(lead_times: int, group: Any) -> int:
    """The number of lead times across ranks (0 if no rank has data); raise if they differ.

    Every rank gets the same answer, so every rank raises (or none does): no deadlock.
    """
    none = torch.iinfo(torch.int64).max
    probe = torch.tensor([lead_times, -(lead_times or none)], device=_collective_device(group))
    dist.all_reduce(probe, op=dist.ReduceOp.MAX, group=group)
    longest, shortest = int(probe[0]), -int(probe[1])
    if longest and shortest != longest:
        raise ValueError(
            f"ranks hold different numbers of lead times (T = {shortest} and {longest})"
        )
    return longest


class LeadTimeMetric(Metric):
    """A :class:`torchmetrics.Metric` of summed states ``(..., T, ...)`` (``T`` on axis 1).

    Subclasses declare their states with :meth:`_add_sum_state` and describe their settings in
    :meth:`_config`; everything else (growing ``T``, merging, syncing, saving) is here.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}

    def _add_sum_state(self, name: str, rows: tuple[int, ...], dtype: torch.dtype) -> None:
        """A state of shape ``(*rows[:1], T, *rows[1:])``, summed across updates and ranks."""
        self._state_shapes[name] = (rows, dtype)
        self.add_state(name, self._zeros(name, 0), dist_reduce_fx="sum", persistent=True)

    def _zeros(self, name: str, lead_times: int, device: torch.device | None = None) -> Tensor:
        rows, dtype = self._state_shapes[name]
        return torch.zeros(rows[0], lead_times, *rows[1:], dtype=dtype, device=device)

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ lead times

    @property
    def lead_times(self) -> int:
        """Number of lead times ``T`` (0 before the first update)."""
        return int(getattr(self, next(iter(self._state_shapes))).shape[1])

    def _ensure_lead_times(self, lead_times: int) -> None:
        if self.lead_times == 0:
            for name in self._state_shapes:
                device = getattr(self, name).device
                setattr(self, name, self._zeros(name, lead_times, device))
        elif lead_times != self.lead_times:
            raise ValueError(
                f"expected {self.lead_times} lead times (T) as in earlier updates, got {lead_times}"
            )

    def _add_to_states(self, increments: dict[str, Tensor]) -> None:
        """Add one batch's (or another metric's) sums, moved to the states' device."""
        self._ensure_lead_times(int(next(iter(increments.values())).shape[1]))
        for name, increment in increments.items():
            state = getattr(self, name)
            setattr(self, name, state + increment.to(state.device))

    # ------------------------------------------------------------------ chaining

    def _wrap_update(self, update: Callable) -> Callable:
        wrapped = super()._wrap_update(update)

        @functools.wraps(update)
        def chained(*args: Any, **kwargs: Any) -> LeadTimeMetric:
            wrapped(*args, **kwargs)
            return self

        return chained

    def reset(self) -> None:
        """Drop all accumulated state (and the number of lead times)."""
        super().reset()
        self._to_sync = self.sync_on_compute

    # ------------------------------------------------------------------ merging

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add the states of another metric of this class and settings (or a dict of states, as
        :attr:`metric_state` gives them) to this one's."""
        if isinstance(incoming_state, Metric):
            if not isinstance(incoming_state, type(self)):
                raise TypeError(
                    f"can only merge a {type(self).__name__}, got {type(incoming_state).__name__}"
                )
            if incoming_state._config() != self._config():
                raise ValueError(
                    f"cannot merge {type(self).__name__} with different settings: "
                    f"{self._config()} and {incoming_state._config()}"
                )
            updates = incoming_state._update_count
            incoming_state = incoming_state.metric_state
        elif isinstance(incoming_state, dict):
            updates = 1
        else:
            raise TypeError(
                f"can only merge a {type(self).__name__} or a dict of its states, "
                f"got {type(incoming_state).__name__}"
            )
        self._reduce_states(incoming_state)
        self._update_count += updates
        self._computed = None

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        # torchmetrics' version adds tensors of equal shapes; here either side may have T = 0
        missing = set(self._state_shapes) - set(incoming_state)
        if missing:
            raise ValueError(f"incoming state lacks {sorted(missing)}")
        states = {name: torch.as_tensor(incoming_state[name]) for name in self._state_shapes}
        if next(iter(states.values())).shape[1]:
            self._add_to_states(states)

    def merge(self, other: Self) -> Self:
        """Add another metric's state (same class and settings) in place; ``a + b`` returns
        the sum as a new metric.

        Returns:
            ``self``, for chaining.
        """
        self.merge_state(other)
        return self

    def __add__(self, other: Any) -> Any:
        return copy.deepcopy(self).merge(other)

    # ------------------------------------------------------------------ distributed

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        group = process_group or self.process_group
        lead_times = _agree_on_lead_times(self.lead_times, group)
        if not lead_times:
            return
        self._ensure_lead_times(lead_times)
        device = getattr(self, next(iter(self._state_shapes))).device
        collective = _collective_device(group)
        for name in self._state_shapes:
            setattr(self, name, getattr(self, name).to(collective))
        super()._sync_dist(dist_sync_fn, process_group)
        for name in self._state_shapes:
            setattr(self, name, getattr(self, name).to(device))

    def reduce_(self, group: Any | None = None) -> Self:
        """Sum the state over the ranks of ``group`` in place, so that every rank holds (and
        :meth:`compute` gives) the metrics of all ranks' data.

        :meth:`compute` already syncs by itself (torchmetrics' ``sync_on_compute``) without
        changing the local state; this is for code that wants the summed state. A no-op
        unless ``torch.distributed`` is initialised. Every rank must call it, once per
        evaluation, with metrics of the same settings; ranks that saw no data take part
        too. Afterwards :meth:`compute` does not sync again (until :meth:`reset`).

        Returns:
            ``self``, for chaining.
        """
        if _distributed():
            self._sync_dist(gather_all_tensors, group)
            self._computed = None
            self._to_sync = False
        return self

    # ------------------------------------------------------------------ saving

    def state_dict(  # type: ignore[override]  # as torchmetrics' Metric.state_dict
        self,
        destination: dict[str, Any] | None = None,
        prefix: str = "",
        keep_vars: bool = False,
    ) -> dict[str, Any]:
        """The states (persistent) and the settings (``"config"``), for ``torch.save``."""
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        state[prefix + _CONFIG_KEY] = self._config()
        return state

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        config = state_dict.pop(prefix + _CONFIG_KEY, None)
        if config is not None and config != self._config():
            raise ValueError(
                f"state was saved with settings {config}, "
                f"this {type(self).__name__} has {self._config()}"
            )
        lead_times = set()
        for name, (rows, dtype) in self._state_shapes.items():
            key = prefix + name
            if key in state_dict:
                value = torch.as_tensor(state_dict[key])
                if value.dim() != len(rows) + 1 or (value.shape[0], *value.shape[2:]) != rows:
                    raise ValueError(
                        f"state {name!r} must have shape {(rows[0], 'T', *rows[1:])}, "
                        f"got {tuple(value.shape)}"
                    )
                lead_times.add(value.shape[1])
                state_dict[key] = value.to(dtype=dtype, device=getattr(self, name).device)
        if len(lead_times) > 1:
            raise ValueError(f"states hold different numbers of lead times: {sorted(lead_times)}")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._computed = None
        self._update_count = int(bool(lead_times and max(lead_times)))
