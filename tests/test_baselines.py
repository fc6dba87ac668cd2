"""Tests for convlstm.baselines: shapes and values, registry, the optical-flow skip path,
and persistence metrics against numpy."""

from __future__ import annotations

import doctest
import sys

import numpy as np
import pytest
import torch

from convlstm import baselines
from convlstm.baselines import (
    BaselineUnavailableError,
    available_baselines,
    climatology,
    get_baseline,
    list_baselines,
    optical_flow,
    persistence,
    zeros,
)
from convlstm.metrics import score_forecasts


def _inputs(shape: tuple[int, ...] = (2, 4, 3, 8, 8)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture
def without_pysteps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import pysteps`` fail, as on a machine without the nowcast extra."""
    monkeypatch.setitem(sys.modules, "pysteps", None)


def test_persistence_repeats_the_last_frame() -> None:
    inputs = _inputs()
    forecast = persistence(inputs, 5)
    assert forecast.shape == (2, 5, 3, 8, 8) and forecast.dtype == torch.float64
    for t in range(5):
        assert torch.equal(forecast[:, t], inputs[:, -1])
    forecast[:, 0] += 1  # a copy: the inputs are left alone
    assert torch.equal(persistence(inputs, 1)[:, 0], inputs[:, -1])


def test_zeros_and_climatology() -> None:
    inputs = _inputs()
    assert torch.equal(zeros(inputs, 3), torch.zeros(2, 3, 3, 8, 8, dtype=torch.float64))
    mean = climatology(inputs, 3)
    torch.testing.assert_close(mean, inputs.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1, -1))
    assert torch.equal(
        climatology(inputs, 2, field=0.25), torch.full((2, 2, 3, 8, 8), 0.25).double()
    )
    field = torch.arange(3.0).reshape(3, 1, 1)  # one value per channel
    by_channel = climatology(inputs, 2, field=field)
    assert torch.equal(by_channel[1, 1, 2], torch.full((8, 8), 2.0).double())
    assert torch.equal(
        climatology(inputs, 1, field=np.ones((8, 8)))[0, 0], torch.ones(3, 8, 8).double()
    )
    with pytest.raises(
        ValueError, match=r"broadcastable to \(C, H, W\) = \(3, 8, 8\).*\(4, 8, 8\)"
    ):
        climatology(inputs, 2, field=torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="broadcastable"):
        climatology(inputs, 2, field=torch.zeros(2, 1, 3, 8, 8))


def test_persistence_metrics_match_numpy() -> None:
    generator = torch.Generator().manual_seed(1)
    frames = torch.rand(3, 7, 1, 8, 8, generator=generator)  # 4 inputs, 3 targets
    inputs, target = frames[:, :4], frames[:, 4:]
    result = score_forecasts(persistence(inputs, 3), target, data_range=1.0, thresholds=(0.5,))

    last, truth = inputs[:, -1:].numpy().astype(np.float64), target.numpy().astype(np.float64)
    error = last - truth  # broadcast over the 3 lead times
    np.testing.assert_allclose(
        result["mse_frame"]["per_lead_time"], (error**2).sum(axis=(2, 3, 4)).mean(0), rtol=1e-6
    )
    np.testing.assert_allclose(result["mae_pixel"]["overall"], np.abs(error).mean(), rtol=1e-6)
    psnr = 10 * np.log10(1.0 / (error**2).mean(axis=(2, 3, 4)))
    np.testing.assert_allclose(result["psnr"]["per_lead_time"], psnr.mean(0), rtol=1e-5)
    forecast, observed = np.broadcast_to(last, truth.shape) >= 0.5, truth >= 0.5
    hits = np.sum(forecast & observed, axis=(0, 2, 3, 4))
    misses = np.sum(~forecast & observed, axis=(0, 2, 3, 4))
    false_alarms = np.sum(forecast & ~observed, axis=(0, 2, 3, 4))
    np.testing.assert_allclose(
        result["csi@0.5"]["per_lead_time"], hits / (hits + misses + false_alarms)
    )


def test_registry() -> None:
    assert list_baselines() == ["persistence", "zeros", "climatology", "optical_flow", "sprog"]
    assert get_baseline("persistence") is persistence
    assert get_baseline("climatology") is climatology
    with pytest.raises(ValueError, match="persistence, zeros, climatology, optical_flow, sprog"):
        get_baseline("persistance")


def test_optical_flow_skip_path_without_pysteps(without_pysteps: None) -> None:
    assert available_baselines() == ["persistence", "zeros", "climatology"]
    with pytest.raises(BaselineUnavailableError, match=r"convlstm\[nowcast\]"):
        get_baseline("optical_flow")
    with pytest.raises(ImportError, match=r"install convlstm\[nowcast\]"):
        optical_flow(_inputs(), 2)


@pytest.mark.parametrize("forecaster", [persistence, zeros, climatology, optical_flow])
def test_bad_arguments_raise_clear_errors(forecaster) -> None:
    inputs = _inputs()
    for horizon in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="horizon must be a positive int"):
            forecaster(inputs, horizon)
    with pytest.raises(ValueError, match=r"inputs must be a non-empty 5-D.*\(4, 3, 8, 8\)"):
        forecaster(inputs[0], 2)
    with pytest.raises(TypeError, match=r"inputs must be a torch\.Tensor"):
        forecaster(inputs.numpy(), 2)
    with pytest.raises(TypeError, match="floating-point"):
        forecaster(inputs.long(), 2)


def test_optical_flow_needs_two_input_frames() -> None:
    with pytest.raises(ValueError, match="at least 2 input frames"):
        optical_flow(_inputs((1, 1, 1, 8, 8)), 2)


def test_optical_flow_follows_the_motion() -> None:
    pytest.importorskip("pysteps")
    pytest.importorskip("cv2")
    assert "optical_flow" in available_baselines()
    # A smooth random rain field moving one pixel to the right per frame.
    generator = np.random.default_rng(0)
    field = generator.random((64, 64))
    for axis in (0, 1):
        field = (field + np.roll(field, 1, axis) + np.roll(field, -1, axis)) / 3
    field = np.clip(field - 0.45, 0, None) * 100
    frames = np.stack([np.roll(field, shift, axis=1) for shift in range(6)])
    sequence = torch.from_numpy(frames).float().reshape(1, 6, 1, 64, 64)
    inputs, target = sequence[:, :4], sequence[:, 4:]

    forecast = get_baseline("optical_flow")(inputs, 2)
    assert forecast.shape == (1, 2, 1, 64, 64) and forecast.dtype == torch.float32
    interior = (..., slice(8, -8), slice(8, -8))
    flow_error = (forecast - target)[interior].abs().mean()
    persistence_error = (persistence(inputs, 2) - target)[interior].abs().mean()
    assert flow_error < 0.5 * persistence_error


def test_docstring_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    # the examples register a baseline: keep it out of the other tests
    monkeypatch.setattr(baselines, "_REGISTRY", baselines._REGISTRY.copy())
    outcome = doctest.testmod(baselines, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert outcome.attempted > 0 and outcome.failed == 0
