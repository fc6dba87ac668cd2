"""Building datasets by name, the package's public surface, and its docstring examples."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

import convlstm.data as data
from convlstm.data import registry


def test_list_and_get_datasets_by_name():
    assert {"moving_mnist", "moving_mnist_file", "radar", "array"} <= set(data.list_datasets())
    mnist = data.get_dataset("Moving-MNIST", num_samples=3, digits="val", seed=4)
    assert isinstance(mnist, data.MovingMNIST) and len(mnist) == 3
    radar = data.get_dataset("radar", num_samples=2, size=16, input_len=2, output_len=2)
    assert isinstance(radar, data.SyntheticRadar)
    array = data.get_dataset("array", source=torch.zeros(6, 4, 4), input_len=2, output_len=2)
    assert isinstance(array, data.ArrayDataset) and len(array) == 3


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown dataset 'kth'; valid names: array, moving_mnist"
    ):
        data.get_dataset("kth")


def test_register_dataset_refuses_silent_replacement(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    data.register_dataset("tiny", lambda **kwargs: data.MovingMNIST(num_samples=1, **kwargs))
    assert len(data.get_dataset("tiny", seed=2)) == 1
    with pytest.raises(ValueError, match=r"already registered"):
        data.register_dataset("radar", data.SyntheticRadar)
    with pytest.raises(TypeError, match=r"callable"):
        data.register_dataset("nothing", None)  # type: ignore[arg-type]


def test_public_names_are_exported():
    for name in data.__all__:
        assert getattr(data, name).__doc__, f"{name} has no docstring"


@pytest.mark.parametrize(
    "module",
    ["", ".mnist", ".moving_mnist", ".radar", ".arrays", ".transforms", ".registry"],
)
def test_docstring_examples_run(module, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    mod = importlib.import_module("convlstm.data" + module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
