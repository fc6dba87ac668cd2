"""The training package's run-level behaviour: the time budget's plan (a fake clock), progress
output, TensorBoard logs, old checkpoints, runs without validation data, and the run folder's
and the model's options (tiny sizes, CPU)."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest
import torch

from convlstm import training
from convlstm.checkpoint import load_checkpoint, save_checkpoint
from convlstm.cli import main
from convlstm.config import Config, validate_config
from convlstm.models import create_model
from convlstm.training import budget, train
from convlstm.training.tensorboard import flat_hparams, forecast_grid
from test_training import TINY, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state"]


# ----------------------------------------------------------------------------- the time budget


def brute_force_steps(left, per_step, per_val, report, per_epoch, epoch_step) -> int:
    """The most steps whose cost fits, trying every count and walking its steps one by one."""
    best = 0
    for n in range(int(left / per_step) + 2):
        validations, position = 0, epoch_step
        for _ in range(n):
            position += 1
            if position == per_epoch:  # the epoch ends: a validation
                validations, position = validations + 1, 0
        validations += position > 0  # stopped inside an epoch: it is validated too
        if n * per_step + validations * per_val + report <= left:
            best = n
    return best


@pytest.mark.parametrize(
    "left, per_step, per_val, report, per_epoch, epoch_step",
    [
        (48.0, 1.0, 4.0, 0.0, 2, 0),
        (48.0, 1.0, 4.0, 0.0, 2, 1),
        (30.0, 0.07, 1.1, 20.0, 8, 0),  # the case: 8 steps an epoch, 30 s, a report
        (100.0, 0.3, 0.0, 5.0, 7, 3),
        (5.0, 1.0, 10.0, 0.0, 4, 2),  # not even the pending validation fits
        (60.0, 0.5, 2.0, 3.0, 1, 0),
    ],
)
def test_affordable_steps_matches_counting_each_step(
    left, per_step, per_val, report, per_epoch, epoch_step
) -> None:
    expected = brute_force_steps(left, per_step, per_val, report, per_epoch, epoch_step)
    got = budget.affordable_steps(left, per_step, per_val, report, per_epoch, epoch_step)
    assert got == expected


def test_a_budget_plans_from_the_time_left_not_the_configured_epochs(
    tmp_path: Path, monkeypatch
) -> None:
    # A fake clock: each optimiser step takes 1 s and each validation 4 s; 2 steps an epoch.
    # The old plan reserved a validation for each of the 1,000 configured epochs and stopped
    # after 5 steps; 60 s afford 16 steps after the first two epochs (12 s): 4 + 16 = 20.
    now = [0.0]

    def advance(seconds: float) -> None:
        now[0] += seconds

    def validate(self) -> float:
        advance(4.0)
        return 100.0 - self.state.step

    monkeypatch.setattr(training.loop, "_now", lambda: now[0])
    monkeypatch.setattr(training.loop.Trainer, "validate", validate)
    config = tiny("optim.epochs=1000", "run.max_minutes=1.0", "data.train_samples=8")
    result = train(config, tmp_path / "run", on_step=lambda step: advance(1.0))
    assert result.steps == 20 and result.stop_reason == "time_budget"
    log = rows(tmp_path / "run")
    assert [row["total_steps"] for row in log][-1] == 20
    assert log[-1]["elapsed_s"] <= 60  # training and its validations fit the budget
    # with twice the budget, twice the room: 4 + (120 - 12) // 3 * 1 = 40 steps
    now[0] = 0.0
    config = tiny("optim.epochs=1000", "run.max_minutes=2.0", "data.train_samples=8")
    assert train(config, tmp_path / "twice", on_step=lambda step: advance(1.0)).steps == 40


# ----------------------------------------------------------------------------- progress output


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal(tmp_path: Path, capsys, monkeypatch) -> None:
    train(tiny("run.progress=true"), tmp_path / "log")
    captured = capsys.readouterr()
    assert "batch" not in captured.err and "\r" not in captured.err  # no bar in a log
    lines = captured.out.splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 1", "epoch 2"]  # one per epoch
    assert lines[0].startswith("training moving_mnist (")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    train(tiny("run.progress=true"), tmp_path / "terminal")
    assert "epoch 1" in terminal.getvalue() and "batch" in terminal.getvalue()


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_is_opt_in_and_logs_curves_images_and_hparams(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(), tmp_path / "plain")
    assert not (tmp_path / "plain" / "tensorboard").exists()  # off by default
    out = tmp_path / "run"
    result = train(tiny("run.tensorboard=true"), out)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    expected = {
        "train/loss",
        "train/lr",
        "train/epoch_loss",
        "val/mse_frame",
        "val/best_mse_frame",
        "throughput/seq_per_s",
        "hparams/best_val_mse_frame",
        "hparams/final_val_mse_frame",
    }
    assert expected <= set(tags["scalars"]), tags["scalars"]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    val = events.Scalars("val/mse_frame")
    assert [e.step for e in val] == [r["step"] for r in rows(out)] == [2, 4]
    assert [e.value for e in val] == pytest.approx([r["val_mse_frame"] for r in rows(out)])
    (best,) = events.Scalars("hparams/best_val_mse_frame")
    assert (best.step, best.value) == (4, pytest.approx(result.best_metric, rel=1e-6))
    images = events.Images("val/forecasts")
    assert [image.step for image in images] == [2, 4]  # at each validation
    # 4 sequences of 32x32 frames: 3 input | 2 truth | 2 forecast, 2-pixel gaps
    assert (images[0].height, images[0].width) == (4 * 32 + 3 * 2, 7 * 32 + 2 * 2)
    hparams = events.PluginTagToContent("hparams")
    assert hparams, "no hyperparameters recorded"
    assert any(b"optim.lr" in content for content in hparams.values())


def test_forecast_grid_places_input_truth_and_forecast() -> None:
    inputs = torch.zeros(1, 2, 1, 4, 4)
    truth = torch.full((1, 1, 1, 4, 4), 0.5)
    forecast = torch.ones(1, 1, 1, 4, 4)
    grid = forecast_grid(inputs, truth, forecast)
    assert grid.shape == (3, 4, 4 * 4 + 2 * 2)
    assert torch.equal(grid[:, :, :8], torch.zeros(3, 4, 8))  # the inputs
    assert torch.equal(grid[:, :, 8:10], torch.ones(3, 4, 2))  # a white gap
    assert torch.equal(grid[:, :, 10:14], torch.full((3, 4, 4), 0.5))  # the truth
    assert torch.equal(grid[:, :, 16:], torch.ones(3, 4, 4))  # the forecast
    # unbounded data are scaled by the range of inputs and truth
    scaled = forecast_grid(inputs - 2.0, truth * 4, forecast * 100)
    assert float(scaled.min()) == 0.0 and float(scaled[:, :, 10:14].max()) == 1.0
    with pytest.raises(ValueError, match="one shape"):
        forecast_grid(inputs, truth, torch.ones(1, 2, 1, 4, 4))
    assert flat_hparams({"model": {"norm": None, "hidden": [4]}}) == {
        "model.norm": "null",
        "model.hidden": "[4]",
    }


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_drop_unused_entries_and_old_ones_still_resume(tmp_path: Path) -> None:
    config = tiny("optim.epochs=3")
    train(config, tmp_path / "straight")
    out = tmp_path / "old"

    def interrupt(step: int) -> None:
        if step == 3:  # in the middle of the second epoch
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(training.TrainingInterrupted):
        train(config, out, on_step=interrupt)
    checkpoint = load_checkpoint(out / "last.pt")
    assert "grad_scaler" not in checkpoint and "epoch_steps" not in checkpoint["trainer"]
    assert checkpoint["epoch_step"] == checkpoint["trainer"]["epoch_step"] == 1
    # as earlier versions wrote it: grad_scaler=None and a duplicate epoch_steps
    checkpoint["grad_scaler"] = None
    checkpoint["trainer"]["epoch_steps"] = checkpoint["trainer"]["epoch_step"]
    save_checkpoint(out / "last.pt", checkpoint)
    assert train(config, out, resume=True).steps == 6
    expected, got = weights(tmp_path / "straight" / "last.pt"), weights(out / "last.pt")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    fields = ("epoch", "step", "train_loss", "val_mse_frame", "lr", "total_steps")
    resumed, straight = rows(out), rows(tmp_path / "straight")
    assert [[r[k] for k in fields] for r in resumed] == [[r[k] for k in fields] for r in straight]


def test_without_validation_data_the_last_weights_are_scored(tmp_path: Path, capsys) -> None:
    result = train(tiny("data.val_samples=0"), tmp_path / "run")
    assert result.best_metric is None and result.best_checkpoint == tmp_path / "run" / "last.pt"
    assert not (tmp_path / "run" / "best.pt").exists()
    assert [row["val_mse_frame"] for row in rows(tmp_path / "run")] == [None, None]
    # the command line's final report then scores last.pt, and succeeds
    out = tmp_path / "cli"
    code = main(["train", "--out", str(out), *TINY, "data.val_samples=0", "run.eval_samples=2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "report" / "metrics.json").is_file()


# ----------------------------------------------------------------------------- options


def test_train_refuses_a_file_as_its_run_folder(tmp_path: Path, capsys) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    for flags in ([], ["--overwrite"], ["--resume"]):
        with pytest.raises(FileExistsError, match="is a file, not a run folder"):
            train(tiny(), target, overwrite="--overwrite" in flags, resume="--resume" in flags)
    assert main(["train", "--out", str(target), *TINY]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a run folder" in err and "output directory" not in err
    assert target.read_text() == "mine"


def test_checkpoint_steps_is_a_model_option(tmp_path: Path) -> None:
    model = create_model("moving_mnist", hidden_channels=[4], checkpoint_steps=True)
    assert model.encoder.checkpoint_steps and model.forecaster.checkpoint_steps
    assert model.config["checkpoint_steps"] is True
    assert not create_model("moving_mnist", hidden_channels=[4]).encoder.checkpoint_steps
    # the same gradients as without recomputation
    plain = create_model("moving_mnist", hidden_channels=[4], patch_size=4, norm="layer")
    recomputed = create_model(
        "moving_mnist", hidden_channels=[4], patch_size=4, norm="layer", checkpoint_steps=True
    )
    recomputed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 1, 16, 16)
    for model in (plain, recomputed):
        model(x, 2).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    # reachable from the configuration, hence from `convlstm train model.checkpoint_steps=true`
    config = tiny("model.checkpoint_steps=true", "optim.epochs=1")
    assert validate_config(config).model.options["checkpoint_steps"] is True
    train(config, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["model_config"]["checkpoint_steps"]


def test_run_channels_last_means_what_fast_settings_means(tmp_path: Path, monkeypatch) -> None:
    assert Config().run.channels_last is None  # the per-shape plan chooses, as in fast
    seen = []
    real = training.loop.Trainer._step

    def step(self, inputs, targets):
        from convlstm import fast

        seen.append(fast.current().channels_last)
        return real(self, inputs, targets)

    monkeypatch.setattr(training.loop.Trainer, "_step", step)
    for value, expected in (("none", None), ("true", True), ("false", False)):
        seen.clear()
        train(tiny(f"run.channels_last={value}", "optim.epochs=1"), tmp_path / value)
        assert seen == [expected, expected]
    from convlstm import fast

    assert fast.current().channels_last is None  # restored after training
