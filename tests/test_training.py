"""Configuration, checkpoints and the training loop (tiny sizes, CPU)."""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm import _atomic, evaluation, training
from convlstm import checkpoint as ckpt
from convlstm.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model,
    load_state_checked,
    make_checkpoint,
    restore_rng,
    save_checkpoint,
)
from convlstm.config import (
    Config,
    ConfigError,
    OptimConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    validate_config,
)
from convlstm.data.transforms import RainTransform
from convlstm.models import EncoderForecaster, create_model
from convlstm.training import (
    NonFiniteLossError,
    TrainingInterrupted,
    build_datasets,
    lr_factor,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.hidden_channels=[4]",
    "model.patch_size=4",
    "data.options.size=32",
    "data.input_len=3",
    "data.horizon=2",
    "data.train_samples=8",
    "data.val_samples=4",
    "optim.batch_size=4",
    "optim.epochs=2",
    "optim.warmup_steps=1",
    "run.progress=false",
    "run.eval_samples=0",
    "run.precision=fp32",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(*overrides: str) -> Config:
    return apply_overrides(Config(), [*TINY, *overrides])


# ----------------------------------------------------------------------------- config


TOML = """
[model]
name = "moving_mnist"
hidden_channels = [8, 8]
kernel_size = [3, 5]
norm = "layer"

[data]
horizon = 5
options = { size = 48, speed_range = [1.0, 2.0] }

[optim]
lr = 3e-4
max_steps = 100

[run]
max_minutes = 2
compile = true
"""


def test_config_round_trips_through_files(tmp_path: Path) -> None:
    source = tmp_path / "run.toml"
    source.write_text(TOML)
    config = load_config(source)
    assert config.model.options == {
        "hidden_channels": [8, 8],
        "kernel_size": [3, 5],
        "norm": "layer",
    }
    assert config.data.options == {"size": 48, "speed_range": [1.0, 2.0]}
    assert config.optim.lr == 3e-4 and config.run.max_minutes == 2.0 and config.run.compile
    for name in ("config.yaml", "config.json"):
        path = save_config(config, tmp_path / name)
        assert load_config(path) == config
    resolved = validate_config(config)
    again = load_config(save_config(resolved, tmp_path / "resolved.yaml"))
    assert again == resolved and again.model.options["norm"] == "layer"
    assert again.model.options["peephole"] is None  # explicit None survives the round trip
    yaml_source = tmp_path / "run.yaml"
    yaml_source.write_text("optim:\n  lr: 0.01\nmodel:\n  hidden_channels: [3]\n")
    assert load_config(yaml_source).optim.lr == 0.01
    with pytest.raises(FileExistsError):
        save_config(config, tmp_path / "config.yaml")


def test_overrides_are_typed_by_the_fields() -> None:
    config = apply_overrides(
        Config(),
        [
            "optim.lr=1e-3",
            "optim.batch_size=8",
            "run.max_minutes=none",
            "run.compile=true",
            "model.hidden_channels=[8,8]",
            "model.kernel_size=5",
            "model.norm=none",
            "model.name=radar",
            "data.options.size=32",
            "data.val_options.digits=all",
        ],
    )
    assert config.optim.lr == 1e-3 and config.optim.batch_size == 8
    assert config.run.max_minutes is None and config.run.compile is True
    assert config.model.name == "radar"
    assert config.model.options == {"hidden_channels": [8, 8], "kernel_size": 5, "norm": None}
    assert config.data.options == {"size": 32} and config.data.val_options == {"digits": "all"}
    cases = {
        "optim.batch_size=8.5": "optim.batch_size must be int",
        "optim.lrr=1": "unknown key optim.lrr; valid keys in \\[optim\\]: lr",
        "model.hidden=3": "unknown key model.hidden",
        "train.lr=1": "unknown section 'train'",
        "optimlr": "must look like section.key=value",
        "model.hidden_channels=[8,x]": "model.hidden_channels",
        "run.compile=maybe": "run.compile must be bool",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.horizon=0", "data.horizon must be >= 1, got 0"),
        ("data.train_samples=-1", "data.train_samples must be in \\[0, "),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.batch_size=0", "optim.batch_size must be >= 1"),
        ("model.hidden_channels=[0]", "model.hidden_channels\\[0\\] must be greater than zero"),
        ("model.name=unet", "valid models: moving_mnist, moving_mnist_large, radar"),
        ("data.name=cifar", "valid datasets: .*moving_mnist"),
        ("optim.schedule=step", "optim.schedule must be one of"),
        ("optim.betas=[0.9]", r"optim.betas must be two numbers in \[0, 1\)"),
        ("optim.betas=[0.9, 1.0]", r"optim.betas must be two numbers in \[0, 1\)"),
        ("model.readout_hidden=-1", "model.readout_hidden must be an integer >= 0"),
        ("run.device=tpu", "run.device must be auto, cpu, cuda or cuda:N"),
        ("run.threads=-1", "run.threads must be >= 0"),
        ("run.seed=4294967296", "run.seed must be in \\[0, 2147483647\\]"),
        ("data.train_samples=100000000000000000000000", "data.train_samples must be in"),
        ("model.residual=true", "model.residual=True needs output_activation"),
        ("model.advection=true", "advection=True needs residual=True"),
        ("model.readout=concat", "optim.input_loss_weight > 0 needs model.readout='top'"),
        ("optim.quantile=1", r"optim.quantile must be in \(0, 1\), got 1"),
        ("optim.quantile=0.7", "optim.quantile applies to optim.loss='quantile' only"),
        ("optim.rain_weights=[[2, 2, 2]]", r"optim.rain_weights must be a list of \[thresh"),
        ("optim.rain_weights=[[5, 2], [2, 5]]", r"thresholds \(mm/h\) must be >= 0 and strictly"),
        ("optim.rain_weights=[[2, 0]]", "optim.rain_weights weights must be > 0"),
    ],
)
def test_validation_names_the_field(override: str, message: str) -> None:
    config = tiny("optim.input_loss_weight=1", "model.readout=top", override)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_bce_names_the_output_activation_it_got() -> None:
    config = tiny("optim.loss=bce", "model.output_activation=identity")
    message = r"optim.loss 'bce' needs model.output_activation='sigmoid' .*, got 'identity'"
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", "1e999"])
@pytest.mark.parametrize(
    "field",
    ["optim.lr", "optim.weight_decay", "optim.grad_clip", "run.dist_timeout_s", "run.max_minutes"],
)
def test_non_finite_numbers_are_refused(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field} must be a finite number, got"):
        validate_config(tiny(f"{field}={value}"))
    section, key = field.split(".")
    with pytest.raises(ConfigError, match=rf"{field} must be a finite number, got inf"):
        config_from_dict({section: {key: math.inf}})


def test_non_finite_numbers_in_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = inf\n")  # TOML has inf and nan literals
    with pytest.raises(ConfigError, match=r"optim.lr must be a finite number, got inf"):
        load_config(path)
    config = Config()
    config.run.dist_timeout_s = math.nan
    with pytest.raises(ConfigError, match=r"run.dist_timeout_s must be a finite number, got nan"):
        validate_config(config)


def test_validation_does_not_allocate_the_model(monkeypatch) -> None:
    from convlstm import config as config_module

    devices = []

    def spy(*args, **kwargs):
        devices.append(torch.empty(0).device.type)  # where the constructor's tensors would go
        return EncoderForecaster(*args, **kwargs)

    monkeypatch.setattr(config_module, "EncoderForecaster", spy)
    validate_config(tiny("model.hidden_channels=[512, 512]", "model.kernel_size=5"))
    assert devices == ["meta"]
    with pytest.raises(ConfigError, match=r"model.hidden_channels\[0\] must be greater"):
        validate_config(tiny("model.hidden_channels=[0]"))  # the checks still run


def test_frames_the_model_cannot_take_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model.patch_size=4 must divide the frame size 30x30"):
        build_datasets(validate_config(tiny("data.options.size=30")))
    with pytest.raises(ConfigError, match=r"model.in_channels=2"):
        build_datasets(validate_config(tiny("model.in_channels=2")))
    with pytest.raises(ConfigError, match="data \\(train split of 'moving_mnist'\\)"):
        build_datasets(validate_config(tiny("data.options.colour=red")))


def test_config_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    bad.write_text('[optim]\nlr = "fast"')
    with pytest.raises(ConfigError, match=r"optim.lr must be float, got str 'fast'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="a configuration must be a mapping"):
        config_from_dict([1])  # type: ignore[arg-type]


def test_bundled_configs_are_valid_and_the_only_copy() -> None:
    package = ROOT / "src" / "convlstm" / "configs"
    names = sorted(p.name for p in package.glob("*.toml"))
    assert "moving_mnist.toml" in names and "moving_mnist_large.toml" in names
    for name in names:
        validate_config(load_config(package / name))
    assert not (ROOT / "configs").exists()  # the packaged configs are the single source
    large = validate_config(load_config(package / "moving_mnist_large.toml"))
    assert large.model.options["hidden_channels"] == [128] * 4 and large.optim.teacher_forcing == 1


def test_schedules() -> None:
    total = 100
    cosine = [lr_factor(s, "cosine", 10, total) for s in range(total)]
    assert cosine[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(a >= b for a, b in itertools.pairwise(cosine[9:])) and cosine[-1] < 0.01
    linear = [lr_factor(s, "linear", 10, total, min_ratio=0.1) for s in range(total)]
    assert linear[:10] == cosine[:10]
    assert linear[10:] == pytest.approx([0.1 + 0.9 * (1 - (s - 9) / 91) for s in range(10, total)])
    onecycle = [lr_factor(s, "onecycle", 10, total) for s in range(total)]
    assert onecycle[0] == pytest.approx(0.04) and max(onecycle) == pytest.approx(1.0)
    assert onecycle[-1] < 1e-3
    assert lr_factor(50, "constant", 10, total) == 1.0


def test_losses_let_nan_reach_the_nonfinite_policy() -> None:
    pred, target = torch.full((2, 3), 0.25), torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy(pred, target)
    torch.testing.assert_close(training.losses.forecast_loss("bce", pred, target), expected)
    mae = torch.nn.functional.l1_loss(pred, target)
    torch.testing.assert_close(training.losses.forecast_loss("l1", pred, target), mae)
    pred[0, 0] = math.nan
    for kind in ("mse", "l1", "mse+l1", "bce"):
        assert math.isnan(float(training.losses.forecast_loss(kind, pred, target)))


def test_rain_weights_weight_each_pixel_by_its_true_rain_rate() -> None:
    """The weighted pinball loss against the sum written out in numpy, in mm/h levels."""
    transform = RainTransform("log")
    rng = np.random.default_rng(0)
    rain = rng.gamma(0.6, 4.0, size=(2, 3, 1, 4, 4))
    truth = transform(torch.from_numpy(rain)).float()
    pred = truth + torch.from_numpy(rng.normal(0, 0.3, size=rain.shape)).float()
    levels = [[2.0, 2.0], [5.0, 5.0], [10.0, 10.0], [30.0, 30.0]]
    w = np.select([rain >= 30, rain >= 10, rain >= 5, rain >= 2], [30, 10, 5, 2], 1.0)
    mask = (rng.random(rain.shape) > 0.2).astype(np.float32)
    d = truth.numpy() - pred.numpy()
    pinball = np.maximum(0.6 * d, -0.4 * d)
    expected = (w * mask * pinball).sum() / (w * mask).sum()
    optim = OptimConfig(loss="quantile", quantile=0.6, rain_weights=levels)
    inputs = truth[:, :1]  # input_loss_weight 0: the inputs only give the frame count
    got = training.losses.training_loss(
        optim,
        pred,
        inputs,
        truth,
        torch.cat([torch.ones_like(inputs), torch.from_numpy(mask)], 1),
        transform=transform,
    )
    assert float(got) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"optim\.rain_weights needs rain data"):
        training.losses.training_loss(optim, pred, inputs, truth)


def test_ssim_weight_adds_one_minus_torchmetrics_ssim_of_the_forecast() -> None:
    """Reference: torchmetrics' SSIM of the forecast frames (its defaults, data range 1) and
    torch's BCE of the forecast and of the input predictions; gradients through both."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    gen = torch.Generator().manual_seed(0)
    inputs, targets = torch.rand(2, 4, 1, 16, 16, generator=gen), torch.rand(2, 3, 1, 16, 16)
    pred = torch.rand(2, 6, 1, 16, 16, generator=gen).clamp(0.05, 0.95).requires_grad_()
    optim = OptimConfig(loss="bce", input_loss_weight=2.0, ssim_weight=0.7)
    got = training.losses.training_loss(optim, pred, inputs, targets)
    (got_grad,) = torch.autograd.grad(got, pred)
    bce = torch.nn.functional.binary_cross_entropy
    forecast = pred[:, 3:]
    similarity = tm_ssim(forecast.flatten(0, 1), targets.flatten(0, 1), data_range=1.0)
    expected = bce(forecast, targets) + 2.0 * bce(pred[:, :3], inputs[:, 1:])
    expected = expected + 0.7 * (1 - similarity)
    (expected_grad,) = torch.autograd.grad(expected, pred)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the SSIM term stays in float32
        in_bf16 = training.losses.training_loss(optim, pred, inputs, targets)
    torch.testing.assert_close(in_bf16, got)
    with pytest.raises(ValueError, match="ssim_weight > 0 cannot skip masked pixels"):
        training.losses.training_loss(optim, pred, inputs, targets, torch.ones(2, 7, 1, 16, 16))


def test_ssim_weight_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"optim\.ssim_weight must be >= 0, got -1"):
        validate_config(tiny("optim.ssim_weight=-1"))
    with pytest.raises(ConfigError, match=r"optim\.ssim_weight > 0 needs frames in"):
        validate_config(tiny("optim.ssim_weight=0.5", "model.output_activation=identity"))


# ----------------------------------------------------------------------------- checkpoints


def small_checkpoint(model: EncoderForecaster) -> dict:
    return make_checkpoint(
        model, "moving_mnist", config_to_dict(Config()), epoch=1, rng=capture_rng()
    )


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EncoderForecaster(1, [4], 3, patch_size=4)
    path = save_checkpoint(tmp_path / "best.pt", small_checkpoint(model))
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == ckpt.FORMAT_VERSION and raw["model_name"] == "moving_mnist"
    loaded, config = load_model(path)
    assert not loaded.training and config["optim"]["lr"] == Config().optim.lr
    x = torch.rand(1, 3, 1, 16, 16)
    torch.testing.assert_close(loaded(x, 2), model.eval()(x, 2))


def test_rng_states_round_trip() -> None:
    state = capture_rng()
    expected = (torch.rand(2), np.random.rand(2), random.random())  # noqa: NPY002
    restore_rng(state)
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1])  # noqa: NPY002
    assert random.random() == expected[2]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model = EncoderForecaster(1, [4], 3, patch_size=4)
    path = save_checkpoint(tmp_path / "last.pt", small_checkpoint(model))
    before = path.read_bytes()
    real_fdopen = _atomic.os.fdopen

    class FullDisk:
        def __init__(self, handle) -> None:
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.handle.close()

        def write(self, data) -> int:
            self.handle.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_atomic.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match=r"cannot write checkpoint .*last.pt: No space left"):
        save_checkpoint(path, small_checkpoint(model))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_bad_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    model = EncoderForecaster(1, [4], 3, patch_size=4)
    good = save_checkpoint(tmp_path / "good.pt", small_checkpoint(model))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable \\(truncated or corrupt\\?\\)"):
        load_model(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a convlstm checkpoint"):
        load_model(other)
    huge = torch.load(good, weights_only=True)
    huge["model_config"]["hidden_channels"] = [10**7]  # refused before allocating ~TBs
    torch.save(huge, tmp_path / "huge.pt")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_model(tmp_path / "huge.pt")
    state = torch.load(good, weights_only=True)
    state["model_state"]["readout.weight"] = torch.zeros(3, 3)
    state["model_state"]["extra"] = torch.zeros(1)
    del state["model_state"]["readout.bias"]
    with pytest.raises(CheckpointError) as error:
        load_state_checked(model, state["model_state"], "checkpoint x")
    message = str(error.value)
    assert "missing keys: readout.bias" in message and "unexpected keys: extra" in message
    assert "readout.weight: checkpoint (3, 3) vs model (16, 4, 1, 1)" in message


# ----------------------------------------------------------------------------- training


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=True)["model_state"]


def test_training_writes_a_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(tiny(), out)
    assert result.steps == 4 and result.epochs == 2 and result.stop_reason == "completed"
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
    ]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(
        math.isfinite(r["val_mse_frame"]) for r in rows
    )
    assert load_config(out / "config.yaml") == validate_config(tiny())
    model, config = load_model(out / "best.pt")
    assert config["data"]["horizon"] == 2 and model(torch.rand(1, 3, 1, 32, 32), 4).shape[1] == 4
    with pytest.raises(FileExistsError, match=r"--resume .* --overwrite"):
        train(tiny(), out)
    assert train(tiny("optim.epochs=1"), out, overwrite=True).steps == 2
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(tiny(), tmp_path / "elsewhere", resume=True)
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "holiday.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="does not look like a training run"):
        train(tiny(), stranger, overwrite=True)


def test_resume_after_a_signal_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # Scheduled sampling draws from torch's RNG, so this also checks the RNG state round trip.
    config = tiny("optim.teacher_forcing=1.0", "optim.teacher_forcing_steps=4", "optim.epochs=3")
    train(config, tmp_path / "straight")

    def interrupt(step: int) -> None:
        if step == 3:  # in the middle of the second epoch
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as stop:
        train(config, tmp_path / "resumed", on_step=interrupt)
    assert stop.value.exit_code == 128 + signal.SIGTERM
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (3, 1, 1)
    result = train(config, tmp_path / "resumed", resume=True)
    assert result.steps == 6
    expected, got = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_resume_tidies_an_interrupted_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny("optim.epochs=1"), out)
    (out / ".last.pt.0badc0de.tmp").write_bytes(b"half")  # a write killed half-way
    with open(out / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"epoch": 2, "step": 4}) + "\n" + '{"epoch": 3, "st')
    train(tiny("optim.epochs=2"), out, resume=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "val_mse_frame" in rows[1]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_nonfinite_loss_stops_without_saving_the_bad_state(tmp_path: Path, monkeypatch) -> None:
    real_loss = training.losses.forecast_loss
    calls = {"n": 0}

    def flaky(kind, pred, target, **options):
        calls["n"] += 1
        loss = real_loss(kind, pred, target, **options)
        return loss * math.nan if calls["n"] == 3 else loss

    monkeypatch.setattr(training.losses, "forecast_loss", flaky)
    out = tmp_path / "run"
    with pytest.raises(
        NonFiniteLossError, match=r"at step 2 \(epoch 2, batch 1 .*last good checkpoint"
    ):
        train(tiny(), out)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2  # from the end of epoch 1
    calls["n"] = 0
    result = train(tiny("run.nonfinite=skip"), tmp_path / "skip")
    assert result.steps == 4
    rows = (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["skipped"] == 1
    assert all(torch.isfinite(w).all() for w in final_weights(tmp_path / "skip").values())


def test_time_budget_and_early_stopping(tmp_path: Path, monkeypatch) -> None:
    result = train(tiny("run.max_minutes=1e-6", "run.threads=2"), tmp_path / "budget")
    assert result.stop_reason == "time_budget" and result.steps == 1
    assert torch.get_num_threads() == 1  # run.threads applied during training only
    monkeypatch.setattr(training.loop.Trainer, "validate", lambda self: 5.0)
    result = train(tiny("run.patience=1", "optim.epochs=5"), tmp_path / "patience")
    assert result.stop_reason == "early_stopping" and result.epochs == 2


def test_time_budget_leaves_room_for_the_final_report(tmp_path: Path, monkeypatch) -> None:
    probed = []
    probe = training.loop.Trainer._probe_report

    def spy(self):
        before = torch.get_rng_state()
        probed.append(probe(self))  # the real probe: score a batch as the report will
        assert torch.equal(torch.get_rng_state(), before)  # training's random stream untouched
        return probed[-1]

    monkeypatch.setattr(training.loop.Trainer, "_probe_report", spy)
    budget = ("run.max_minutes=60", "run.eval_samples=1000", "optim.epochs=4")
    result = train(tiny(*budget), tmp_path / "probed")
    assert result.steps == 8 and len(probed) == 1  # probed once, after the first validation
    assert training.budget.REPORT_FILES_S < probed[0] < 60 * 60
    # a report that needs the whole budget stops training at the first plan after the probe
    monkeypatch.setattr(training.loop.Trainer, "_probe_report", lambda self: 3600.0)
    result = train(tiny(*budget), tmp_path / "no_time")
    assert result.stop_reason == "time_budget" and result.steps < 8


def test_rain_report_probe_scores_in_mm_per_hour_with_the_reports_baselines(monkeypatch) -> None:
    from convlstm.baselines import default_baselines
    from convlstm.data import SyntheticRadar
    from convlstm.data.transforms import RainTransform

    calls = []

    def spy(model, data, **kwargs):
        calls.append((model, data, kwargs["baselines"]))

    monkeypatch.setattr(evaluation, "evaluate", spy)
    val = SyntheticRadar(num_samples=4, input_len=2, output_len=2, size=16, transform="log")
    model = create_model("radar", hidden_channels=[4])
    transform = RainTransform("log")
    training.budget.probe_report(model, val, torch.device("cpu"), 2, 8, transform)
    model_seen, data, baselines = calls[-1]
    assert model_seen.units == "mm/h" and baselines == default_baselines(rain=True)
    mm_h = SyntheticRadar(num_samples=4, input_len=2, output_len=2, size=16)
    torch.testing.assert_close(data[1][1], mm_h[1][1], rtol=1e-5, atol=1e-5)
    training.budget.probe_report(model, val, torch.device("cpu"), 2, 8)
    assert calls[-1][0] is model and calls[-1][2] == default_baselines(rain=False)


def test_tiny_training_learns(tmp_path: Path) -> None:
    config = tiny(
        "model.hidden_channels=[8]",
        "optim.lr=1e-2",
        "optim.epochs=6",
        "optim.loss=bce",
        "data.train_samples=16",
        "optim.warmup_steps=2",
    )
    result = train(config, tmp_path / "run")
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert result.best_metric is not None and result.best_metric < rows[0]["val_mse_frame"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
