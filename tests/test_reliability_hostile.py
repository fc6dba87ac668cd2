"""Hostile or broken input: checkpoints that would run code, do not fit, are truncated or
corrupt; data files that are truncated, of the wrong dtype, object arrays, or whose header claims
an absurd shape; output paths that are symlinks or lie under regular files.

Every case must be a clear error (a ``CheckpointError``/``ValueError``/``TypeError`` naming the
file, exit status 1 or 2 with one stderr line from the command line), must never execute
anything, allocate what a header claims before checking it, or overwrite anything.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import resource
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    make_checkpoint,
    save_checkpoint,
)
from convlstm.cli import main
from convlstm.config import Config, apply_overrides, config_to_dict
from convlstm.data import ArrayDataset, MovingMNISTFile
from convlstm.models import EncoderForecaster
from convlstm.predict import load_frames
from test_reliability_support import TINY, rss_mb

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = EncoderForecaster(1, [4], 3, patch_size=4)
    config = config_to_dict(apply_overrides(Config(), ["data.input_len=2", "data.horizon=2"]))
    return save_checkpoint(tmp_path / "good.pt", make_checkpoint(model, "moving_mnist", config))


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return code, err


# ----------------------------------------------------------------------------- checkpoints


def malicious_files(folder: Path, marker: Path) -> dict[str, Path]:
    """Checkpoint-looking files whose unpickling would create ``marker``."""
    good_looking = {
        "format": "convlstm.checkpoint",
        "format_version": 1,
        "model_name": "moving_mnist",
        "model_config": {"in_channels": 1, "hidden_channels": [4]},
        "model_state": {},
        "config": {"data": Payload(marker)},  # buried where a loader might not look
    }
    files = {
        "zip": folder / "zip.pt",
        "legacy": folder / "legacy.pt",
        "raw pickle": folder / "raw.pt",
        "nested": folder / "nested.pt",
    }
    torch.save({"x": Payload(marker)}, files["zip"])
    torch.save({"x": Payload(marker)}, files["legacy"], _use_new_zipfile_serialization=False)
    files["raw pickle"].write_bytes(pickle.dumps(Payload(marker)))
    torch.save(good_looking, files["nested"])
    return files


def test_malicious_pickles_are_refused_and_never_run(tmp_path, capsys, checkpoint) -> None:
    marker = tmp_path / "PWNED"
    files = malicious_files(tmp_path, marker)
    # control: the files really are live (an unsafe load runs the payload)
    torch.load(files["zip"], weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((1, 2, 16, 16), np.float32))
    for kind, path in files.items():
        for loader in (load_checkpoint, load_model):
            with pytest.raises(CheckpointError, match=re.escape(str(path))):
                loader(path)
        code, err = run_cli(
            capsys, "evaluate", "--checkpoint", str(path), "--data", "moving_mnist", "--out",
            str(tmp_path / f"eval-{kind}"), "--num-samples", "2",
        )  # fmt: skip
        assert code == 1 and len(err.splitlines()) == 1 and str(path) in err, err
        code, err = run_cli(
            capsys, "predict", "--checkpoint", str(path), "--input", str(frames), "--out",
            str(tmp_path / f"pred-{kind}.npy"),
        )  # fmt: skip
        assert code == 1 and len(err.splitlines()) == 1, err
        assert not marker.exists(), kind
    # resuming a run whose last.pt was replaced by a malicious file
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "optim.epochs=1"]) == 0
    (run / "last.pt").write_bytes(files["nested"].read_bytes())
    code, err = run_cli(capsys, "train", "--out", str(run), "--resume")
    assert code == 1 and "last.pt" in err
    assert not marker.exists()
    assert not list(tmp_path.glob("eval-*")) and not list(tmp_path.glob("pred-*"))


def test_weights_that_do_not_fit_name_keys_and_shapes(tmp_path, capsys, checkpoint) -> None:
    raw = torch.load(checkpoint, weights_only=True)
    raw["model_config"]["hidden_channels"] = [6]
    torch.save(raw, tmp_path / "wider.pt")
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "wider.pt")
    message = str(error.value)
    assert "does not fit the model" in message
    assert "encoder.cells.0.weight_hh: checkpoint (16, 4, 3, 3) vs model (24, 6, 3, 3)" in message
    raw = torch.load(checkpoint, weights_only=True)
    raw["model_state"]["decoder.extra"] = torch.zeros(1)
    del raw["model_state"]["readout.bias"]
    torch.save(raw, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: readout.bias \| unexpected keys: "):
        load_model(tmp_path / "keys.pt")
    code, err = run_cli(
        capsys, "evaluate", "--checkpoint", str(tmp_path / "wider.pt"), "--data", "moving_mnist",
        "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert code == 1 and "does not fit the model" in err and "vs model" in err
    # resuming with another model: the same report, nothing overwritten
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "optim.epochs=1"]) == 0
    before = (run / "last.pt").read_bytes()
    code, err = run_cli(capsys, "train", "--out", str(run), "--resume", "model.hidden_channels=[6]")
    assert code == 1 and "does not fit the model" in err and "shape mismatches" in err, err
    assert (run / "last.pt").read_bytes() == before


def test_every_truncation_and_header_damage_is_a_checkpoint_error(tmp_path, checkpoint) -> None:
    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.pt"
    for size in [*range(0, len(data), max(len(data) // 60, 1)), len(data) - 1]:
        cut.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=r"cut\.pt"):
            load_model(cut)
    for offset in (0, len(data) - 22):  # the zip's first record, its end-of-directory record
        damaged = bytearray(data)
        damaged[offset : offset + 4] = b"\xff\xff\xff\xff"
        cut.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError):
            load_model(cut)
    for bad in ({"format": "convlstm.checkpoint", "format_version": 99}, [1, 2], {"a": 1}):
        torch.save(bad, cut)
        with pytest.raises(CheckpointError, match=r"format|not a convlstm checkpoint"):
            load_checkpoint(cut)


def tensor_data_offset(path: Path, record: str) -> int:
    data = path.read_bytes()
    info = zipfile.ZipFile(path).getinfo(record)
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_len + extra_len


def test_a_bit_flip_in_the_weights_is_detected(tmp_path, checkpoint) -> None:
    # torch.load does not verify the zip records' CRC-32: load_checkpoint does
    data = bytearray(checkpoint.read_bytes())
    data[tensor_data_offset(checkpoint, "archive/data/0") + 100] ^= 0x40
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped\.pt.*record archive/data/0"):
        load_model(flipped)
    with pytest.raises(CheckpointError, match=r"flipped\.pt.*checksum"):
        load_checkpoint(flipped)
    load_model(checkpoint)  # the healthy file still loads


def test_a_refused_pickle_never_advises_loading_it_unsafely(tmp_path) -> None:
    files = malicious_files(tmp_path, tmp_path / "PWNED")
    for path in files.values():
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path)
        message = str(error.value)
        assert "weights_only" not in message and "False" not in message, message
        assert "written by convlstm" in message, message
        if path != files["raw pickle"]:  # (that one stops at its first, unsupported operand)
            assert "refused" in message and "other than tensors" in message, message
            assert "GLOBAL posix.mkdir" in message, message
    assert not (tmp_path / "PWNED").exists()


def test_an_absurd_model_config_is_refused_before_allocation(tmp_path, checkpoint) -> None:
    # a 28 kB file claiming [3000] used to allocate 2.7 GB for 9 s, [10**7] an allocator error
    raw = torch.load(checkpoint, weights_only=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for hidden in ([10**7], [3000], [4, 3000]):
        raw["model_config"]["hidden_channels"] = hidden
        torch.save(raw, tmp_path / "huge.pt")
        started = time.monotonic()
        with pytest.raises(CheckpointError, match=r"does not fit the model|invalid model_config"):
            load_model(tmp_path / "huge.pt")
        assert time.monotonic() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak < 100


# ----------------------------------------------------------------------------- data files


def npy_bytes(shape: tuple, descr: str = "<f4", payload: bytes = b"\0" * 64) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return header.getvalue() + payload


HUGE = (10**6, 10**6, 64, 64)  # 16 PB of float32


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    files = {}

    def put(name: str, data: bytes) -> None:
        files[name] = tmp_path / name
        files[name].write_bytes(data)

    good = io.BytesIO()
    np.save(good, np.zeros((2, 6, 16, 16), np.float32))
    put("truncated.npy", good.getvalue()[: len(good.getvalue()) // 2])
    put("header-only.npy", good.getvalue()[:70])
    put("empty.npy", b"")
    put("not-numpy.npy", b"GIF89a" + b"\0" * 100)
    put("huge.npy", npy_bytes(HUGE))
    put("huge-uint8.npy", npy_bytes((20, 10**9, 64, 64), "|u1"))
    put("negative.npy", npy_bytes((2, -6, 16, 16)))
    for name, dtype in (("complex", np.complex64), ("strings", "U3"), ("dates", "M8[s]")):
        array = io.BytesIO()
        np.save(array, np.zeros((2, 6, 16, 16), dtype))
        put(f"{name}.npy", array.getvalue())
    objects = io.BytesIO()
    marker = tmp_path / "PWNED"
    np.save(objects, np.array([Payload(marker), None], dtype=object), allow_pickle=True)
    put("objects.npy", objects.getvalue())
    for name, method in (("huge-deflated.npz", zipfile.ZIP_DEFLATED), ("huge-stored.npz", 0)):
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", method) as z:
            z.writestr("frames.npy", npy_bytes(HUGE))
        put(name, archive.getvalue())
    objects_npz = io.BytesIO()
    with zipfile.ZipFile(objects_npz, "w") as z:
        z.writestr("frames.npy", objects.getvalue())
    put("objects.npz", objects_npz.getvalue())
    put("corrupt.npz", b"PK\x03\x04" + b"\xff" * 200)
    return files


READERS = {
    "ArrayDataset": lambda path: ArrayDataset(path, 2, 2, layout="samples"),
    "MovingMNISTFile": lambda path: MovingMNISTFile(path, 2, 2),
    "predict.load_frames": lambda path: load_frames(path, 1),
}


def test_hostile_data_files_are_clear_errors(hostile, tmp_path) -> None:
    start = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for name, path in hostile.items():
        for reader, read in READERS.items():
            if (name, reader) in KNOWN_DEFECTS:
                continue  # test_defects_with_hostile_files
            with pytest.raises((ValueError, TypeError)) as error:
                read(path)
            assert path.name in str(error.value), (name, reader, error.value)
    assert not (tmp_path / "PWNED").exists()  # the object array was never unpickled
    # nothing that a header claimed was allocated (the process did not grow)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak < 100
    assert rss_mb() - start < 100


def test_object_arrays_name_pickle_and_stay_refused(hostile) -> None:
    for reader in ("ArrayDataset", "MovingMNISTFile"):
        with pytest.raises(TypeError, match="object arrays need pickle, which stays disabled"):
            READERS[reader](hostile["objects.npy"])
    with pytest.raises(ValueError, match=r"objects\.npy"):
        load_frames(hostile["objects.npy"], 1)


# (file, reader) -> the exception that used to escape instead of a ValueError naming the file
FIXED_DEFECTS = {
    # predict read .npz with np.load, which allocates the header's claimed shape before reading
    ("huge-deflated.npz", "predict.load_frames"): MemoryError,
    ("huge-stored.npz", "predict.load_frames"): MemoryError,
    # predict did not catch zipfile.BadZipFile
    ("corrupt.npz", "predict.load_frames"): zipfile.BadZipFile,
    # predict did not read .npy headers through data._io, which refuses negative dimensions
    ("negative.npy", "predict.load_frames"): OverflowError,
}
KNOWN_DEFECTS: dict[tuple[str, str], type[BaseException]] = {}  # none left


@pytest.mark.parametrize(("name", "reader"), list(FIXED_DEFECTS))
def test_defects_with_hostile_files(hostile, name, reader) -> None:
    with pytest.raises((ValueError, TypeError), match=re.escape(name)):
        READERS[reader](hostile[name])


def test_hostile_data_through_the_command_line(hostile, tmp_path, capsys, checkpoint) -> None:
    for name in ("truncated.npy", "huge.npy", "objects.npy", "complex.npy", "header-only.npy"):
        out = tmp_path / f"pred-{name}.npy"
        code, err = run_cli(
            capsys, "predict", "--checkpoint", str(checkpoint), "--input", str(hostile[name]),
            "--out", str(out),
        )  # fmt: skip
        assert code == 1 and len(err.splitlines()) == 1 and name in err, (name, err)
        assert err.startswith("convlstm predict: error: ") and not out.exists()
        report = tmp_path / f"eval-{name}"
        code, err = run_cli(
            capsys, "evaluate", "--checkpoint", str(checkpoint), "--data", str(hostile[name]),
            "--out", str(report), "--layout", "samples",
        )  # fmt: skip
        assert code == 1 and len(err.splitlines()) == 1 and name in err, (name, err)
        assert not report.exists()
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- output paths


def test_outputs_through_symlinks_never_write_outside(tmp_path, capsys, checkpoint) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.npy"
    precious.write_bytes(b"keep me")
    folder = outside / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    work = tmp_path / "work"
    work.mkdir()
    frames = work / "frames.npy"
    np.save(frames, np.random.default_rng(0).random((1, 2, 1, 16, 16), dtype=np.float32))
    link = work / "forecast.npy"
    link.symlink_to(precious)
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(frames), "--out", str(link)]
    code, err = run_cli(capsys, *args)
    assert code == 2 and "already exists (pass --overwrite" in err
    code, err = run_cli(capsys, *args, "--overwrite")  # a link is never replaced (issue 19)
    assert code == 2 and "is a symbolic link to" in err, err
    assert precious.read_bytes() == b"keep me"  # nothing written through the link
    assert link.is_symlink()
    report = work / "report"
    report.symlink_to(folder, target_is_directory=True)
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", "moving_mnist",
            "--out", str(report), "--num-samples", "2", "--gifs", "0"]  # fmt: skip
    assert run_cli(capsys, *args)[0] == 2
    code, err = run_cli(capsys, *args, "--overwrite")
    assert code == 2 and "is a symbolic link to" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]  # untouched
    assert report.is_symlink()
    # a run folder whose checkpoints and config are links to files elsewhere
    run = work / "run"
    assert main(["train", "--out", str(run), *TINY, "optim.epochs=1"]) == 0
    for name in ("last.pt", "best.pt", "config.yaml"):
        target = outside / f"victim-{name}"
        target.write_bytes((run / name).read_bytes())
        (run / name).unlink()
        (run / name).symlink_to(target)
    before = {p.name: p.read_bytes() for p in outside.glob("victim-*")}
    assert main(["train", "--out", str(run), "--resume", "optim.epochs=2"]) == 0
    assert {p.name: p.read_bytes() for p in outside.glob("victim-*")} == before
    assert not (run / "last.pt").is_symlink() and load_checkpoint(run / "last.pt")["step"] == 4
    # --overwrite of a run folder that is a symlink deletes nothing behind it
    linked_run = work / "linked-run"
    linked_run.symlink_to(run, target_is_directory=True)
    code, err = run_cli(capsys, "train", "--out", str(linked_run), "--overwrite", *TINY)
    assert code in (1, 2) and len(err.splitlines()) == 1, err
    assert (run / "last.pt").is_file()


def test_output_paths_under_regular_files(tmp_path, capsys, checkpoint) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((1, 2, 1, 16, 16), np.float32))
    # (the message is "[Errno 17] File exists: '.../file.txt'", from mkdir of the parent)
    code, err = run_cli(
        capsys, "predict", "--checkpoint", str(checkpoint), "--input", str(frames),
        "--out", str(blocker / "forecast.npy"),
    )  # fmt: skip
    assert code in (1, 2) and str(blocker) in err and len(err.splitlines()) == 1, err
    code, err = run_cli(
        capsys, "evaluate", "--checkpoint", str(checkpoint), "--data", "moving_mnist",
        "--out", str(blocker / "report"), "--num-samples", "2",
    )  # fmt: skip
    assert code in (1, 2) and str(blocker) in err and len(err.splitlines()) == 1, err
    code, err = run_cli(
        capsys, "evaluate", "--checkpoint", str(checkpoint), "--data", "moving_mnist",
        "--out", str(blocker), "--num-samples", "2",
    )  # fmt: skip
    assert code == 2 and "already exists" in err
    assert blocker.read_text() == "mine"
