"""Datasets for spatiotemporal forecasting.

Every dataset is a ``torch.utils.data.Dataset`` whose items are ``(inputs, targets)``
float32 tensors of shape ``(T_in, C, H, W)`` and ``(T_out, C, H, W)``, ready for a
standard ``DataLoader``:

* :class:`MovingMNIST`: generated Moving MNIST (bundled MNIST digits, train/val pools).
* :class:`MovingMNISTFile`: the published ``mnist_test_seq.npy``, memory-mapped;
  :func:`write_moving_mnist` writes that layout.
* :class:`SyntheticRadar`: radar-like rain-rate sequences; transforms
  :func:`rain_to_dbz` / :func:`dbz_to_rain`, :func:`log_rain` / :func:`inverse_log_rain`.
* :class:`ArrayDataset`: users' arrays and files, sliding windows, :func:`split_record`.
* :class:`RadarArchiveDataset`: real radar archives (ODIM, NetCDF, Zarr, pysteps' formats) in
  mm/h with a validity mask, over a :class:`RadarArchive`.
* :func:`get_dataset` / :func:`list_datasets` / :func:`register_dataset`: by name.

Generated datasets are pure functions of ``(seed, index)``, so DataLoader workers and
distributed ranks draw disjoint, reproducible samples without coordination.

Example:
    >>> from torch.utils.data import DataLoader
    >>> loader = DataLoader(get_dataset("moving_mnist", num_samples=8), batch_size=4)
    >>> inputs, targets = next(iter(loader))
    >>> inputs.shape, targets.shape
    (torch.Size([4, 10, 1, 64, 64]), torch.Size([4, 10, 1, 64, 64]))
"""

from .archive import RadarArchive, RadarArchiveDataset
from .arrays import ArrayDataset, split_record
from .mnist import bundled_mnist_digits, load_mnist_digits
from .moving_mnist import MovingMNIST, MovingMNISTFile, write_moving_mnist
from .radar import RadarSequence, SyntheticRadar, evolving_power_law_noise, power_law_noise
from .registry import get_dataset, list_datasets, register_dataset
from .transforms import dbz_to_rain, inverse_log_rain, log_rain, rain_to_dbz

__all__ = [
    "ArrayDataset",
    "MovingMNIST",
    "MovingMNISTFile",
    "RadarArchive",
    "RadarArchiveDataset",
    "RadarSequence",
    "SyntheticRadar",
    "bundled_mnist_digits",
    "dbz_to_rain",
    "evolving_power_law_noise",
    "get_dataset",
    "inverse_log_rain",
    "list_datasets",
    "load_mnist_digits",
    "log_rain",
    "power_law_noise",
    "rain_to_dbz",
    "register_dataset",
    "split_record",
    "write_moving_mnist",
]
