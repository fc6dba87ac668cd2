"""The Lightning integration trains, validates, tests and checkpoints like ``convlstm train`` and
``convlstm evaluate``: same weights after the same steps, same metrics (also under DDP with two
CPU processes), checkpoints that load both ways."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

L = pytest.importorskip(
    "lightning", reason="lightning is not installed (extra convlstm[lightning])"
)

from convlstm.checkpoint import load_checkpoint, load_model  # noqa: E402
from convlstm.config import Config, apply_overrides  # noqa: E402
from convlstm.evaluation import evaluate, resolve_dataset  # noqa: E402
from convlstm.lightning import (  # noqa: E402
    ArrayDataModule,
    ForecastModule,
    MovingMNISTDataModule,
    RadarDataModule,
    trainer_options,
)
from convlstm.training import NonFiniteLossError, train  # noqa: E402
from lightning_trainer import cpu_trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model.hidden_channels=[4]",
    "model.readout_hidden=0",
    "data.options.size=32",
    "data.options.num_digits=1",
    "data.input_len=3",
    "data.horizon=2",
    "data.train_samples=8",
    "data.val_samples=5",
    "optim.batch_size=4",
    "optim.epochs=2",
    "optim.warmup_steps=1",
    "run.progress=false",
    "run.eval_samples=0",
    "run.eval_batch_size=2",
    "run.precision=fp32",
    "run.device=cpu",
]


def _config(*extra: str) -> Config:
    return apply_overrides(Config(), [*TINY, *extra])


def test_import_convlstm_leaves_lightning_out_and_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        import convlstm, convlstm.training, convlstm.evaluation
        assert "lightning" not in sys.modules, "import convlstm imported lightning"

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "lightning" or name.startswith("lightning."):
                    raise ImportError("No module named 'lightning'")
        sys.meta_path.insert(0, Block())
        try:
            import convlstm.lightning
        except ImportError as error:
            print(error)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pip install 'convlstm[lightning]'" in done.stdout


def test_fast_dev_run_fits_and_tests_on_cpu() -> None:
    config = _config()
    module = ForecastModule(config)
    data = MovingMNISTDataModule(config)
    trainer = cpu_trainer(fast_dev_run=True)
    trainer.fit(module, data)
    assert trainer.global_step == 1
    (scores,) = trainer.test(module, data, verbose=False)
    assert {"test/model/mse_frame", "test/persistence/ssim", "test/zeros/mae_pixel"} <= set(scores)
    assert list(module.test_results["forecasters"]) == ["model", "persistence", "zeros"]


def test_training_matches_convlstm_train(tmp_path: Path) -> None:
    """Same initial weights, data order, loss (BCE + input-frame loss), AdamW betas and weight
    decay, linear schedule and clipping: the same weights after 4 steps in 2 epochs, and the
    same validation MSE."""
    config = _config(
        "optim.loss=bce",
        "optim.input_loss_weight=0.5",
        "optim.schedule=linear",
        "optim.betas=[0.8,0.95]",
        "optim.weight_decay=0.01",
        "optim.lr=0.01",
        "optim.grad_clip=0.05",
    )
    result = train(config, tmp_path / "run")
    reference = load_checkpoint(result.last_checkpoint)
    module = ForecastModule(config)
    trainer = cpu_trainer(**trainer_options(config))
    trainer.fit(module, MovingMNISTDataModule(config))
    assert trainer.global_step == reference["step"] == 4
    for key, value in reference["model_state"].items():
        torch.testing.assert_close(module.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert float(trainer.callback_metrics["val_mse_frame"]) == pytest.approx(
        rows[-1]["val_mse_frame"], rel=1e-5
    )
    assert module.best_metric == pytest.approx(reference["best_metric"], rel=1e-5)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(reference["optimizer"]["param_groups"][0]["lr"])


def test_nonfinite_policy_stops_or_skips() -> None:
    config = _config("optim.epochs=1")
    module = ForecastModule(config)
    broken = next(module.model.parameters())
    with torch.no_grad():
        broken.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match="at step 0"):
        cpu_trainer(max_epochs=1).fit(module, MovingMNISTDataModule(config))

    config = _config("optim.epochs=1", "run.nonfinite=skip", "run.max_skips=2")
    module = ForecastModule(config)
    with torch.no_grad():
        next(module.model.parameters()).fill_(math.nan)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = cpu_trainer(max_epochs=1)
    trainer.fit(module, MovingMNISTDataModule(config))
    assert trainer.global_step == 2 and module.skipped == 2  # both steps skipped
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, before[key]) or value.isnan().all(), key
    assert module.best_metric is None  # NaN validation loss


def test_checkpoints_load_both_ways(tmp_path: Path) -> None:
    config = _config("optim.epochs=1")
    module = ForecastModule(config)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = cpu_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoints])
    trainer.fit(module, MovingMNISTDataModule(config))
    path = tmp_path / "ckpt" / "last.ckpt"

    # Lightning -> convlstm: load_model (weights_only) and the convlstm entries
    model, stored = load_model(path)
    for key, value in module.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    assert stored["optim"]["batch_size"] == 4 and stored["model"]["hidden_channels"] == [4]
    entries = load_checkpoint(path)
    assert entries["step"] == 2 and entries["precision"] == "fp32"
    assert entries["scheduler"]["lr_lambdas"][0]["total"] == 2
    assert tuple(entries["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.999)
    assert entries["best_metric"] == pytest.approx(module.best_metric)
    again = ForecastModule.load_from_checkpoint(path, weights_only=True)
    assert again.config == module.config

    # convlstm train -> Lightning
    result = train(config, tmp_path / "run")
    loaded = ForecastModule.from_convlstm_checkpoint(result.best_checkpoint, baselines=["zeros"])
    reference, _ = load_model(result.best_checkpoint)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    (scores,) = cpu_trainer().test(loaded, MovingMNISTDataModule(config), verbose=False)
    expected = evaluate(
        reference,
        resolve_dataset("moving_mnist", _as_dict(config)),
        baselines=["zeros"],
        progress=False,
    )["forecasters"]
    assert scores["test/model/mse_frame"] == pytest.approx(
        expected["model"]["mse_frame"]["overall"]
    )
    assert scores["test/zeros/ssim"] == pytest.approx(expected["zeros"]["ssim"]["overall"])


def _as_dict(config: Config) -> dict:
    from convlstm.config import config_to_dict, validate_config

    return config_to_dict(validate_config(config))


def test_radar_and_array_datamodules(tmp_path: Path) -> None:
    radar = apply_overrides(
        Config(),
        [
            "model.name=radar",
            "model.hidden_channels=[4]",
            "model.patch_size=4",
            "data.options.size=16",
            *TINY[4:],
        ],
    )
    data = RadarDataModule(radar, test_samples=3)
    module = ForecastModule(radar, thresholds=[0.5])
    trainer = cpu_trainer(fast_dev_run=True)
    trainer.fit(module, data)
    (scores,) = cpu_trainer().test(module, data, verbose=False)  # all batches
    assert "test/model/csi@0.5" in scores
    assert module.test_results["settings"]["clip"] is None  # unbounded rain rates
    assert module.test_results["dataset"]["num_sequences"] == 3

    frames = np.random.default_rng(0).random((120, 1, 32, 32), dtype=np.float32)
    np.save(tmp_path / "frames.npy", frames)
    arrays = _config("data.name=array", "data.options.layout=record")
    arrays.data.options.pop("size")
    arrays.data.options.pop("num_digits")
    data = ArrayDataModule(tmp_path / "frames.npy", arrays)
    trainer = cpu_trainer(fast_dev_run=True)
    trainer.fit(ForecastModule(data.config), data)
    (scores,) = trainer.test(ForecastModule(data.config), data, verbose=False)
    assert math.isfinite(scores["test/model/mse_frame"])


def test_two_ddp_processes_score_like_one_evaluation(tmp_path: Path) -> None:
    """Two gloo processes (5 test sequences: uneven shards, no padding) give exactly the
    metrics of a single-process ``evaluate`` of the same model and data."""
    config = _config()
    module = ForecastModule(config, report_dir=tmp_path / "report", thresholds=[0.3], num_gifs=1)
    trainer = cpu_trainer(devices=2, strategy="ddp_spawn", default_root_dir=tmp_path)
    trainer.test(module, MovingMNISTDataModule(config), verbose=False)
    results = json.loads((tmp_path / "report" / "metrics.json").read_text())
    expected = evaluate(
        module.model,
        resolve_dataset("moving_mnist", _as_dict(config)),
        thresholds=[0.3],
        progress=False,
    )
    assert results["dataset"]["num_sequences"] == expected["dataset"]["num_sequences"] == 5
    assert list(results["forecasters"]) == list(expected["forecasters"])
    for name, scores in expected["forecasters"].items():
        for metric, value in scores.items():
            got = results["forecasters"][name][metric]
            assert _approx(got["overall"], value["overall"]), (name, metric)
            assert _approx(got["per_lead_time"], value["per_lead_time"]), (name, metric)
    assert (tmp_path / "report" / "summary.html").is_file()


def test_report_dir_never_replaces_other_files(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    config = _config()
    module = ForecastModule(config, report_dir=mine)
    with pytest.raises(FileExistsError, match="not a report folder"):
        cpu_trainer().test(module, MovingMNISTDataModule(config), verbose=False)
    assert (mine / "notes.txt").read_text() == "keep me"


def _approx(got, expected) -> bool:
    """Equal up to float rounding; ``None`` (undefined) only where expected."""
    if isinstance(expected, list):
        return len(got) == len(expected) and all(map(_approx, got, expected))
    if expected is None:
        return got is None
    return got is not None and got == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_tensorboard_logger_gets_forecast_images_and_hparams(tmp_path: Path) -> None:
    """With a TensorBoard logger (fast_dev_run disables loggers: one batch per epoch instead),
    the image input | truth | forecast of the first validation sequences at each validation,
    and the configuration as hyperparameters with the best and final validation scores."""
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from convlstm.training.tensorboard import forecast_grid

    config = _config()
    module, data = ForecastModule(config), MovingMNISTDataModule(config)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    trainer = cpu_trainer(
        logger=logger, max_epochs=2, limit_train_batches=1, limit_val_batches=1, log_every_n_steps=1
    )
    trainer.fit(module, data)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    images = events.Images("val/forecasts")
    assert [image.step for image in images] == [1, 2]  # at each validation
    # 4 of the 5 validation sequences, 32x32: 3 input | 2 truth | 2 forecast, 2-pixel gaps
    assert (images[0].height, images[0].width) == (4 * 32 + 3 * 2, 7 * 32 + 2 * 2)
    # the last image: the trained model's forecast of the first validation sequences
    pairs = [data.val_dataloader().dataset[i] for i in range(4)]
    inputs, truth = (torch.stack([torch.as_tensor(p[k]) for p in pairs]) for k in (0, 1))
    with torch.no_grad():
        expected = forecast_grid(inputs, truth, module.model.eval()(inputs, 2))
    from PIL import Image

    png = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"))
    grid = expected.permute(1, 2, 0).numpy() * 255
    assert np.abs(png.astype(np.float64) - grid).max() <= 1.0  # 8-bit quantisation
    (best,) = events.Scalars("hparams/best_val_mse_frame")
    (final,) = events.Scalars("hparams/final_val_mse_frame")
    assert best.step == final.step == 2
    assert best.value == pytest.approx(module.best_metric, rel=1e-6)
    assert final.value == pytest.approx(trainer.callback_metrics["val_mse_frame"].item(), rel=1e-6)
    hparams = events.PluginTagToContent("hparams")
    assert any(b"optim.lr" in content for content in hparams.values()), hparams
    assert any(b"hparams/final_val_mse_frame" in content for content in hparams.values())
    # tensorboard=False: Lightning's own scalars only
    quiet = TensorBoardLogger(str(tmp_path), name="quiet", version=0)
    cpu_trainer(logger=quiet, max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(
        ForecastModule(config, tensorboard=False), MovingMNISTDataModule(config)
    )
    events = EventAccumulator(quiet.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert not events.Tags()["images"] and "val_mse_frame" in events.Tags()["scalars"]
    assert "hparams/best_val_mse_frame" not in events.Tags()["scalars"]
