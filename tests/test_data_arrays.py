"""ArrayDataset and split_record: layouts, windows, file formats, splits and bad input."""

from __future__ import annotations

import hashlib
import pickle
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from convlstm.data import ArrayDataset, split_record


def _record(frames: int = 12, height: int = 2, width: int = 3) -> np.ndarray:
    return np.arange(frames * height * width, dtype=np.float32).reshape(frames, height, width)


def test_record_windows_match_a_hand_built_expectation():
    record = _record()
    ds = ArrayDataset(record, input_len=3, output_len=2, layout="record", stride=2)
    starts = [0, 2, 4, 6]  # window of 5 frames must end by frame 11
    assert len(ds) == len(starts)
    for index, start in enumerate(starts):
        inputs, targets = ds[index]
        assert inputs.shape == (3, 1, 2, 3) and targets.shape == (2, 1, 2, 3)
        assert torch.equal(inputs[:, 0], torch.from_numpy(record[start : start + 3]))
        assert torch.equal(targets[:, 0], torch.from_numpy(record[start + 3 : start + 5]))
        assert ds.locate(index) == (0, start)


def test_samples_layout_with_channels_and_several_windows_per_sample():
    data = np.random.default_rng(0).random((3, 7, 2, 4, 4)).astype(np.float32)  # (N, T, C, H, W)
    ds = ArrayDataset(data, input_len=2, output_len=2, stride=3)  # 5-D: samples, no layout needed
    assert ds.layout == "samples" and len(ds) == 3 * 2  # starts 0 and 3 in each sample
    inputs, targets = ds[3]  # sample 1, start 3
    assert ds.locate(3) == (1, 3)
    assert torch.equal(inputs, torch.from_numpy(data[1, 3:5]))
    assert torch.equal(targets, torch.from_numpy(data[1, 5:7]))


def test_layout_is_explicit_when_ambiguous():
    four_d = np.zeros((4, 6, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"4-D array of shape \(4, 6, 5, 5\) is ambiguous"):
        ArrayDataset(four_d, 2, 2)
    as_samples = ArrayDataset(four_d, 2, 2, layout="samples")  # (N, T, H, W)
    as_record = ArrayDataset(four_d, 1, 1, layout="record")  # (T, C, H, W)
    assert as_samples[0][0].shape == (2, 1, 5, 5) and as_record[0][0].shape == (1, 6, 5, 5)
    assert ArrayDataset(_record(), 2, 2).layout == "record"  # 3-D is always a record
    with pytest.raises(ValueError, match=r"layout='record' expects.*5-D shape"):
        ArrayDataset(np.zeros((2, 6, 1, 5, 5)), 2, 2, layout="record")
    with pytest.raises(ValueError, match=r"layout='samples' expects.*3-D"):
        ArrayDataset(_record(), 2, 2, layout="samples")
    with pytest.raises(ValueError, match=r"found 2-D shape \(6, 5\)"):
        ArrayDataset(np.zeros((6, 5)), 2, 2)
    with pytest.raises(ValueError, match=r"layout must be"):
        ArrayDataset(_record(), 2, 2, layout="movie")  # type: ignore[arg-type]


def test_value_scaling_rules():
    u8 = np.full((4, 2, 2), 255, np.uint8)
    assert ArrayDataset(u8, 2, 2)[0][0].max().item() == 1.0
    assert ArrayDataset(u8, 2, 2, scale=2.0)[0][0].max().item() == 510.0
    i16 = np.full((4, 2, 2), 1000, np.int16)
    assert ArrayDataset(i16, 2, 2)[0][1].max().item() == 1000.0
    assert ArrayDataset(np.ones((4, 2, 2), bool), 2, 2)[0][0].dtype == torch.float32
    f64 = torch.full((4, 2, 2), 0.25, dtype=torch.float64)
    assert ArrayDataset(f64, 2, 2)[0][0].dtype == torch.float32
    assert torch.equal(
        ArrayDataset(_record(), 2, 2, transform=lambda x: -x)[0][0][0, 0],
        -torch.tensor(_record()[0]),
    )


def test_npy_is_memory_mapped_read_only_and_never_modified(tmp_path):
    path = tmp_path / "record.npy"
    np.save(path, _record(10))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ds = ArrayDataset(path, 2, 3, layout="record")
    assert isinstance(ds.source.array, np.memmap) and ds.source.array.mode == "r"
    inputs, _ = ds[1]
    inputs += 100  # items are private copies
    assert torch.equal(ds[1][0][:, 0], torch.from_numpy(_record(10)[1:3]))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[4][1], ds[4][1])


def test_npz_members_by_key_mapped_when_stored(tmp_path):
    record = _record(8)
    np.savez(tmp_path / "stored.npz", rain=record, mask=record > 3)
    np.savez_compressed(tmp_path / "packed.npz", rain=record)
    stored = ArrayDataset(tmp_path / "stored.npz", 2, 2, key="rain")
    assert isinstance(stored.source.array, np.memmap)
    packed = ArrayDataset(tmp_path / "packed.npz", 2, 2)  # one array: no key needed
    assert torch.equal(stored[3][1], packed[3][1])
    assert torch.equal(stored[3][1][:, 0], torch.from_numpy(record[5:7]))
    with pytest.raises(ValueError, match=r"holds arrays \['mask', 'rain'\]; pass key="):
        ArrayDataset(tmp_path / "stored.npz", 2, 2)
    with pytest.raises(ValueError, match=r"no array 'snow'.*\['mask', 'rain'\]"):
        ArrayDataset(tmp_path / "stored.npz", 2, 2, key="snow")


def test_hdf5_dataset_is_read_lazily(tmp_path):
    h5py = pytest.importorskip("h5py")
    data = np.random.default_rng(1).random((2, 6, 4, 4)).astype(np.float32)
    path = tmp_path / "radar.h5"
    with h5py.File(path, "w") as handle:
        handle["rain"] = data
        handle["group/other"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"holds datasets.*rain.*pass dataset="):
        ArrayDataset(path, 3, 3, layout="samples")
    ds = ArrayDataset(path, 3, 3, layout="samples", dataset="rain")
    assert len(ds) == 2
    assert torch.equal(ds[1][1], torch.from_numpy(data[1, 3:6, None]))
    with pytest.raises(ValueError, match=r"no dataset 'snow'"):
        ArrayDataset(path, 3, 3, layout="samples", dataset="snow")


def test_missing_h5py_gives_an_actionable_error(tmp_path, monkeypatch):
    path = tmp_path / "radar.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(
        ImportError, match=r"radar\.h5.*needs the optional package h5py.*pip install h5py"
    ):
        ArrayDataset(path, 2, 2, layout="samples")


def test_dataloader_workers_read_a_memory_mapped_file(tmp_path):
    path = tmp_path / "samples.npy"
    data = np.random.default_rng(2).integers(0, 256, (6, 4, 3, 3), dtype=np.uint8)
    np.save(path, data)
    ds = ArrayDataset(path, 2, 2, layout="samples")
    loaded = torch.cat([inputs for inputs, _ in DataLoader(ds, batch_size=2, num_workers=2)])
    assert torch.equal(loaded[:, :, 0], torch.from_numpy(data[:, :2] / np.float32(255)))


def test_split_record_blocks_are_ordered_disjoint_and_separated():
    blocks = split_record(200, window=10, fractions=(0.7, 0.2, 0.1), gap=15)
    train, val, test = blocks["train"], blocks["val"], blocks["test"]
    assert train.start == 0 and test.stop == 200
    assert val.start - train.stop == 15 and test.start - val.stop == 15
    assert len(train) + len(val) + len(test) == 200 - 30
    assert split_record(100, window=5) == {
        "train": range(0, 72),
        "val": range(77, 86),
        "test": range(91, 100),
    }
    assert len(split_record(100, 5, fractions=(1.0, 0.0, 0.0))["val"]) == 0
    with pytest.raises(ValueError, match=r"sum to 1"):
        split_record(100, 5, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match=r"fractions\[0\]"):
        split_record(100, 5, fractions=(1.2, -0.1, -0.1))
    with pytest.raises(ValueError, match=r"val block would have 3 steps, fewer than window = 5"):
        split_record(40, 5, fractions=(0.8, 0.1, 0.1), gap=5)


def test_split_windows_never_share_frames_across_splits():
    record = _record(120, 1, 1)
    frames_used = {}
    for split in ("train", "val", "test"):
        ds = ArrayDataset(record, 4, 3, layout="record", split=split)
        used = set()
        for index in range(len(ds)):
            inputs, targets = ds[index]
            used |= {int(v) for v in torch.cat([inputs, targets]).flatten()}
        frames_used[split] = used
    assert not frames_used["train"] & frames_used["val"]
    assert not frames_used["val"] & frames_used["test"]
    assert min(frames_used["val"]) - max(frames_used["train"]) > 7  # one window of gap
    assert min(frames_used["test"]) - max(frames_used["val"]) > 7
    samples = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((10, 4, 2, 2))
    seen = [
        {
            int(ArrayDataset(samples, 2, 2, layout="samples", split=s)[i][0][0, 0, 0, 0])
            for i in range(len(ArrayDataset(samples, 2, 2, layout="samples", split=s)))
        }
        for s in ("train", "val", "test")
    ]
    assert seen == [set(range(8)), {8}, {9}]
    with pytest.raises(ValueError, match=r"split must be one of"):
        ArrayDataset(record, 4, 3, split="validation")


def test_nan_and_inf_are_reported_with_the_window_lazily_or_up_front(tmp_path):
    record = _record(10)
    record[6, 1, 1] = np.nan
    path = tmp_path / "holes.npy"
    np.save(path, record)
    ds = ArrayDataset(path, 2, 2, layout="record")
    assert ds[2][0].isfinite().all()  # frames 2-5 are clean
    with pytest.raises(ValueError, match=r"holes.npy.*window 3 \(frames 3..6\).*NaN"):
        ds[3]
    with pytest.raises(ValueError, match=r"holes.npy.*frame 6 contains NaN"):
        ArrayDataset(path, 2, 2, layout="record", check_finite=True)
    samples = np.zeros((3, 4, 2, 2), np.float64)
    samples[2, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"window 2 \(sample 2, frames 0..3\)"):
        ArrayDataset(samples, 2, 2, layout="samples")[2]
    with pytest.raises(ValueError, match=r"sample 2 contains NaN or infinite"):
        ArrayDataset(samples, 2, 2, layout="samples", check_finite=True)
    with pytest.raises(ValueError, match=r"window 0"):
        ArrayDataset(np.full((4, 2, 2), 1e300), 2, 2)[0]  # overflows float32


def test_bad_files_and_arrays_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent.npy"):
        ArrayDataset(tmp_path / "absent.npy", 2, 2)
    good = tmp_path / "good.npy"
    np.save(good, _record(50, 8, 8))
    truncated = tmp_path / "cut.npy"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"cut.npy.*truncated.*\(50, 8, 8\)"):
        ArrayDataset(truncated, 2, 2)
    foreign = tmp_path / "foreign.npy"
    foreign.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"foreign.npy.*not a readable .npy"):
        ArrayDataset(foreign, 2, 2)
    broken_zip = tmp_path / "broken.npz"
    broken_zip.write_bytes(b"PK\x03\x04 nothing else")
    with pytest.raises(ValueError, match=r"broken.npz.*not a readable .npz"):
        ArrayDataset(broken_zip, 2, 2)
    with pytest.raises(ValueError, match=r"suffix '.csv'"):
        (tmp_path / "table.csv").write_text("1,2")
        ArrayDataset(tmp_path / "table.csv", 2, 2)
    with pytest.raises(ValueError, match=r"key= applies to .npz"):
        ArrayDataset(good, 2, 2, key="rain")
    with pytest.raises(ValueError, match=r"dataset= applies to HDF5"):
        ArrayDataset(_record(), 2, 2, dataset="rain")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.empty((4, 2, 2), dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match=r"objects.npy.*pickle"):
        ArrayDataset(objects, 2, 2)
    with pytest.raises(TypeError, match=r"complex128"):
        ArrayDataset(np.zeros((4, 2, 2), complex), 2, 2)
    with pytest.raises(TypeError, match=r"file path, a numpy array or a torch tensor, got list"):
        ArrayDataset([[[0.0]]], 2, 2)  # type: ignore[arg-type]


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(
        ValueError, match=r"the record has 5 frames \(shape \(5, 2, 3\)\).*= 6 are needed"
    ):
        ArrayDataset(_record(5), 3, 3)
    with pytest.raises(ValueError, match=r"each sample has 3 frames .*\(2, 3, 4, 4\)"):
        ArrayDataset(np.zeros((2, 3, 4, 4)), 2, 2, layout="samples")
    with pytest.raises(ValueError, match=r"empty"):
        ArrayDataset(np.zeros((0, 4, 4, 4)), 2, 2, layout="samples")
    huge = np.broadcast_to(np.zeros(1, np.float32), (1, 30, 1, 10_000, 10_000))
    with pytest.raises(ValueError, match=r"GiB"):
        ArrayDataset(huge, 15, 15)
    for kwargs, match in [
        ({"input_len": 0}, "input_len must be an integer >= 1, got 0"),
        ({"stride": 0}, "stride"),
        ({"scale": float("inf")}, "scale"),
    ]:
        with pytest.raises(ValueError, match=match):
            ArrayDataset(_record(), **{"input_len": 2, "output_len": 2, **kwargs})
    with pytest.raises(IndexError, match=r"out of range"):
        ArrayDataset(_record(), 2, 2)[100]
