"""The semi-Lagrangian readout: :func:`convlstm.models.advect` and ``advection=True``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from convlstm.models import EncoderForecaster, advect

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> EncoderForecaster:
    return EncoderForecaster(
        **{
            "hidden_channels": [6, 5],
            "kernel_size": [3, 1],
            "patch_size": 2,
            "residual": True,
            "advection": True,
            "output_activation": "identity",
            "readout": "top",
            **overrides,
        }
    )


def test_advect_matches_scipy_bilinear_interpolation() -> None:
    """Independent reference: scipy's linear interpolation at the upstream points, borders
    extended (``mode="nearest"``), in float64."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 7, 9, generator=gen, dtype=torch.float64)
    displacement = 3 * torch.randn(2, 2, 7, 9, generator=gen, dtype=torch.float64)
    ys, xs = np.mgrid[0:7, 0:9].astype(np.float64)
    expected = np.empty(frames.shape)
    for n in range(2):
        rows = ys - displacement[n, 1].numpy()
        cols = xs - displacement[n, 0].numpy()
        for c in range(3):
            expected[n, c] = ndimage.map_coordinates(
                frames[n, c].numpy(), [rows, cols], order=1, mode="nearest"
            )
    torch.testing.assert_close(advect(frames, displacement), torch.from_numpy(expected))


def test_advect_moves_whole_pixels_exactly_and_has_gradients() -> None:
    frames = torch.arange(30, dtype=torch.float64).view(1, 1, 5, 6)
    displacement = torch.zeros(1, 2, 5, 6, dtype=torch.float64)
    displacement[:, 0], displacement[:, 1] = 2.0, -1.0  # 2 right, 1 up
    moved = advect(frames, displacement)
    torch.testing.assert_close(moved[0, 0, :4, 2:], frames[0, 0, 1:, :4])
    torch.testing.assert_close(moved[0, 0, 4], frames[0, 0, 4, [0, 0, 0, 1, 2, 3]])  # border
    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    # off the pixel grid: bilinear interpolation is differentiable there
    displacement = 0.3 + 0.4 * torch.rand(1, 2, 4, 5, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(advect, (frames, displacement.requires_grad_()))
    with pytest.raises(ValueError, match=r"displacement \(N, 2, H, W\)"):
        advect(frames, displacement[:, :1])


@pytest.mark.parametrize("patch_size", [1, 2])
def test_untrained_model_is_persistence_and_moves_with_its_displacement(patch_size: int) -> None:
    torch.manual_seed(0)
    model = tiny(patch_size=patch_size)
    x = torch.rand(2, 3, 1, 8, 8)
    channels = patch_size**2
    with torch.no_grad():  # no predicted change: the forecast is the moved last frame
        model.readout.weight[:channels].zero_()
        model.readout.bias[:channels].zero_()
        torch.testing.assert_close(model(x, 3), x[:, -1:].expand(-1, 3, -1, -1, -1))
        model.readout.bias[channels] = 1.0  # one pixel to the right per step
        out = model(x, 3)
    for step in range(3):
        shift = step + 1
        torch.testing.assert_close(out[:, step, ..., shift:], x[:, -1, ..., :-shift])
        torch.testing.assert_close(
            out[:, step, ..., :shift], x[:, -1, ..., :1].expand_as(out[:, step, ..., :shift])
        )


def test_every_parameter_learns_and_the_config_round_trips() -> None:
    torch.manual_seed(0)
    model = tiny(readout_kernel=3, readout_hidden=7)
    out = model(torch.rand(2, 3, 1, 8, 8), 2, predict_inputs=True)
    assert out.shape == (2, 4, 1, 8, 8)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing
    assert model.config["advection"] is True
    again = EncoderForecaster(**model.config)
    again.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 1, 8, 8)
    torch.testing.assert_close(again(x, 4), model(x, 4))


def test_advection_needs_residual_frames() -> None:
    with pytest.raises(ValueError, match="advection=True needs residual=True"):
        tiny(residual=False, output_activation="sigmoid")
