"""The training and validation data of a configuration, and the loaders over them.

Each epoch's data are a function of ``(run.seed, epoch)``: generated datasets draw fresh
sequences from a per-epoch seed, fixed ones are reshuffled by :class:`DistributedSampler` seeded
the same way, so a resumed run replays the same batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from convlstm.config import Config, ConfigError
from convlstm.registry import normalise_name

__all__ = ["batches", "build_datasets", "epoch_seed", "is_generated"]

# Arguments that select each split of a dataset, unless the configuration sets them.
_SPLITS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "moving_mnist": ({"digits": "train"}, {"digits": "val"}),
    "array": ({"split": "train"}, {"split": "val"}),
}


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 31-bit seed for epoch ``epoch`` of a run seeded ``seed``.

    >>> epoch_seed(0, 1) == epoch_seed(0, 1) != epoch_seed(0, 2)
    True
    """
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)


def is_generated(dataset: Dataset[Any]) -> bool:
    """Whether ``dataset`` generates its sequences from a seed (fresh ones every epoch)."""
    return hasattr(dataset, "seed") and hasattr(dataset, "num_samples")


def _split_options(config: Config, split: str) -> dict[str, Any]:
    data = config.data
    defaults = _SPLITS.get(normalise_name(data.name, "dataset"), ({}, {}))
    index, extra = (0, data.train_options) if split == "train" else (1, data.val_options)
    return {
        **defaults[index],
        **data.options,
        **extra,
        "input_len": data.input_len,
        "output_len": data.horizon,
    }


def build_datasets(config: Config, epoch: int = 0) -> tuple[Dataset[Any], Dataset[Any]]:
    """The training data of ``epoch`` and the validation data, checked against the model.

    Generated datasets get ``num_samples`` and a seed (per epoch for training, ``data.val_seed``
    for validation) unless ``data`` options fix them; fixed datasets are capped to
    ``train_samples`` / ``val_samples`` sequences (0: all).

    Args:
        config: a validated configuration.
        epoch: the epoch whose training sequences to draw.

    Returns:
        ``(train, val)``; each item is ``(inputs (T_in, C, H, W), targets (horizon, C, H, W))``.

    Raises:
        ConfigError: the frames do not fit the model (channels, patch size) or the dataset cannot
            be built from the options.
    """
    from convlstm.data import get_dataset

    datasets = []
    for split in ("train", "val"):
        options = _split_options(config, split)
        count = config.data.train_samples if split == "train" else config.data.val_samples
        try:
            dataset = get_dataset(config.data.name, **options)
            if is_generated(dataset):
                seed = (
                    epoch_seed(config.run.seed, epoch) if split == "train" else config.data.val_seed
                )
                dataset = get_dataset(
                    config.data.name, **{"num_samples": count, "seed": seed, **options}
                )
            elif count and count < len(dataset):  # type: ignore[arg-type]
                dataset = Subset(dataset, range(count))
            if split == "train":
                _check_frames(config, dataset)
        except ConfigError:
            raise
        except (TypeError, ValueError, OSError, IndexError, MemoryError, OverflowError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ConfigError(f"data ({split} split of {config.data.name!r}): {reason}") from None
        datasets.append(dataset)
    return datasets[0], datasets[1]


def _check_frames(config: Config, dataset: Dataset[Any]) -> None:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ConfigError("data: the training split is empty (data.train_samples, data options)")
    inputs = dataset[0][0]  # items may carry a mask after the targets
    options = config.model.options
    channels, height, width = inputs.shape[-3:]
    if channels != options["in_channels"]:
        raise ConfigError(
            f"model.in_channels={options['in_channels']} but the {config.data.name!r} frames have "
            f"{channels} channels"
        )
    patch = options["patch_size"]
    if height % patch or width % patch:
        raise ConfigError(
            f"model.patch_size={patch} must divide the frame size {height}x{width} of "
            f"{config.data.name!r}"
        )


def batches(
    dataset: Dataset[Any], indices: list[int], batch_size: int, workers: int, seed: int
) -> DataLoader[Any]:
    """A loader over ``indices`` in order; it has its own generator, so creating it does not
    draw from torch's global RNG (which resumed runs must replay exactly)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
