"""Forecasts for users' own frames: layouts, dtypes, image folders and ``convlstm predict``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from convlstm.checkpoint import make_checkpoint, save_checkpoint
from convlstm.cli import main
from convlstm.config import config_from_dict, config_to_dict, validate_config
from convlstm.models import EncoderForecaster
from convlstm.predict import (
    forecast_frames,
    from_model_range,
    infer_layout,
    load_frames,
    predict,
    save_forecast,
    to_model_range,
)


def tiny_checkpoint(
    path: Path, *, channels: int = 1, size: int = 32, input_len: int = 3, horizon: int = 2
) -> Path:
    """A small untrained checkpoint as training writes it (Moving MNIST configuration)."""
    config = validate_config(
        config_from_dict(
            {
                "model": {"name": "moving_mnist", "hidden_channels": [4], "in_channels": channels},
                "data": {
                    "input_len": input_len,
                    "horizon": horizon,
                    "val_samples": 3,
                    "options": {"size": size},
                },
            }
        )
    )
    torch.manual_seed(0)
    model = EncoderForecaster(**config.model.options)
    return save_checkpoint(path, make_checkpoint(model, "moving_mnist", config_to_dict(config)))


def run_command(argv: list[str]) -> int:
    """Run ``convlstm ARGV`` in-process and return its exit status."""
    return main(argv)


class Last(nn.Module):
    """Stand-in model: the last input frame, repeated (counts its calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, inputs: Tensor, horizon: int) -> Tensor:
        assert not self.training and not torch.is_grad_enabled()
        self.calls += 1
        return inputs[:, -1:].repeat(1, horizon, 1, 1, 1)


def test_predict_batches_numpy_and_tensors() -> None:
    frames = np.random.default_rng(0).random((5, 4, 1, 6, 6), dtype=np.float32)
    model = Last().train()
    out = predict(model, frames, 3, batch_size=2)
    assert model.calls == 3 and model.training  # ceil(5 / 2) batches; mode restored
    assert isinstance(out, np.ndarray) and out.shape == (5, 3, 1, 6, 6)
    np.testing.assert_array_equal(out, np.repeat(frames[:, -1:], 3, axis=1))
    tensor = predict(model, torch.from_numpy(frames).double(), 1)
    assert tensor.dtype == torch.float64 and tensor.shape == (5, 1, 1, 6, 6)
    with pytest.raises(ValueError, match=r"\(N, T_in, C, H, W\)"):
        predict(model, frames[0], 2)


@pytest.mark.parametrize(
    ("shape", "channels", "layout"),
    [
        ((7, 8, 8), 1, "THW"),
        ((7, 1, 8, 8), 1, "TCHW"),
        ((5, 7, 8, 8), 1, "NTHW"),
        ((7, 3, 8, 8), 3, "TCHW"),
        ((2, 7, 3, 8, 8), 3, "NTCHW"),
    ],
)
def test_infer_layout(shape: tuple[int, ...], channels: int, layout: str) -> None:
    assert infer_layout(shape, channels) == layout


def test_infer_layout_errors_and_override() -> None:
    assert infer_layout((4, 1, 8, 8), 1, "NTHW") == "NTHW"
    with pytest.raises(ValueError, match=r"takes 1 channel\(s\) but the frames have 3"):
        infer_layout((7, 3, 8, 8), 1, "TCHW")
    with pytest.raises(ValueError, match="takes 3 channel"):
        infer_layout((5, 7, 8, 8), 3)
    with pytest.raises(ValueError, match="needs a 5-D array"):
        infer_layout((7, 8, 8), 1, "NTCHW")
    with pytest.raises(ValueError, match="got shape"):
        infer_layout((8, 8), 1)


def test_value_ranges_round_trip() -> None:
    pixels = np.arange(256, dtype=np.uint8)
    assert np.array_equal(from_model_range(to_model_range(pixels), pixels.dtype), pixels)
    words = np.array([0, 1000, 65535], dtype=np.uint16)
    assert np.array_equal(from_model_range(to_model_range(words), words.dtype), words)
    with pytest.raises(TypeError, match="int32"):
        to_model_range(np.zeros(3, np.int32))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize(
    ("shape", "layout", "out_shape"),
    [
        ((5, 8, 8), "THW", (2, 8, 8)),
        ((5, 1, 8, 8), "TCHW", (2, 1, 8, 8)),
        ((3, 5, 8, 8), "NTHW", (3, 2, 8, 8)),
        ((3, 5, 1, 8, 8), "NTCHW", (3, 2, 1, 8, 8)),
    ],
)
def test_files_round_trip_layout_and_dtype(
    tmp_path: Path, dtype: type, shape: tuple[int, ...], layout: str, out_shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, shape).astype(dtype)
    if dtype is not np.uint8:
        array /= 255
    np.save(tmp_path / "in.npy", array)
    frames = load_frames(tmp_path / "in.npy", channels=1)
    assert frames.layout == layout and frames.dtype == dtype
    assert isinstance(frames.array, np.memmap)  # read batch by batch
    forecast = forecast_frames(Last(), frames, 2, batch_size=2)
    assert forecast.dtype == dtype
    for name in ("out.npy", "out.npz"):
        save_forecast(tmp_path / name, forecast, frames)
    out = np.load(tmp_path / "out.npy")
    with np.load(tmp_path / "out.npz") as archive:
        assert np.array_equal(archive["forecast"], out)
    assert out.shape == out_shape and out.dtype == dtype
    last = array[:, -1:] if layout.startswith("N") else array[-1:]
    expected = np.repeat(last, 2, axis=1 if layout.startswith("N") else 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)  # uint8: exact


def test_npz_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", anything=np.zeros((4, 8, 8), np.float32))
    assert load_frames(tmp_path / "one.npz", 1).array.shape == (1, 4, 1, 8, 8)
    np.savez(tmp_path / "named.npz", frames=np.zeros((4, 8, 8)), other=np.zeros(3))
    assert load_frames(tmp_path / "named.npz", 1).layout == "THW"
    np.savez(tmp_path / "many.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(ValueError, match=r"holds arrays \['a', 'b'\]"):
        load_frames(tmp_path / "many.npz", 1)


def test_unusable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_frames(tmp_path / "missing.npy", 1)
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"broken\.npy: cannot read it"):
        load_frames(tmp_path / "broken.npy", 1)
    (tmp_path / "frames.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"expected a \.npy or \.npz"):
        load_frames(tmp_path / "frames.txt", 1)
    np.save(tmp_path / "ints.npy", np.zeros((4, 8, 8), np.int64))
    with pytest.raises(TypeError, match=r"ints\.npy: .*int64"):
        load_frames(tmp_path / "ints.npy", 1)


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_image_folder(tmp_path: Path, channels: int, mode: str) -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (4, 8, 10, 3), dtype=np.uint8)
    for t in (3, 1, 0, 2):  # written out of order: read sorted by name
        Image.fromarray(pixels[t], "RGB").save(tmp_path / f"frame_{t:02d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    frames = load_frames(tmp_path, channels)
    assert frames.array.shape == (1, 4, channels, 8, 10) and frames.dtype == np.uint8
    assert frames.layout == ("THW" if channels == 1 else "TCHW")
    expected = [np.asarray(Image.fromarray(p).convert(mode)) for p in pixels]
    got = np.rint(frames.model_range()[0] * 255).astype(np.uint8)
    assert np.array_equal(got.squeeze(1) if channels == 1 else got.transpose(0, 2, 3, 1), expected)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images found"):
        load_frames(tmp_path, 1)
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (9, 8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b\.png: image size 9x8 differs from a\.png's 8x8"):
        load_frames(tmp_path, 1)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        load_frames(tmp_path, 2)


def test_cli_predict_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "in.npy", pixels)
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.npy")]
    outputs = ["--out", str(tmp_path / "out.npy"), "--png", str(tmp_path / "png")]
    outputs += ["--gif", str(tmp_path / "f.gif"), "--device", "cpu"]
    assert run_command(argv + outputs) == 0
    assert "written to" in capsys.readouterr().out
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (2, 32, 32) and out.dtype == np.uint8  # trained horizon, THW, uint8
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "sequence_0000_lead_01.png",
        "sequence_0000_lead_02.png",
    ]
    with Image.open(tmp_path / "png" / "sequence_0000_lead_02.png") as png:
        assert (png.format, png.mode, png.size) == ("PNG", "L", (32, 32))
        assert np.array_equal(np.asarray(png), out[1])
    with Image.open(tmp_path / "f.gif") as gif:
        assert gif.n_frames == 3 + 2
    # no overwrite without the flag: one line, exit 1, nothing changed
    before = (tmp_path / "out.npy").read_bytes()
    assert run_command([*argv, *outputs, "--horizon", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists (pass --overwrite" in err
    assert (tmp_path / "out.npy").read_bytes() == before
    assert run_command([*argv, *outputs, "--horizon", "4", "--overwrite"]) == 0
    assert np.load(tmp_path / "out.npy").shape == (4, 32, 32)


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda p: np.save(p, np.zeros((1, 3, 3, 32, 32), np.float32)), "takes 1 channel(s)"),
        (lambda p: np.save(p, np.zeros((3, 30, 30), np.float32)), "multiple of patch_size=8"),
        (lambda p: p.write_bytes(b"garbage"), "cannot read it as .npy"),
    ],
)
def test_cli_predict_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_input: object, message: str
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    make_input(tmp_path / "in.npy")  # type: ignore[operator]
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.npy")]
    assert run_command([*argv, "--out", str(tmp_path / "o.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("convlstm predict: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "o.npy").exists()


def test_cli_predict_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--input", "x.npy"]
    assert run_command([*argv, "--out", str(tmp_path / "o.npy")]) == 1
    err = capsys.readouterr().err
    assert "nope.pt does not exist" in err and err.count("\n") == 1


def test_a_broken_image_is_named(tmp_path: Path) -> None:
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"b\.png: cannot read it as an image"):
        load_frames(tmp_path, 1)


def test_check_device() -> None:
    from convlstm.devices import check_device

    assert check_device("cpu") == torch.device("cpu")
    assert check_device("cpu:0", "--device") == torch.device("cpu:0")
    cases = {
        "foo": "--device: expected cpu, cuda or cuda:N, got 'foo'",
        "": "--device: expected cpu, cuda or cuda:N, got ''",
        "meta": "--device: expected a device that holds data",
        "cuda:7": "--device: ",
    }
    for device, message in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            check_device(device, "--device")


def test_check_device_counts_the_cuda_devices(monkeypatch) -> None:
    from convlstm.devices import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    message = "--device: this machine has 2 CUDA device(s) (cuda:0 to cuda:1), got 'cuda:7'"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_device("cuda:7", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available on this machine, got 'cuda'"):
        check_device("cuda", "--device")


@pytest.mark.parametrize("device", ["cuda:7", "foo", "meta", ""])
def test_cli_predict_bad_device_is_not_blamed_on_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    np.save(tmp_path / "in.npy", np.zeros((3, 32, 32), np.float32))
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.npy")]
    assert run_command([*argv, "--out", str(tmp_path / "o.npy"), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convlstm predict: error: --device: ") and err.count("\n") == 1, err
    assert "checkpoint" not in err and repr(device) in err, err
    assert not (tmp_path / "o.npy").exists()


def test_cli_predict_output_under_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    np.save(tmp_path / "in.npy", np.zeros((3, 32, 32), np.float32))
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.npy")]
    assert run_command([*argv, "--out", str(blocker / "o.npy")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{blocker} is a file, not a folder" in err, err
    assert blocker.read_text() == "mine"
