"""``LightningDataModule``s: the data of ``convlstm train`` and ``convlstm evaluate``
(re-exported by :mod:`convlstm.lightning`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from convlstm.config import Config, ConfigError, config_from_dict, config_to_dict, validate_config
from convlstm.training import build_datasets

__all__ = ["ArrayDataModule", "ForecastDataModule", "MovingMNISTDataModule", "RadarDataModule"]


def _as_config(config: Config | Mapping[str, Any] | None) -> Config:
    """A validated :class:`Config` from a ``Config``, nested plain values, or ``None``."""
    if config is None:
        config = Config()
    elif isinstance(config, Mapping):
        config = config_from_dict(dict(config))
    elif not isinstance(config, Config):
        raise TypeError(
            f"config must be a convlstm.config.Config, a mapping of sections or None, got "
            f"{type(config).__name__}"
        )
    return validate_config(config)


class _Shard(DistributedSampler):  # type: ignore[type-arg]
    """Every ``num_replicas``-th index from ``rank``, in order, without padding: each sequence
    is scored exactly once over all ranks (Lightning's own sampler repeats some to even out)."""

    def __init__(self, dataset: Dataset[Any], num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Any:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


class ForecastDataModule(L.LightningDataModule):
    """The data of ``config`` split as ``convlstm train`` splits them
    (:func:`convlstm.training.build_datasets`), and the test data of ``convlstm evaluate``.

    Training batches hold ``optim.batch_size / world_size`` sequences per process, in the order
    of ``convlstm train`` (a ``DistributedSampler`` seeded with ``run.seed``, reshuffled every
    epoch, incomplete batches dropped); generated datasets give fresh sequences every epoch when
    the trainer reloads the loaders (``reload_dataloaders_every_n_epochs=1``, in
    :func:`trainer_options`). Validation and test batches hold ``run.eval_batch_size``
    sequences, every sequence on exactly one process. Radar archives' batches carry their
    validity mask as a third tensor (:mod:`convlstm.data.archive`); the test data of a rain
    model (one with a data transform) are read in mm/h.

    Args:
        config: the configuration (as for :class:`ForecastModule`).
        test_data: the data of ``Trainer.test``, as ``convlstm evaluate --data`` takes it (a
            generated dataset's name or a file; :func:`convlstm.evaluation.resolve_dataset`);
            default the configured dataset (its validation split).
        test_samples: score at most this many test sequences (default: all; ``val_samples``
            for generated data).
    """

    dataset_name: str | None = None
    """The dataset a subclass stands for (it replaces ``data.name``)."""

    def __init__(
        self,
        config: Config | Mapping[str, Any] | None = None,
        *,
        test_data: str | os.PathLike[str] | None = None,
        test_samples: int | None = None,
    ) -> None:
        super().__init__()
        config = _as_config(config)
        if self.dataset_name is not None:
            config.data.name = self.dataset_name
            config = validate_config(config)
        self.config = config
        self.test_data = test_data
        if test_samples is not None and test_samples < 1:
            raise ValueError(f"test_samples must be >= 1 or None, got {test_samples}")
        self.test_samples = test_samples
        self.train_set: Dataset[Any] | None = None
        self.val_set: Dataset[Any] | None = None

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train_set is None:
            self.train_set, self.val_set = build_datasets(self.config, epoch=0)

    def _loader(self, dataset: Dataset[Any], batch: int, sampler: Any) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=isinstance(sampler, DistributedSampler) and not isinstance(sampler, _Shard),
            num_workers=self.config.data.num_workers,
            generator=torch.Generator().manual_seed(self.config.run.seed),
        )

    def train_dataloader(self) -> DataLoader[Any]:
        if self.train_set is None:
            self.setup("fit")
        dataset = self.train_set
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if epoch and getattr(dataset, "seed", None) is not None:
            dataset = build_datasets(self.config, epoch)[0]  # fresh generated sequences
        assert dataset is not None
        world, rank = self._world()
        batch = self.config.optim.batch_size
        if batch % world:
            raise ConfigError(
                f"optim.batch_size={batch} must be a multiple of the number of processes ({world})"
            )
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset, world, rank, shuffle=True, seed=self.config.run.seed, drop_last=True
        )
        return self._loader(dataset, batch // world, sampler)

    def val_dataloader(self) -> DataLoader[Any]:
        if self.val_set is None:
            self.setup("fit")
        assert self.val_set is not None
        return self._loader(
            self.val_set, self.config.run.eval_batch_size, _Shard(self.val_set, *self._world())
        )

    def test_dataset(self, physical_units: bool = False) -> Dataset[Any]:
        """The data of ``Trainer.test`` (see the class docstring).

        Args:
            physical_units: read rain data without their configured transform, in mm/h
                (:func:`convlstm.units.untransformed`), as ``convlstm evaluate`` reads them for
                a rain model: :meth:`test_dataloader` asks for it when the trainer's module
                carries a data transform (``ForecastModule.data_transform``).
        """
        from convlstm.evaluation import resolve_dataset
        from convlstm.units import untransformed

        data = self.test_data
        if data is None:
            data = self.config.data.options.get("source") or self.config.data.name
        config = config_to_dict(self.config)
        if physical_units:
            config = untransformed(config)
        dataset = resolve_dataset(data, config, num_samples=self.test_samples)
        if self.test_samples is not None and self.test_samples < len(dataset):  # type: ignore[arg-type]
            dataset = Subset(dataset, range(self.test_samples))
        return dataset

    def test_dataloader(self) -> DataLoader[Any]:
        module = None if self.trainer is None else self.trainer.lightning_module
        dataset = self.test_dataset(getattr(module, "data_transform", None) is not None)
        return self._loader(
            dataset, self.config.run.eval_batch_size, _Shard(dataset, *self._world())
        )


class MovingMNISTDataModule(ForecastDataModule):
    """Moving MNIST from the bundled digits: training sequences from the training digits (fresh
    every epoch), validation and test sequences from the unseen validation digits, as in
    ``convlstm train`` and ``convlstm evaluate --data moving_mnist``."""

    dataset_name = "moving_mnist"


class RadarDataModule(ForecastDataModule):
    """Synthetic radar rain fields (``convlstm.data`` ``radar``); use an unbounded model such
    as ``model.name = "radar"`` (``configs/radar.toml``)."""

    dataset_name = "radar"


class ArrayDataModule(ForecastDataModule):
    """Your own arrays (``convlstm.data`` ``array``: ``.npy``, ``.npz``, HDF5, NetCDF, Zarr)
    from ``source``, split into training and validation sequences like ``convlstm train`` with
    ``data.name = "array"``; ``Trainer.test`` scores the validation split.

    Args:
        source: the file (or folder) holding the arrays.
        config: the configuration; ``data.options`` (``layout``, ``key``, ``scale``, ...) say
            how to read them.
        test_data, test_samples: as for :class:`ForecastDataModule`.
    """

    dataset_name = "array"

    def __init__(
        self,
        source: str | os.PathLike[str],
        config: Config | Mapping[str, Any] | None = None,
        *,
        test_data: str | os.PathLike[str] | None = None,
        test_samples: int | None = None,
    ) -> None:
        config = _as_config(config)
        config.data.options["source"] = str(Path(source))
        super().__init__(config, test_data=test_data, test_samples=test_samples)
