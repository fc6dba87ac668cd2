"""Masks (radar pixels without data): the training loss and every metric ignore them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlstm.evaluation import evaluate
from convlstm.metrics import ContingencyTable, ForecastMetrics
from convlstm.training.losses import forecast_loss as _loss


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(2, 3, 1, 16, 16, generator=g) * 8
    target = torch.rand(2, 3, 1, 16, 16, generator=g) * 8
    mask = (torch.rand(2, 3, 1, 16, 16, generator=g) > 0.2).float()
    return pred, target, mask


def _garbage(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(mask > 0, x, torch.full_like(x, value))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["per_lead_time"] == pytest.approx(b[name]["per_lead_time"], rel=1e-9), name


def test_masked_pixels_change_no_metric() -> None:
    pred, target, mask = _pair()
    kwargs = {"data_range": 8.0, "clip": None, "thresholds": (0.5, 2.0, 5.0)}
    clean = ForecastMetrics(**kwargs).update(pred, target, mask).compute()
    for value in (1e6, -50.0):
        dirty = ForecastMetrics(**kwargs).update(
            _garbage(pred, mask, value), _garbage(target, mask, -value), mask
        )
        _same(clean, dirty.compute())
    # independent reference: numpy over the valid pixels only
    p, t, m = (x.double().numpy() for x in (pred, target, mask))
    valid = m > 0
    assert clean["mse_pixel"]["overall"] == pytest.approx(np.mean((p - t)[valid] ** 2), rel=1e-9)
    assert clean["mae_pixel"]["overall"] == pytest.approx(np.mean(np.abs(p - t)[valid]), rel=1e-9)
    frame_sse = ((p - t) ** 2 * valid).sum(axis=(2, 3, 4))  # (B, T)
    assert clean["mse_frame"]["per_lead_time"] == pytest.approx(frame_sse.mean(axis=0).tolist())
    psnr = 10 * np.log10(64.0 / (frame_sse / valid.sum(axis=(2, 3, 4))))
    assert clean["psnr"]["overall"] == pytest.approx(psnr.mean(), rel=1e-6)
    f, o = (p >= 2.0) & valid, (t >= 2.0) & valid
    hits, misses, false = (f & o).sum(), (~f & o).sum(), (f & ~o).sum()
    assert clean["csi@2"]["overall"] == pytest.approx(hits / (hits + misses + false), rel=1e-9)


def test_contingency_table_ignores_masked_pixels() -> None:
    pred, target, mask = _pair(1)
    clean = ContingencyTable((1.0, 4.0)).update(pred, target, mask).counts
    dirty = ContingencyTable((1.0, 4.0)).update(
        _garbage(pred, mask, 99.0), _garbage(target, mask, 99.0), mask
    )
    assert torch.equal(clean, dirty.counts)
    assert int(clean[0].sum()) == int(mask.sum())  # every valid pixel counted once
    with pytest.raises(ValueError, match="mask of shape"):
        ContingencyTable(1.0).update(pred, target, mask[:, :2])


@pytest.mark.parametrize("kind", ["mse", "l1", "mse+l1", "bce"])
def test_masked_pixels_change_neither_loss_nor_its_gradient(kind: str) -> None:
    pred, target, mask = _pair(2)
    if kind == "bce":
        pred, target = pred / 8, target / 8
    losses, grads = [], []
    for value in (None, 1e4):
        p = (pred if value is None else _garbage(pred, mask, 0.5)).clone().requires_grad_()
        t = target if value is None else _garbage(target, mask, value)
        loss = _loss(kind, p, t, mask)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(p.grad * mask)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.allclose(grads[0], grads[1])
    if kind == "mse":
        valid = mask.numpy() > 0
        expected = np.mean((pred.double().numpy() - target.double().numpy())[valid] ** 2)
        assert losses[0] == pytest.approx(expected, rel=1e-5)
    if kind == "l1":
        valid = mask.numpy() > 0
        expected = np.mean(np.abs(pred.double().numpy() - target.double().numpy())[valid])
        assert losses[0] == pytest.approx(expected, rel=1e-5)


def test_evaluate_ignores_masked_pixels_and_states_their_fraction() -> None:
    g = torch.Generator().manual_seed(3)
    items = []
    for _ in range(3):
        frames = torch.rand(5, 1, 16, 16, generator=g) * 5
        mask = torch.ones(5, 1, 16, 16)
        mask[:, :, :4] = 0  # a quarter of every frame has no data
        items.append((frames[:3], frames[3:], mask))
    last = lambda x, horizon: x[:, -1:].expand(-1, horizon, -1, -1, -1)  # noqa: E731
    kwargs = {"baselines": {}, "progress": False, "thresholds": [1.0], "clip": None}
    clean = evaluate(last, items, **kwargs, data_range=5.0)
    dirty_items = [(i, torch.where(m[3:] > 0, t, 1e5), m) for i, t, m in items]
    dirty = evaluate(last, dirty_items, **kwargs, data_range=5.0)
    _same(clean["forecasters"]["model"], dirty["forecasters"]["model"])
    assert clean["dataset"]["masked_fraction"] == pytest.approx(0.25)


def test_an_archive_run_trains_on_masked_data_and_its_report_states_the_fraction(
    tmp_path, zarr_archive
) -> None:
    import json

    from convlstm.cli import main

    rain = np.random.default_rng(1).gamma(0.5, 2.0, size=(10, 16, 16)).astype(np.float32)
    rain[:, :4] = np.nan  # outside the radar's range
    store, _ = zarr_archive(rain)
    out = tmp_path / "run"
    overrides = ["model.hidden_channels=[4]", "model.patch_size=4", "data.name=radar_archive",
                 f"data.options.source={store}", "data.input_len=3", "data.horizon=2",
                 "data.train_options={}",  # the recipe's 32x32 synthetic training frames
                 "data.train_samples=0", "data.val_samples=0", "optim.batch_size=2",
                 "optim.epochs=1", "optim.warmup_steps=1", "run.progress=false",
                 "run.eval_samples=2", "run.precision=fp32"]  # fmt: skip
    assert main(["train", "--config", "radar", "--out", str(out), *overrides]) == 0
    results = json.loads((out / "report" / "metrics.json").read_text())
    assert results["dataset"]["masked_fraction"] == pytest.approx(0.25)
    assert results["settings"]["units"] == "mm/h"
    assert (
        "Masked (no data): 25.00% of the target pixels"
        in (out / "report" / "summary.md").read_text()
    )
