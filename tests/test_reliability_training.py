"""Faults inside a training run (in-process, tiny model): non-finite batches and losses, weights
that turn non-finite, DataLoader workers that raise or die, a full disk and unwritable folders.

Each fault must be detected, named, handled by the documented policy (``run.nonfinite``), stop
with a clear one-line error from the command line (exit status 1), and leave the previous
checkpoint intact; nothing non-finite is ever written into a checkpoint.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, get_worker_info

from convlstm import _atomic, training
from convlstm.checkpoint import load_checkpoint
from convlstm.cli import main
from convlstm.config import Config, apply_overrides
from convlstm.data import register_dataset
from convlstm.data.moving_mnist import MovingMNIST
from convlstm.training import NonFiniteLossError, train
from test_reliability_support import TINY

EPOCHS = ["optim.epochs=3"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Faulty(Dataset):
    """Moving MNIST whose sample ``bad`` is poisoned: ``nan``/``inf`` in a pixel, or, in a
    DataLoader worker, ``raise`` an error or ``exit`` the worker process."""

    def __init__(self, input_len, output_len, *, mode="nan", bad=5, where="input", **options):
        self.inner = MovingMNIST(input_len=input_len, output_len=output_len, **options)
        self.num_samples, self.seed = self.inner.num_samples, self.inner.seed
        self.mode, self.bad, self.where = mode, bad, where

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        inputs, targets = self.inner[index]
        if index != self.bad:
            return inputs, targets
        if self.mode in ("nan", "inf"):
            (inputs if self.where == "input" else targets)[0, 0, 0, 0] = float(self.mode)
        elif get_worker_info() is not None:
            if self.mode == "raise":
                raise ValueError(f"sample {index}: checksum mismatch in shard 7")
            if self.mode == "exit":
                os._exit(3)
        return inputs, targets


FAULTY = ["data.name=faulty", "data.val_options.bad=-1"]  # validation stays clean


@pytest.fixture(scope="module", autouse=True)
def faulty_dataset():
    """``data.name=faulty`` while this module runs (removed after, for the other tests)."""
    from convlstm.data import registry

    register_dataset("faulty", Faulty, overwrite=True)
    yield
    registry._REGISTRY.unregister("faulty")


def tiny(*overrides: str):
    return apply_overrides(Config(), [*TINY, *EPOCHS, *overrides])


def finite_checkpoint(path: Path) -> dict:
    """Load ``path`` and check that every tensor in it (weights, optimiser state) is finite."""
    checkpoint = load_checkpoint(path)

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from tensors(item)
        elif isinstance(value, list | tuple):
            for item in value:
                yield from tensors(item)

    for key in ("model_state", "optimizer"):
        for tensor in tensors(checkpoint[key]):
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"{path.name}: non-finite {key}"
    return checkpoint


def cli_train(capsys, out: Path, *overrides: str, config: str | None = None) -> tuple[int, str]:
    capsys.readouterr()
    args = ["train", "--out", str(out), *(["--config", config] if config else [])]
    code = main([*args, *TINY, *EPOCHS, *overrides])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return code, err


# ----------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("where", ["input", "target"])
def test_a_non_finite_batch_stops_naming_step_and_batch(tmp_path, capsys, value, where) -> None:
    # sample 5 of the epoch-1 order lands in batch 1 or 2; with 2 batches an epoch, the first
    # checkpoint is only written after both, so find the step from the message
    code, err = cli_train(
        capsys,
        tmp_path / "run",
        *FAULTY,
        f"data.options.mode={value}",
        f"data.train_options.where={where}",
        "optim.loss=mse",
    )
    assert code == 1
    assert len(err.splitlines()) == 1
    assert "non-finite loss or gradient at step " in err and "batch " in err, err
    assert "; stopped, " in err
    for path in (tmp_path / "run").glob("*.pt"):
        finite_checkpoint(path)


def test_skip_policy_skips_the_bad_batch_and_keeps_weights_finite(tmp_path: Path) -> None:
    config = tiny(*FAULTY, "run.nonfinite=skip", "data.train_options.mode=nan")
    result = train(config, tmp_path / "run")
    assert result.steps == 6 and result.stop_reason == "completed"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # training data are fresh every epoch, but sample 5 is poisoned in each: one skip an epoch
    assert [r["skipped"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    for name in ("last.pt", "best.pt"):
        finite_checkpoint(tmp_path / "run" / name)
    # too many skips stop the run with the same naming
    with pytest.raises(NonFiniteLossError, match=r"more than run.max_skips=1 skipped steps"):
        train(tiny(*FAULTY, "run.nonfinite=skip", "run.max_skips=1"), tmp_path / "strict")


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_an_infinite_loss_is_named_and_handled(tmp_path, monkeypatch, policy) -> None:
    real = training.losses.forecast_loss
    calls = {"n": 0}

    def loss(kind, pred, target, **options):
        calls["n"] += 1
        value = real(kind, pred, target, **options)
        return value * math.inf if calls["n"] == 4 else value  # step 4: epoch 2, batch 2

    monkeypatch.setattr(training.losses, "forecast_loss", loss)
    out = tmp_path / "run"
    if policy == "stop":
        with pytest.raises(NonFiniteLossError, match=r"at step 3 \(epoch 2, batch 2 .*loss inf"):
            train(tiny("run.nonfinite=stop"), out)
        assert finite_checkpoint(out / "last.pt")["step"] == 2  # the epoch-1 checkpoint
    else:
        assert train(tiny("run.nonfinite=skip"), out).steps == 6
        assert finite_checkpoint(out / "last.pt")["trainer"]["skipped"] == 1


def test_weights_that_turn_non_finite_are_never_saved(tmp_path: Path) -> None:
    out = tmp_path / "run"
    before: dict = {}

    def poison(step: int) -> None:
        if step == 2:
            before.update(load_checkpoint(out / "best.pt") if (out / "best.pt").exists() else {})
        if step == 4:  # the last step of epoch 2: the epoch-end save must refuse
            with torch.no_grad():
                next(trainer_model["model"].parameters()).fill_(math.nan)

    trainer_model: dict = {}
    real_init = training.loop.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        trainer_model["model"] = self.model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.loop.Trainer, "__init__", init)
        with pytest.raises(
            NonFiniteLossError, match=r"refusing to save last\.pt: .*NaN/inf at step 4"
        ):
            train(tiny(), out, on_step=poison)
    assert finite_checkpoint(out / "last.pt")["step"] == 2
    assert finite_checkpoint(out / "best.pt")["step"] == 2


def test_a_nan_batch_under_bce_loss_follows_the_policy(tmp_path: Path) -> None:
    # (the default recipe's loss; F.binary_cross_entropy used to raise on NaN before the policy)
    config = tiny(*FAULTY, "optim.loss=bce", "run.nonfinite=skip", "data.train_options.mode=nan")
    assert train(config, tmp_path / "run").steps == 6
    assert finite_checkpoint(tmp_path / "run" / "last.pt")["trainer"]["skipped"] == 3
    with pytest.raises(NonFiniteLossError, match=r"at step \d \(epoch 1, batch \d"):
        train(tiny(*FAULTY, "optim.loss=bce", "data.train_options.mode=nan"), tmp_path / "stop")


# ----------------------------------------------------------------------------- DataLoader workers


def test_a_worker_that_dies_is_a_clear_error_not_a_hang(tmp_path, capsys) -> None:
    started = time.monotonic()
    code, err = cli_train(
        capsys, tmp_path / "run", *FAULTY, "data.train_options.mode=exit", "data.num_workers=1"
    )
    assert code == 1 and err.startswith("convlstm train: error: DataLoader worker (pid"), err
    assert "exited unexpectedly" in err and len(err.splitlines()) == 1
    assert time.monotonic() - started < 60


def test_a_worker_that_raises_stops_the_run(tmp_path, capsys) -> None:
    started = time.monotonic()
    code, err = cli_train(
        capsys, tmp_path / "run", *FAULTY, "data.train_options.mode=raise", "data.num_workers=1"
    )
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "Caught ValueError in DataLoader worker process 0" in err
    assert time.monotonic() - started < 60


def test_a_worker_error_names_its_cause_on_the_command_line(tmp_path, capsys) -> None:
    # (the command line used to keep only "Caught ValueError in DataLoader worker process 0.")
    code, err = cli_train(
        capsys, tmp_path / "run", *FAULTY, "data.train_options.mode=raise", "data.num_workers=1"
    )
    assert code == 1 and "checksum mismatch in shard 7" in err


# ----------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("count", [1, 2])
def test_ctrl_c_saves_and_a_second_one_aborts(tmp_path, capsys, monkeypatch, count) -> None:
    """SIGINT (in-process; SIGTERM from outside is in test_reliability_kill): the first one saves
    the exact step and exits 130; a second one aborts at once, keeping the last checkpoint."""
    import signal

    straight = tmp_path / "straight"
    assert cli_train(capsys, straight)[0] == 0
    real = training.loop.Trainer._step

    def step(self, inputs, targets):
        value = real(self, inputs, targets)
        if self.state.step == 3:  # mid-epoch 2
            for _ in range(count):
                signal.raise_signal(signal.SIGINT)
        return value

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(training.loop.Trainer, "_step", step)
        code, err = cli_train(capsys, out)
    assert code == 130 and len(err.splitlines()) == 1, err
    if count == 1:
        assert err == (
            f"convlstm train: interrupted by SIGINT at step 3; checkpoint saved to "
            f"{out / 'last.pt'}; continue with: convlstm train --out {out} --resume"
        )
        assert load_checkpoint(out / "last.pt")["step"] == 3
    else:
        assert err == "convlstm train: interrupted"
        assert load_checkpoint(out / "last.pt")["step"] == 2  # epoch 1's, intact
    assert not list(out.glob(".*.tmp"))
    assert cli_train(capsys, out, "--resume")[0] == 0
    for key, value in load_checkpoint(straight / "last.pt")["model_state"].items():
        assert torch.equal(load_checkpoint(out / "last.pt")["model_state"][key], value), key


# ----------------------------------------------------------------------------- disks and folders


class FailingFile:
    """A file object whose writes (or fsync) fail with ``error`` after ``budget`` bytes."""

    def __init__(self, handle, error: int, budget: int) -> None:
        self.handle, self.error, self.budget = handle, error, budget

    def write(self, data) -> int:
        if self.budget < len(data):
            self.handle.write(data[: max(self.budget, 0)])
            self.budget = 0
            raise OSError(self.error, os.strerror(self.error))
        self.budget -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)


def fail_writes(monkeypatch, error: int, after_files: int, budget: int = 1000) -> None:
    """Make every atomic file write after the first ``after_files`` fail with ``error``."""
    real = os.fdopen
    opened = {"n": 0}

    def fdopen(fd, *args, **kwargs):
        handle = real(fd, *args, **kwargs)
        opened["n"] += 1
        return handle if opened["n"] <= after_files else FailingFile(handle, error, budget)

    monkeypatch.setattr(_atomic.os, "fdopen", fdopen)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(
    tmp_path, capsys, monkeypatch, error
) -> None:
    out = tmp_path / "run"
    # files written: config.yaml, best.pt, last.pt (epoch 1), then epoch 2's fail
    fail_writes(monkeypatch, error, after_files=3)
    code, err = cli_train(capsys, out)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("convlstm train: error: "), err
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
    ]  # no temporary file left behind
    assert finite_checkpoint(out / "last.pt")["step"] == 2
    monkeypatch.undo()
    code, err = cli_train(capsys, out, "--resume")  # once there is room again, resume works
    assert code == 0, err


def test_a_full_disk_is_named_with_the_file(tmp_path, capsys, monkeypatch) -> None:
    # (torch.save used to turn a part-way ENOSPC into "unexpected pos N vs M")
    fail_writes(monkeypatch, errno.ENOSPC, after_files=3)
    code, err = cli_train(capsys, tmp_path / "run")
    assert code == 1 and "No space left on device" in err, err
    assert f"cannot write checkpoint {tmp_path / 'run'}" in err and ".pt" in err, err


def test_a_failing_fsync_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    monkeypatch.setattr(_atomic.os, "fsync", fsync)
    code, err = cli_train(capsys, out)
    assert code == 1 and "Input/output error" in err
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_an_output_folder_under_a_regular_file(tmp_path, capsys) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    code, err = cli_train(capsys, blocker / "run")
    assert code == 1 and len(err.splitlines()) == 1
    assert f"{blocker} is a file, not a folder" in err and str(blocker / "run") in err, err
    assert blocker.read_text() == "mine"


def test_a_folder_that_refuses_writes_mid_run(tmp_path, capsys, monkeypatch) -> None:
    # root ignores chmod, so permissions are denied by failing the temporary file's creation
    out = tmp_path / "run"
    real = os.open
    count = {"n": 0}

    def deny(path, flags, *args, **kwargs):
        if str(path).endswith(".tmp") and Path(path).parent == out:
            count["n"] += 1
            if count["n"] > 3:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(_atomic.os, "open", deny)
    code, err = cli_train(capsys, out)
    assert code == 1 and "Permission denied" in err and str(out) in err, err
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert load_checkpoint(out / "best.pt")["step"] == 2


def test_a_failed_metrics_append_does_not_corrupt_the_log(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    real_open = open
    calls = {"n": 0}

    def failing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if Path(file).name == "metrics.jsonl" and "a" in mode:
            calls["n"] += 1
            if calls["n"] == 2:
                return FailingFile(handle, errno.ENOSPC, budget=20)
        return handle

    monkeypatch.setattr(training.rundir, "open", failing_open, raising=False)
    assert cli_train(capsys, out)[0] == 1
    monkeypatch.undo()
    assert cli_train(capsys, out, "--resume")[0] == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_a_run_killed_while_writing_its_first_file_can_be_restarted(tmp_path, capsys) -> None:
    # a crash while writing the first file of a run (config.yaml) leaves only its hidden
    # temporary file: it counts as the run's, never as a stranger's folder
    out = tmp_path / "run"
    out.mkdir()
    leftover = out / ".config.yaml.1a2b3c4d.tmp"
    leftover.write_text("model:\n  name: mov")  # what SIGKILL left
    code, err = cli_train(capsys, out, "--resume")
    assert code == 2 and "cannot resume" in err and "--overwrite" in err, err
    code, err = cli_train(capsys, out, "--overwrite")
    assert code == 0, err
    assert not leftover.exists()
    # the same command again, without --overwrite: a folder with nothing but leftovers is empty
    shutil.rmtree(out)
    out.mkdir()
    leftover.write_text("model:")
    (out / ".last.pt.0a1b2c3d.tmp").write_bytes(b"PK\x03\x04")
    code, err = cli_train(capsys, out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl"
    ]  # fmt: skip


def test_a_folder_of_someone_else_is_still_refused(tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (out / ".notes.txt.1a2b3c4d.tmp").write_text("an editor's")  # not a run file
    code, err = cli_train(capsys, out, "--overwrite")
    assert code == 2 and "does not look like a training run folder" in err, err
    assert (out / "notes.txt").read_text() == "keep"


def metric_rows(out: Path) -> list[dict]:
    keys = ("epoch", "step", "train_loss", "val_mse_frame", "best_val_mse_frame", "lr")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: json.loads(line, parse_constant=reject)[k] for k in keys} for line in lines]


def reject(constant: str):
    raise AssertionError(f"{constant} in metrics.jsonl is not valid JSON")


@pytest.mark.parametrize("at", [1, 2, 3])  # mid-epoch 1, the end of epoch 1, mid-epoch 2
def test_a_signal_keeps_the_training_loss_of_its_epoch(tmp_path, at) -> None:
    # the checkpoint of an interruption carries the epoch's running loss, steps and time, so
    # the resumed run's row equals the uninterrupted one's (it used to average the steps after
    # the resume only, or, at the end of an epoch, write NaN and 0 sequences/s)
    import signal

    straight = tmp_path / "straight"
    train(tiny(), straight)

    def interrupt(step: int) -> None:
        if step == at:
            signal.raise_signal(signal.SIGTERM)

    out = tmp_path / "run"
    with pytest.raises(training.TrainingInterrupted):
        train(tiny(), out, on_step=interrupt)
    assert load_checkpoint(out / "last.pt")["trainer"]["epoch_step"] == 2 - (at % 2)
    train(tiny(), out, resume=True)
    assert metric_rows(out) == metric_rows(straight)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["seq_per_s"] > 0 and math.isfinite(r["train_loss"]) for r in rows), rows


def test_a_signal_at_the_end_of_an_epoch_keeps_its_training_loss(tmp_path) -> None:
    import signal

    def interrupt(step: int) -> None:
        if step == 2:  # the last step of epoch 1
            signal.raise_signal(signal.SIGTERM)

    out = tmp_path / "run"
    with pytest.raises(training.TrainingInterrupted):
        train(tiny(), out, on_step=interrupt)
    train(tiny(), out, resume=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["train_loss"]) for r in rows), rows


def test_an_epoch_without_a_finite_loss_writes_null_not_nan(tmp_path, monkeypatch) -> None:
    # every step skipped: no training loss; the row must stay strict JSON
    real = training.loop.Trainer._step

    def step(self, inputs, targets):
        real(self, inputs, targets)
        return math.nan  # as a skipped step reports

    monkeypatch.setattr(training.loop.Trainer, "_step", step)
    train(tiny("optim.epochs=1"), tmp_path / "run")
    rows = [
        json.loads(line, parse_constant=reject)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[0]["train_loss"] is None and rows[0]["val_mse_frame"] is not None


def test_the_resume_hint_is_a_command_that_resumes(tmp_path, capsys, monkeypatch) -> None:
    import shlex
    import signal

    out = tmp_path / "a run folder"  # a space: the command must quote it
    real = training.loop.Trainer._step

    def step(self, inputs, targets):
        value = real(self, inputs, targets)
        if self.state.step == 3:
            signal.raise_signal(signal.SIGTERM)
        return value

    with monkeypatch.context() as patch:
        patch.setattr(training.loop.Trainer, "_step", step)
        code, err = cli_train(capsys, out)
    assert code == 143
    command = shlex.split(err.split("continue with: ")[1])
    assert command[:2] == ["convlstm", "train"] and "--out" in command, command
    capsys.readouterr()
    assert main(command[1:]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 6


def test_training_prints_a_start_header(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    train(tiny("run.progress=true", "run.max_minutes=30"), out)
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("training moving_mnist (") and str(out) in header, header
    for part in ("parameters)", "on cpu (fp32, 1 process)", "6 steps of 4 sequences",
                 "(2 per epoch)", "time budget 30 min"):  # fmt: skip
        assert part in header, (part, header)
    train(tiny("run.progress=true", "optim.epochs=4"), out, resume=True)
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("; resuming at step 6 (epoch 4)") and "no time budget" in header
