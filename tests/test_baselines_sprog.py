"""pysteps' S-PROG baseline on a small advecting field, and pysteps' banner kept quiet."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from convlstm.baselines import available_baselines, get_baseline, list_baselines, persistence

pytestmark = pytest.mark.skipif(
    "sprog" not in available_baselines(), reason="pysteps and OpenCV are not installed"
)


def advecting_cells(steps: int, size: int = 48) -> torch.Tensor:
    """Two Gaussian rain cells (peak 8 and 4 mm/h) moving 2 pixels right per step."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    frames = []
    for t in range(steps):
        cell = 8 * np.exp(-((yy - 18) ** 2 + (xx - 8 - 2 * t) ** 2) / (2 * 4.0**2))
        cell += 4 * np.exp(-((yy - 32) ** 2 + (xx - 14 - 2 * t) ** 2) / (2 * 3.0**2))
        frames.append(cell)
    return torch.tensor(np.stack(frames), dtype=torch.float32)[None, :, None]


def test_sprog_follows_the_motion():
    frames = advecting_cells(8)
    inputs, targets = frames[:, :4], frames[:, 4:]
    forecast = get_baseline("sprog")(inputs, 4)
    assert forecast.shape == targets.shape and forecast.dtype == inputs.dtype
    assert (forecast >= 0).all()
    for lead in range(4):
        error = ((forecast[:, lead] - targets[:, lead]) ** 2).mean()
        stays = ((persistence(inputs, 4)[:, lead] - targets[:, lead]) ** 2).mean()
        assert error < 0.2 * stays, f"lead {lead + 1}: S-PROG {error:.4f}, persistence {stays:.4f}"
    # the rain moved: the forecast's centre of mass is ~2 px/step right of the last input's
    xx = torch.arange(48.0)
    centre = lambda f: float((f.sum(dim=-2) * xx).sum() / f.sum())  # noqa: E731
    assert centre(forecast[0, 3, 0]) - centre(inputs[0, -1, 0]) == pytest.approx(8.0, abs=1.0)


def test_sprog_dry_inputs_and_errors():
    dry = torch.zeros(2, 3, 1, 32, 32)
    assert get_baseline("sprog")(dry, 2).abs().sum() == 0
    with pytest.raises(ValueError, match="T_in >= 3"):
        get_baseline("sprog")(torch.rand(1, 2, 1, 32, 32), 2)
    with pytest.raises(ValueError, match="negative"):
        get_baseline("sprog")(-torch.rand(1, 3, 1, 32, 32), 2)
    assert "sprog" in list_baselines()


def test_no_pysteps_banner_on_any_run():
    code = (
        "import torch\n"
        "from convlstm.baselines import optical_flow, sprog\n"
        "x = torch.rand(1, 3, 1, 32, 32) * 5\n"
        "optical_flow(x, 2); sprog(x, 2); print('done')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "done\n", out.stdout
