"""Build datasets by name, e.g. from a training config: :func:`get_dataset`, :func:`list_datasets`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from convlstm.registry import Registry

from .archive import RadarArchiveDataset
from .arrays import ArrayDataset
from .moving_mnist import MovingMNIST, MovingMNISTFile
from .radar import SyntheticRadar

DatasetFactory = Callable[..., Dataset[Any]]

_REGISTRY: Registry[DatasetFactory] = Registry(
    "dataset",
    {
        "moving_mnist": MovingMNIST,
        "moving_mnist_file": MovingMNISTFile,
        "radar": SyntheticRadar,
        "array": ArrayDataset,
    },
    valid="names",
)


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted.

    Example:
        >>> [name for name in list_datasets() if "mnist" in name]
        ['moving_mnist', 'moving_mnist_file']
    """
    return _REGISTRY.names()


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
    return _REGISTRY.get(name)(**kwargs)


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
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    _REGISTRY.register(name, factory, overwrite=overwrite)


register_dataset("radar_archive", RadarArchiveDataset)
