"""Rain in the Lightning integration, as in ``convlstm train`` / ``convlstm evaluate``: the
masks of a radar archive (pixels without data count in no loss, gradient or metric; the test
results state their fraction) and the data transform carried by the checkpoints (the model
loads in mm/h and is tested in mm/h)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset

L = pytest.importorskip(
    "lightning", reason="lightning is not installed (extra convlstm[lightning])"
)

from convlstm.checkpoint import load_checkpoint, load_model  # noqa: E402
from convlstm.config import Config, apply_overrides  # noqa: E402
from convlstm.data import RadarArchiveDataset  # noqa: E402
from convlstm.data.transforms import RainTransform  # noqa: E402
from convlstm.evaluation import evaluate_checkpoint  # noqa: E402
from convlstm.lightning import ForecastDataModule, ForecastModule, trainer_options  # noqa: E402
from convlstm.training import train  # noqa: E402
from convlstm.units import PhysicalUnits  # noqa: E402
from lightning_trainer import cpu_trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

INPUT_LEN, HORIZON, FRAMES = 3, 2, 12


def _rain() -> np.ndarray:
    """Rain rates ``(T, H, W)`` in mm/h: the top quarter outside the radar's range and 5% of
    the other pixels without data (NaN)."""
    rng = np.random.default_rng(0)
    rain = rng.gamma(0.5, 2.0, size=(FRAMES, 16, 16)).astype(np.float32)
    rain[:, :4] = np.nan
    rain[rng.random(rain.shape) < 0.05] = np.nan
    return rain


@pytest.fixture
def archive(zarr_archive) -> tuple[Path, np.ndarray]:
    rain = _rain()
    store, _ = zarr_archive(rain)
    return store, rain


def _config(store: Path, *extra: str) -> Config:
    return apply_overrides(
        Config(),
        [
            "model.name=radar",
            "model.hidden_channels=[4]",
            "data.name=radar_archive",
            f"data.options.source={store}",
            "data.options.transform=log",
            f"data.input_len={INPUT_LEN}",
            f"data.horizon={HORIZON}",
            "data.train_samples=0",
            "data.val_samples=0",
            "optim.batch_size=2",
            "optim.epochs=1",
            "optim.warmup_steps=1",
            "optim.lr=0.01",
            "optim.loss=quantile",
            "optim.quantile=0.6",
            "run.progress=false",
            "run.eval_samples=0",
            "run.eval_batch_size=3",
            "run.precision=fp32",
            "run.device=cpu",
            *extra,
        ],
    )


class _Garbage(Subset):
    """``dataset``'s items with ``value`` at the target pixels without data (a ``Subset`` of
    all of them: still the archive's data, with its transform, to ``data_transform``)."""

    def __init__(self, dataset: Dataset, value: float) -> None:
        super().__init__(dataset, range(len(dataset)))  # type: ignore[arg-type]
        self.value = value

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        inputs, targets, mask = self.dataset[index]
        valid = mask[inputs.shape[0] :] > 0
        return inputs, torch.where(valid, targets, torch.tensor(self.value)), mask

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        return [self[i] for i in indices]


class _Dirty(ForecastDataModule):
    """The archive's data with garbage at the masked target pixels of every split."""

    def __init__(self, config: Config, value: float) -> None:
        super().__init__(config)
        self.value = value

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and not isinstance(self.train_set, _Garbage):
            assert self.train_set is not None and self.val_set is not None
            self.train_set = _Garbage(self.train_set, self.value)
            self.val_set = _Garbage(self.val_set, self.value)

    def test_dataset(self, physical_units: bool = False) -> Dataset:
        return _Garbage(super().test_dataset(physical_units), self.value)


class _Record(L.Callback):
    """The loss of every step and the gradients before clipping."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grads: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.grads.append([p.grad.clone() for p in module.parameters()])


def _fit_and_test(config: Config, data: ForecastDataModule) -> tuple[ForecastModule, _Record]:
    module, record = ForecastModule(config), _Record()
    trainer = cpu_trainer(**trainer_options(config), callbacks=[record])
    trainer.fit(module, data)
    record.losses.append(float(trainer.callback_metrics["val_mse_frame"]))
    cpu_trainer().test(module, data, verbose=False)
    return module, record


def _same_scores(got: dict, expected: dict, rel: float) -> None:
    """Every forecaster's every metric equal up to ``rel`` (``None``, undefined, only where
    expected), overall and per lead time."""
    assert list(got) == list(expected)
    for name, scores in expected.items():
        assert list(got[name]) == list(scores), name
        for metric, score in scores.items():
            for key in ("overall", "per_lead_time"):
                values, wanted = got[name][metric][key], score[key]
                if not isinstance(wanted, list):
                    values, wanted = [values], [wanted]
                assert len(values) == len(wanted), (name, metric)
                for value, want in zip(values, wanted, strict=True):
                    assert (value is None) == (want is None), (name, metric, key)
                    assert want is None or value == pytest.approx(want, rel=rel, abs=1e-9), (
                        name,
                        metric,
                        key,
                    )


def _target_masked_fraction(rain: np.ndarray) -> float:
    """Fraction of NaN among the target pixels of every window of the archive (no gaps)."""
    window = INPUT_LEN + HORIZON
    starts = range(len(rain) - window + 1)
    return float(np.mean([np.isnan(rain[s + INPUT_LEN : s + window]) for s in starts]))


def test_masked_pixels_change_no_loss_gradient_or_metric(archive) -> None:
    """Garbage (huge or NaN) at the target pixels without data: the same training losses,
    gradients, weights, validation MSE and test metrics as with the archive's own fill."""
    store, rain = archive
    config = _config(store)
    clean, clean_record = _fit_and_test(config, ForecastDataModule(config))
    assert len(clean_record.grads) == 4  # 8 windows, batches of 2
    for value in (1e4, float("nan")):
        dirty, record = _fit_and_test(config, _Dirty(config, value))
        assert record.losses == pytest.approx(clean_record.losses, rel=1e-6), value
        for grads, clean_grads in zip(record.grads, clean_record.grads, strict=True):
            for grad, clean_grad in zip(grads, clean_grads, strict=True):
                torch.testing.assert_close(grad, clean_grad, rtol=1e-5, atol=1e-7)
        for key, weight in dirty.model.state_dict().items():
            torch.testing.assert_close(weight, clean.model.state_dict()[key])
        got, expected = dirty.test_results, clean.test_results
        assert got is not None and expected is not None
        assert got["settings"] == expected["settings"]
        assert got["dataset"] | {"name": ""} == expected["dataset"] | {"name": ""}
        _same_scores(got["forecasters"], expected["forecasters"], rel=1e-6)
    results = clean.test_results
    assert results is not None
    assert results["dataset"]["masked_fraction"] == pytest.approx(_target_masked_fraction(rain))
    assert results["dataset"]["num_sequences"] == FRAMES - INPUT_LEN - HORIZON + 1


def test_lightning_trains_on_an_archive_like_convlstm_train(tmp_path: Path, archive) -> None:
    """The same weights, validation MSE and stored data transform after the same steps."""
    store, _ = archive
    config = _config(store)
    result = train(config, tmp_path / "run")
    reference = load_checkpoint(result.last_checkpoint)
    module = ForecastModule(config)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = cpu_trainer(
        **trainer_options(config), enable_checkpointing=True, callbacks=[checkpoints]
    )
    trainer.fit(module, ForecastDataModule(config))
    assert trainer.global_step == reference["step"] == 4
    for key, value in reference["model_state"].items():
        torch.testing.assert_close(module.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert module.best_metric == pytest.approx(reference["best_metric"], rel=1e-5)
    assert reference["data_transform"] == {"kind": "log"}
    assert load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["data_transform"] == {"kind": "log"}


def test_checkpoint_carries_the_transform_and_loads_and_tests_in_mm_h(
    tmp_path: Path, archive
) -> None:
    store, rain = archive
    config = _config(store)
    module = ForecastModule(
        config, baselines=["persistence", "zeros"], report_dir=tmp_path / "mine", num_gifs=0
    )
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = cpu_trainer(
        **trainer_options(config), enable_checkpointing=True, callbacks=[checkpoints]
    )
    data = ForecastDataModule(config)
    trainer.fit(module, data)
    path = tmp_path / "ckpt" / "last.ckpt"
    assert module.data_transform == RainTransform("log")
    assert load_checkpoint(path)["data_transform"] == {"kind": "log"}

    # load_model: mm/h in, mm/h out = the inverse transform of the raw model's output
    physical, _ = load_model(path, physical_units=True)
    raw, _ = load_model(path)
    assert isinstance(physical, PhysicalUnits) and physical.units == "mm/h"
    mm_h = torch.from_numpy(np.nan_to_num(rain[None, :INPUT_LEN, None]))  # (1, T_in, 1, H, W)
    with torch.no_grad():
        got = physical(mm_h, HORIZON).double().numpy()
        logged = raw(torch.log10(mm_h + 0.01), HORIZON).double().numpy()
    np.testing.assert_allclose(got, np.maximum(10.0**logged - 0.01, 0.0), rtol=1e-5, atol=1e-6)

    # the module loaded back keeps the transform
    for again in (
        ForecastModule.load_from_checkpoint(path, weights_only=True),
        ForecastModule.from_convlstm_checkpoint(path),
    ):
        assert again.data_transform == RainTransform("log")

    # Trainer.test scores in mm/h exactly as convlstm evaluate scores the checkpoint
    (scores,) = cpu_trainer().test(module, data, verbose=False)
    expected = evaluate_checkpoint(
        path, store, tmp_path / "report", baselines=["persistence", "zeros"], num_gifs=0,
        progress=False,
    )  # fmt: skip
    results = module.test_results
    assert results is not None
    assert results["settings"]["units"] == "mm/h"
    assert results["settings"]["model_transform"] == {"kind": "log"}
    assert results["dataset"]["units"] == expected["dataset"]["units"] == "rain rate in mm/h"
    assert results["settings"]["thresholds"] == expected["settings"]["thresholds"]
    assert results["settings"]["data_range"] == pytest.approx(expected["settings"]["data_range"])
    assert results["dataset"]["masked_fraction"] == pytest.approx(
        expected["dataset"]["masked_fraction"]
    )
    assert results["dataset"]["masked_fraction"] == pytest.approx(_target_masked_fraction(rain))
    _same_scores(results["forecasters"], expected["forecasters"], rel=1e-5)
    assert scores["test/model/csi@2"] == pytest.approx(
        expected["forecasters"]["model"]["csi@2"]["overall"], rel=1e-5
    )
    mine = json.loads((tmp_path / "mine" / "metrics.json").read_text())
    assert mine["dataset"]["masked_fraction"] == pytest.approx(_target_masked_fraction(rain))
    summary = (tmp_path / "mine" / "summary.md").read_text()
    assert f"Masked (no data): {100 * _target_masked_fraction(rain):.2f}% of the target" in summary


def test_a_rain_model_refuses_test_data_in_its_transformed_units(archive) -> None:
    store, _ = archive
    config = _config(store)
    module = ForecastModule(config)
    module.data_transform = RainTransform("log")
    logged = RadarArchiveDataset(store, INPUT_LEN, HORIZON, transform="log")
    with pytest.raises(ValueError, match=r"must be rain rates in mm/h .* RainTransform\('log'\)"):
        cpu_trainer().test(module, DataLoader(logged, batch_size=2), verbose=False)
