"""The one registry idiom (convlstm.registry) and its three uses: models, datasets, baselines."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from convlstm import baselines, models
from convlstm.baselines import available_baselines, get_baseline, list_baselines, register_baseline
from convlstm.data import get_dataset, list_datasets, register_dataset, registry
from convlstm.models import create_model, list_models, model_config, register_model
from convlstm.registry import Registry, normalise_name


def test_names_are_normalised_everywhere() -> None:
    assert normalise_name("  Moving-MNIST_file ") == "moving_mnist_file"
    with pytest.raises(TypeError, match="model name must be a string, got int"):
        normalise_name(3, "model")  # type: ignore[arg-type]
    fruit = Registry("fruit", {"Blood-Orange": 1})
    assert fruit.names() == ["blood_orange"]
    assert fruit.get("BLOOD_ORANGE") == 1 and "blood-orange" in fruit and 1 not in fruit
    assert model_config("Moving-MNIST") == model_config("moving_mnist")
    assert get_baseline("Persistence") is baselines.persistence
    assert len(get_dataset("RADAR", num_samples=1, size=16, input_len=1, output_len=1)) == 1


def test_registry_register_get_list_and_copy() -> None:
    fruit = Registry("fruit", {"pear": 2, "apple": 1})
    assert fruit.names() == ["apple", "pear"] and list(fruit) == ["apple", "pear"]
    assert Registry("fruit", {"pear": 2, "apple": 1}, sort=False).names() == ["pear", "apple"]
    assert len(fruit) == 2 and repr(fruit) == "Registry('fruit', names=['apple', 'pear'])"
    with pytest.raises(ValueError, match=r"^unknown fruit 'kiwi'; valid fruits: apple, pear$"):
        fruit.get("kiwi")
    with pytest.raises(ValueError, match="valid names: apple"):
        Registry("fruit", {"apple": 1}, valid="names").get("kiwi")
    with pytest.raises(ValueError, match=r"fruit 'pear' is already registered; pass overwrite"):
        fruit.register("Pear", 3)
    assert fruit.get("pear") == 2
    assert fruit.register("Pear", 3, overwrite=True) == "pear" and fruit.get("pear") == 3
    with pytest.raises(ValueError, match="fruit name must not be empty"):
        fruit.register("  ", 4)
    copied = fruit.copy()
    copied.register("kiwi", 5)
    assert "kiwi" in copied and "kiwi" not in fruit
    assert copied.unregister("KIWI") == 5 and "kiwi" not in copied
    with pytest.raises(ValueError, match="unknown fruit 'kiwi'"):
        copied.unregister("kiwi")


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())
    config = {"hidden_channels": [4], "patch_size": 2}
    register_model("Tiny-Net", **config)
    config["hidden_channels"].append(8)  # the registry keeps its own copy
    assert "tiny_net" in list_models()
    model = create_model("tiny_net", kernel_size=5)
    assert model.config["hidden_channels"] == [4] and model.config["kernel_size"] == [5]
    with pytest.raises(ValueError, match="model 'tiny_net' is already registered"):
        register_model("tiny_net", hidden_channels=[8])
    register_model("tiny_net", overwrite=True, hidden_channels=[8])
    assert model_config("tiny_net")["hidden_channels"] == [8]
    with pytest.raises(ValueError, match=r"unknown model parameter\(s\) hiden_channels"):
        register_model("typo", hiden_channels=[8])
    assert "typo" not in list_models()


def test_register_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baselines, "_REGISTRY", baselines._REGISTRY.copy())
    monkeypatch.setattr(baselines, "_REQUIREMENTS", dict(baselines._REQUIREMENTS))

    def last_twice(inputs: torch.Tensor, horizon: int) -> torch.Tensor:
        return inputs[:, -1:].repeat(1, horizon, 1, 1, 1) * 2

    register_baseline("Last-Twice", last_twice)
    assert list_baselines()[-1] == "last_twice" and "last_twice" in available_baselines()
    forecast = get_baseline("last_twice")(torch.ones(1, 3, 1, 4, 4), 2)
    assert forecast.shape == (1, 2, 1, 4, 4) and bool((forecast == 2).all())
    with pytest.raises(ValueError, match="baseline 'last_twice' is already registered"):
        register_baseline("last_twice", baselines.zeros)
    with pytest.raises(TypeError, match="forecaster must be callable, got str"):
        register_baseline("text", "persistence")  # type: ignore[arg-type]
    # A user's own optical flow replaces the built-in one and its need for pysteps.
    register_baseline("optical_flow", baselines.persistence, overwrite=True)
    monkeypatch.setattr(baselines, "_pysteps_methods", None)  # would fail if still required
    assert get_baseline("optical_flow") is baselines.persistence


def test_dataset_registry_uses_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    register_dataset("Zeros-Set", lambda **kwargs: [torch.zeros(1)] * kwargs["n"])
    assert "zeros_set" in list_datasets() and len(get_dataset("zeros-set", n=3)) == 3
    assert isinstance(registry._REGISTRY, Registry)


def test_registry_imports_nothing_heavy() -> None:
    # the module alone (not the convlstm package around it, which brings torch)
    code = (
        "import importlib.util, sys; import convlstm.registry as r; "
        "spec = importlib.util.spec_from_file_location('alone', r.__file__); "
        "[sys.modules.pop(m) for m in list(sys.modules) if m.split('.')[0] in {'torch', 'numpy'}]; "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'numpy'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
