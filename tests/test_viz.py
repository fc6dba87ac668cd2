"""Figures and animations: real PNG/GIF files of the promised sizes and frame counts."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from convlstm.viz import frame_png, lead_time_figure, sequence_gif, to_uint8


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_sequence_gif_frames_and_size() -> None:
    rng = np.random.default_rng(0)
    inputs, truth = rng.random((3, 1, 16, 20)), rng.random((4, 1, 16, 20))
    gif = _open(sequence_gif(inputs, truth, truth[::-1]))
    assert gif.format == "GIF"
    assert gif.n_frames == 3 + 4
    # four panels of 20x16 enlarged 8x (to >= 128 px), 4 px gaps, an 18 px label strip
    assert gif.size == (4 * 160 + 5 * 4, 128 + 18 + 4)
    gif.seek(4)  # the second forecast frame: the truth panel shows truth[1]
    rgb = np.asarray(gif.convert("RGB"))
    panel = rgb[18 : 18 + 128, 4 + 164 : 4 + 164 + 160]
    expected = to_uint8(truth[1, 0]).repeat(8, axis=0).repeat(8, axis=1)
    assert np.abs(panel[..., 0].astype(int) - expected).max() <= 8  # GIF palette rounding


def test_sequence_gif_rgb_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    frames = rng.random((5, 3, 8, 8))
    first = sequence_gif(frames[:2], frames[2:], frames[2:], vmin=0, vmax=2)
    assert first == sequence_gif(frames[:2], frames[2:], frames[2:], vmin=0, vmax=2)
    assert _open(first).n_frames == 5


def test_sequence_gif_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="of one shape"):
        sequence_gif(np.zeros((2, 1, 8, 8)), np.zeros((3, 1, 8, 8)), np.zeros((2, 1, 8, 8)))


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_frame_png(channels: int, mode: str) -> None:
    frame = np.linspace(0, 1, channels * 6 * 10).reshape(channels, 6, 10)
    image = _open(frame_png(frame))
    assert (image.format, image.mode, image.size) == ("PNG", mode, (10, 6))
    pixels = np.asarray(image)
    assert np.array_equal(pixels.reshape(6, 10, channels).transpose(2, 0, 1), to_uint8(frame))


def test_lead_time_figure_is_deterministic_png() -> None:
    curves = {"model": [1.0, None, 3.0], "persistence": [2.0, 2.5, 3.5]}
    png = lead_time_figure(curves, title="MSE / frame", ylabel="MSE")
    assert png == lead_time_figure(curves, title="MSE / frame", ylabel="MSE")
    image = _open(png)
    assert (image.format, image.size) == ("PNG", (600, 400))


def test_to_uint8_range() -> None:
    assert to_uint8(np.array([0.0, 5.0, 10.0]), vmax=10).tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="vmax"):
        to_uint8(np.zeros(2), vmin=1, vmax=1)


def test_sequence_gif_without_truth() -> None:
    rng = np.random.default_rng(2)
    gif = _open(sequence_gif(rng.random((2, 1, 16, 16)), None, rng.random((3, 1, 16, 16))))
    assert gif.n_frames == 5
    assert gif.size == (2 * 128 + 3 * 4, 128 + 18 + 4)  # input | forecast
