"""Pretrained folders (convlstm.pretrained): the safetensors/JSON/card layout, refusals, the
CLI loader, the run exporter, and every shipped model scored against its card.

The card check scores a model on a few dozen fresh sequences (unseen digits / a seed the run
never drew) and fails when its mean MSE/frame exceeds the card's by more than three standard
errors of the difference (both the fresh sample's and the card's own, from the spread measured
here): trained weights cannot silently rot when the model code changes.
"""

from __future__ import annotations

import json
import math
import runpy
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm import pretrained as pt
from convlstm.checkpoint import load_model
from convlstm.config import Config, apply_overrides
from convlstm.data import get_dataset
from convlstm.data.transforms import RainTransform
from convlstm.evaluation import check_fit, evaluate_checkpoint, resolve_dataset
from convlstm.models import EncoderForecaster, create_model
from convlstm.pretrained import (
    PretrainedError,
    export_pretrained,
    list_pretrained,
    load_pretrained,
    load_pretrained_or_checkpoint,
)
from convlstm.training import train
from convlstm.training.datasets import epoch_seed

pytest.importorskip("safetensors")
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
FRESH_SEQUENCES = 32
TINY_RUN = [
    "model.hidden_channels=[4]",
    "model.patch_size=4",
    "data.options.size=32",
    "data.input_len=3",
    "data.horizon=2",
    "data.train_samples=8",
    "data.val_samples=8",
    "optim.batch_size=4",
    "optim.epochs=2",
    "optim.lr=1e-2",
    "optim.warmup_steps=1",
    "run.progress=false",
    "run.eval_samples=0",
    "run.precision=fp32",
]


def _tiny_model(seed: int = 0) -> EncoderForecaster:
    torch.manual_seed(seed)
    return EncoderForecaster(1, [4, 3], [3, 1], patch_size=2, readout_hidden=5, norm="layer")


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, parsed by hand (the format's specification)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length])


# ----------------------------------------------------------------------------- layout


def test_round_trip_is_bitwise(tmp_path):
    model = _tiny_model()
    folder = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    header = _safetensors_header(folder / "model.safetensors")
    state = model.state_dict()
    assert set(header) - {"__metadata__"} == set(state)
    for key, value in state.items():
        assert header[key]["dtype"] == "F32" and header[key]["shape"] == list(value.shape)
    loaded = EncoderForecaster.from_pretrained(folder)
    assert not loaded.training and loaded.config == model.config
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.rand(2, 3, 1, 8, 8)
    assert torch.equal(loaded(x, 4), model.eval()(x, 4))


def test_save_refuses_to_replace_and_bad_arguments(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite"):
        model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m", overwrite=True)
    with pytest.raises(ValueError, match=r"unknown card field.*colour"):
        model.save_pretrained(tmp_path / "n", card={"colour": "red"})
    with pytest.raises(ValueError, match="input_len and horizon"):
        model.save_pretrained(tmp_path / "n", data={"name": "moving_mnist"})
    assert not (tmp_path / "n").exists()


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_refuses_pickle_files(tmp_path):
    folder = _tiny_model().save_pretrained(tmp_path / "m")
    torch.save(_tiny_model().state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match=r"pickle file\(s\) pytorch_model.bin.*run code"):
        EncoderForecaster.from_pretrained(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architecture": "Transformer"}, "architecture 'Transformer'.*EncoderForecaster"),
        ({"format_version": 99}, "format version 99"),
        ({"format": "something"}, "no format="),
        ({"model_config": {"hidden_channels": [4], "colour": 1}}, "invalid model_config"),
        ({"model_config": {"in_channels": 1, "hidden_channels": [5], "patch_size": 2}}, "fit"),
    ],
)
def test_refuses_configs_it_does_not_understand(tmp_path, changes, message):
    folder = _tiny_model().save_pretrained(tmp_path / "m")
    _edit_config(folder, **changes)
    with pytest.raises(PretrainedError, match=message):
        load_pretrained(folder)


def test_refuses_damaged_weights(tmp_path):
    folder = _tiny_model().save_pretrained(tmp_path / "m")
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x10  # one flipped bit in the last tensor's data
    weights.write_bytes(bytes(raw))
    with pytest.raises(PretrainedError, match=r"corrupt.*SHA-256"):
        load_pretrained(folder)
    _edit_config(folder, weights_sha256=None)  # without the checksum: the header still parses
    weights.write_bytes(b"\xff" * 16)
    with pytest.raises(PretrainedError, match="unreadable"):
        load_pretrained(folder)


def test_names_and_create_model(tmp_path, monkeypatch):
    monkeypatch.setattr(pt, "SHIPPED_FOLDER", tmp_path / "shipped")
    with pytest.raises(PretrainedError, match=r"no trained weights ship.*'radar'.*none in this"):
        create_model("radar", pretrained=True)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope", pretrained=True)
    model = _tiny_model()
    model.save_pretrained(tmp_path / "shipped" / "radar", model_name="radar")
    assert list_pretrained() == ["radar"]
    with pytest.raises(PretrainedError, match=r"no trained weights ship.*shipped weights: radar"):
        create_model("moving_mnist", pretrained=True)
    with pytest.raises(PretrainedError, match=r"neither a folder nor.*radar"):
        load_pretrained("missing-folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match=r"no config\.json"):
        load_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="drop hidden_channels"):
        create_model("radar", pretrained=True, hidden_channels=[8])
    loaded = create_model("radar", pretrained=True)
    assert torch.equal(loaded.readout[0].weight, model.readout[0].weight)


def test_cli_loader(tmp_path):
    model = _tiny_model()
    data = {"name": "moving_mnist", "input_len": 3, "horizon": 2, "options": {"size": 32}}
    folder = model.save_pretrained(tmp_path / "m", model_name="moving_mnist", data=data)
    loaded, config = load_pretrained_or_checkpoint(pretrained=folder)
    assert config["data"] == data and config["model"]["name"] == "moving_mnist"
    assert config["model"]["hidden_channels"] == [4, 3]
    assert config["frames"] == {
        "channels": 1,
        "size": [32, 32],
        "value_range": [0.0, 1.0],
        "units": "grey level / 255 (0 black, 1 white)",
        "transform": None,
    }
    # what convlstm evaluate/predict do with a checkpoint's configuration works the same
    dataset = resolve_dataset("moving_mnist", config, num_samples=2)
    assert check_fit(loaded, dataset, "moving_mnist") == (1, 32, 32)
    unseen = get_dataset("moving_mnist", digits="val", size=32, num_samples=1)
    assert dataset.input_len == 3 and np.array_equal(dataset.digits, unseen.digits)
    bare = model.save_pretrained(tmp_path / "bare")
    with pytest.raises(PretrainedError, match="does not say what data"):
        load_pretrained_or_checkpoint(pretrained=bare)
    with pytest.raises(ValueError, match="exactly one"):
        load_pretrained_or_checkpoint()
    with pytest.raises(ValueError, match="exactly one"):
        load_pretrained_or_checkpoint(checkpoint="a.pt", pretrained=folder)


def test_radar_frames_record_the_transform(tmp_path):
    model = create_model("radar", hidden_channels=[2], patch_size=4)
    data = {
        "name": "radar",
        "input_len": 2,
        "horizon": 1,
        "options": {"transform": "log", "size": 16},
    }
    folder = model.save_pretrained(tmp_path / "r", data=data)
    frames = json.loads((folder / "config.json").read_text())["frames"]
    assert frames["transform"] == "log" and frames["value_range"] is None
    assert frames["size"] == [16, 16] and "log10(R + 0.01)" in frames["units"]


def test_exported_radar_model_works_in_mm_per_hour(tmp_path):
    run = tmp_path / "radar"
    overrides = [o for o in TINY_RUN if not o.startswith("data.options")]
    radar = ["model.name=radar", "data.name=radar", "data.options.size=16"]
    train(apply_overrides(Config(), [*overrides, *radar, "data.options.transform=log"]), run)
    folder = export_pretrained(run, tmp_path / "shipped")
    stored = json.loads((folder / "config.json").read_text())["data_transform"]
    assert stored["kind"] == "log"
    rain = get_dataset("radar", num_samples=2, size=16, input_len=3, output_len=2, seed=5)
    inputs = torch.stack([rain[i][0] for i in range(2)])  # mm/h
    reference, _ = load_model(run / "best.pt", physical_units=True)
    model, config = load_pretrained(folder, physical_units=True)
    assert model.units == "mm/h" and config["data_transform"] == stored
    torch.testing.assert_close(model(inputs, 2), reference(inputs, 2), rtol=0, atol=0)
    bare, _ = load_pretrained(folder)  # the network itself, in its training units
    log = RainTransform("log")
    assert isinstance(bare, EncoderForecaster)
    torch.testing.assert_close(log.inverse(bare(log(inputs), 2)), model(inputs, 2), rtol=0, atol=0)


# ----------------------------------------------------------------------------- card check


def _fresh_seed(config: dict) -> int:
    """A seed neither the run's epochs nor its validation drew."""
    training = config.get("training") or {}
    run_seed = training.get("run", {}).get("seed", 0)
    epochs = training.get("optim", {}).get("epochs", 0)
    used = {config["data"].get("val_seed", 1)} | {epoch_seed(run_seed, e) for e in range(epochs)}
    seed = 20_261_207
    while seed in used:
        seed += 1
    return seed


def _fresh_errors(model: EncoderForecaster, config: dict, metrics: dict) -> np.ndarray:
    """Per-sequence MSE/frame (float64: squared errors summed over a frame, averaged over the
    lead times) of ``model`` on fresh sequences of the dataset its config names."""
    data = config["data"]
    options = {**data.get("options", {}), **data.get("val_options", {})}
    if config.get("data_transform") is not None:  # a rain model: scored in mm/h, as its card
        model, _ = load_pretrained(config["folder"], physical_units=True)
        options.pop("transform", None)
    if data["name"] == "moving_mnist":
        options["digits"] = "val"  # digits the training never saw
    horizon = metrics["dataset"]["horizon"]
    dataset = get_dataset(
        data["name"],
        **{**options, "num_samples": FRESH_SEQUENCES, "seed": _fresh_seed(config)},
        input_len=data["input_len"],
        output_len=horizon,
    )
    inputs = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(len(dataset))]).float()
    targets = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])
    with torch.no_grad():
        forecast = model(inputs, horizon).double()
    low_high = config["frames"]["value_range"]
    if low_high is not None:
        forecast = forecast.clamp(*low_high)
    squared = (forecast - targets.double()) ** 2
    return squared.sum(dim=(2, 3, 4)).mean(dim=1).numpy()


def check_against_card(folder: str | Path) -> None:
    """Fail when the model of ``folder`` scores worse on fresh data than its card says, by more
    than sampling noise."""
    model, config = load_pretrained(folder)
    config["folder"] = folder
    metrics_path = pt._resolve(folder) / "metrics.json"
    assert metrics_path.is_file(), f"{folder} has no metrics.json: its card states no score"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    card = metrics["forecasters"]["model"]["mse_frame"]["overall"]
    card_n = metrics["dataset"]["num_sequences"]
    errors = _fresh_errors(model, config, metrics)
    spread = errors.std(ddof=1)
    noise = math.sqrt(spread**2 / len(errors) + spread**2 / card_n)
    assert errors.mean() <= card + 3 * noise, (
        f"{folder}: MSE/frame {errors.mean():.2f} on {len(errors)} fresh sequences, worse than "
        f"the card's {card:.2f} (n={card_n}) by more than 3 standard errors ({noise:.2f})"
    )


SHIPPED = list_pretrained()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_matches_its_card(name):
    check_against_card(name)
    card = (pt.SHIPPED_FOLDER / name / "README.md").read_text(encoding="utf-8")
    for field in ("data", "compute", "command", "seed"):
        assert f"- {field}: " in card, f"the card of {name} does not state its {field}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny ``convlstm train`` run folder with its final report, as the CLI leaves it."""
    run = tmp_path_factory.mktemp("run") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a shared machine
    train(apply_overrides(Config(), TINY_RUN), run)
    evaluate_checkpoint(
        run / "best.pt",
        "moving_mnist",
        run / "report",
        num_samples=64,
        num_gifs=0,
        progress=False,
        device="cpu",
    )
    torch.set_num_threads(threads)
    return run


def test_export_and_card_check(tiny_run, tmp_path):
    card = {"title": "Tiny", "data": "Moving MNIST 32x32", "compute": "1 CPU core, seconds"}
    folder = export_pretrained(tiny_run, tmp_path / "tiny", card=card)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]
    trained, run_config = load_model(tiny_run / "best.pt")
    model, config = load_pretrained(folder)
    x = torch.rand(2, 3, 1, 32, 32)
    assert torch.equal(model(x, 2), trained(x, 2))
    assert config["data"] == run_config["data"] and config["model_name"] == "moving_mnist"
    assert [row["epoch"] for row in config["training"]["curve"]] == [1, 2]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads((tiny_run / "report" / "metrics.json").read_text())
    text = (folder / "README.md").read_text()
    score = metrics["forecasters"]["model"]["mse_frame"]["overall"]
    assert text.startswith("---\nlibrary_name: convlstm\n") and "# Tiny" in text
    assert "## Configuration\n\n```yaml\nmodel:\n  name: moving_mnist\n" in text
    assert f"| model | {score:.1f} |" in text and "| +2 |" in text and "persistence" in text
    assert "- seed: 0" in text and "- command: `convlstm train --config config.yaml`" in text
    check_against_card(folder)


def test_card_check_catches_rot_and_optimistic_cards(tiny_run, tmp_path):
    folder = export_pretrained(tiny_run, tmp_path / "tiny")
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    score = metrics["forecasters"]["model"]["mse_frame"]
    optimistic = {**metrics}
    optimistic["forecasters"]["model"]["mse_frame"] = {**score, "overall": score["overall"] / 2}
    metrics_path.write_text(json.dumps(optimistic))
    with pytest.raises(AssertionError, match="worse than the card"):
        check_against_card(folder)

    model, config = load_pretrained(folder)
    with torch.no_grad():
        model.readout[-1].bias.fill_(3.0)  # rotten weights: a grey haze over every frame
    metrics["forecasters"]["model"]["mse_frame"] = score
    rotten = model.save_pretrained(
        tmp_path / "rotten", data=config["data"], metrics=metrics, training=config["training"]
    )
    with pytest.raises(AssertionError, match="worse than the card"):
        check_against_card(rotten)


def test_make_pretrained_script(tiny_run, tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "scripts" / "make_pretrained.py"))["main"]
    card = tmp_path / "card.toml"
    card.write_text('title = "Tiny"\ncompute = "seconds"\n')
    out = ["--out", str(tmp_path / "shipped" / "moving_mnist")]
    assert main([str(tiny_run), "moving_mnist", "--card", str(card), *out]) == 0
    assert "# Tiny" in (tmp_path / "shipped" / "moving_mnist" / "README.md").read_text()
    capsys.readouterr()
    assert main([str(tiny_run), "moving_mnist", *out]) == 2
    assert "make_pretrained: error:" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), "radar", *out]) == 1
    assert "does not exist" in capsys.readouterr().err
