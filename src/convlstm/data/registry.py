"""Build datasets by name, e.g. from a training config: :func:`get_dataset`, :func:`list_datasets`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from .archive import RadarArchiveDataset
from .arrays import ArrayDataset
from .moving_mnist import MovingMNIST, MovingMNISTFile
from .radar import SyntheticRadar

DatasetFactory = Callable[..., Dataset[Any]]

_REGISTRY: dict[str, DatasetFactory] = {
    "moving_mnist": MovingMNIST,
    "moving_mnist_file": MovingMNISTFile,
    "radar": SyntheticRadar,
    "array": ArrayDataset,
}


def _normalise(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    return name.strip().lower().replace("-", "_")


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted.

    Example:
        >>> [name for name in list_datasets() if "mnist" in name]
        ['moving_mnist', 'moving_mnist_file']
    """
    return sorted(_REGISTRY)


def get_dataset(name: str, **kwargs: Any) -> Dataset[Any]:
    """Build the dataset registered as ``name`` with keyword arguments ``kwargs``.

    Names are case-insensitive and ``-`` equals ``_``: ``"moving_mnist"``
    (:class:`MovingMNIST`), ``"moving_mnist_file"`` (:class:`MovingMNISTFile`),
    ``"radar"`` (:class:`SyntheticRadar`), ``"array"`` (:class:`ArrayDataset`), plus any
    added with :func:`register_dataset`.

    Raises:
        ValueError: unknown name (the message lists the valid ones).

    Example:
        >>> ds = get_dataset("moving_mnist", num_samples=4, digits="val")
        >>> len(ds), ds[0][0].shape
        (4, torch.Size([10, 1, 64, 64]))
    """
    key = _normalise(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    return _REGISTRY[key](**kwargs)


def register_dataset(name: str, factory: DatasetFactory, *, overwrite: bool = False) -> None:
    """Make ``factory(**kwargs)`` available as ``get_dataset(name, **kwargs)``.

    Raises:
        ValueError: ``name`` is taken and ``overwrite`` is false.

    Example:
        >>> def tiny(**kwargs):
        ...     return MovingMNIST(num_samples=2, **kwargs)
        >>> register_dataset("tiny_mnist", tiny, overwrite=True)
        >>> len(get_dataset("tiny_mnist", seed=3))
        2
    """
    key = _normalise(name)
    if not key:
        raise ValueError("dataset name must not be empty")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    if key in _REGISTRY and not overwrite:
        raise ValueError(
            f"dataset {key!r} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[key] = factory


register_dataset("radar_archive", RadarArchiveDataset)
