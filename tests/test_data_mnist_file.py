"""The standard Moving MNIST file: reading through a memmap, writing atomically, bad files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from convlstm.data import MovingMNIST, MovingMNISTFile, write_moving_mnist


@pytest.fixture
def published(tmp_path):
    """A small file in the published layout: uint8 (T=20, N=5, 16, 16), time-major."""
    array = np.random.default_rng(0).integers(0, 256, size=(20, 5, 16, 16), dtype=np.uint8)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, array)
    return path, array


def test_reads_published_layout_batch_major_with_split_and_scaling(published):
    path, array = published
    ds = MovingMNISTFile(path)
    assert len(ds) == 5
    assert isinstance(ds.array, np.memmap) and ds.array.mode == "r"
    inputs, targets = ds[3]
    assert inputs.shape == (10, 1, 16, 16) and targets.dtype == torch.float32
    expected = torch.from_numpy(array[:, 3].astype(np.float32) / 255).unsqueeze(1)
    assert torch.equal(inputs, expected[:10]) and torch.equal(targets, expected[10:])
    shorter = MovingMNISTFile(path, input_len=4, output_len=6)
    inputs, targets = shorter[-1]
    assert torch.equal(inputs, expected_for(array, 4, 0, 4)) and targets.shape[0] == 6
    assert torch.equal(targets, expected_for(array, 4, 4, 10))


def expected_for(array: np.ndarray, index: int, start: int, stop: int) -> torch.Tensor:
    return torch.from_numpy(array[start:stop, index].astype(np.float32) / 255).unsqueeze(1)


def test_pickles_without_the_data_and_reopens(published):
    path, _ = published
    ds = MovingMNISTFile(path)
    _ = ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 2000
    clone = pickle.loads(blob)
    assert torch.equal(clone[2][0], ds[2][0])


def test_write_then_read_round_trips_bit_exactly(tmp_path):
    generated = MovingMNIST(num_samples=4, size=32, input_len=3, output_len=5, seed=2)
    path = write_moving_mnist(tmp_path / "generated.npy", generated)
    stored = np.load(path)
    assert stored.dtype == np.uint8 and stored.shape == (8, 4, 32, 32)
    ds = MovingMNISTFile(path, input_len=3, output_len=5)
    for i in range(len(generated)):
        for read, made in zip(ds[i], generated[i], strict=True):
            assert torch.equal(read, made)


def test_write_accepts_batch_major_arrays(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 20, 8, 8), dtype=np.uint8)
    write_moving_mnist(tmp_path / "u8.npy", frames)
    np.testing.assert_array_equal(np.load(tmp_path / "u8.npy"), frames.transpose(1, 0, 2, 3))
    write_moving_mnist(tmp_path / "f32.npy", torch.from_numpy(frames[:, :, None] / np.float32(255)))
    np.testing.assert_array_equal(np.load(tmp_path / "f32.npy"), frames.transpose(1, 0, 2, 3))


def test_refuses_to_overwrite_and_replaces_only_when_asked(tmp_path):
    path = tmp_path / "mm.npy"
    write_moving_mnist(path, np.zeros((1, 20, 4, 4), np.uint8))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        write_moving_mnist(path, np.ones((1, 20, 4, 4), np.uint8))
    assert path.read_bytes() == before
    write_moving_mnist(path, np.ones((2, 20, 4, 4), np.uint8), overwrite=True)
    assert np.load(path).shape == (20, 2, 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm.npy"]


class _FailingDataset:
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int):
        if index == 2:
            raise RuntimeError("disk on fire")
        return torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)


def test_failed_write_leaves_existing_file_and_no_temporary(tmp_path):
    path = tmp_path / "mm.npy"
    write_moving_mnist(path, np.zeros((1, 4, 4, 4), np.uint8))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match=r"disk on fire"):
        write_moving_mnist(path, _FailingDataset(), overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mm.npy"]


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (np.full((1, 20, 4, 4), 1.5, np.float32), ValueError, r"within \[0, 1\]"),
        (np.full((1, 20, 4, 4), np.nan, np.float32), ValueError, "finite"),
        (np.zeros((20, 4, 4), np.uint8), ValueError, r"\(N, T, H, W\).*\(20, 4, 4\)"),
        (np.zeros((1, 20, 4, 4), np.int32), TypeError, "int32"),
        (MovingMNIST(num_samples=0), ValueError, "empty"),
    ],
)
def test_write_rejects_bad_data(tmp_path, data, error, match):
    with pytest.raises(error, match=match):
        write_moving_mnist(tmp_path / "x.npy", data)
    assert not list(tmp_path.iterdir())


def test_write_rejects_multichannel_datasets_and_missing_folders(tmp_path):
    class ThreeChannels:
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            return torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)

    with pytest.raises(ValueError, match=r"\(T_in, 1, H, W\).*\(2, 3, 4, 4\)"):
        write_moving_mnist(tmp_path / "x.npy", ThreeChannels())
    with pytest.raises(FileNotFoundError, match=r"nowhere"):
        write_moving_mnist(tmp_path / "nowhere" / "x.npy", np.zeros((1, 2, 4, 4), np.uint8))


def test_bad_files_raise_clear_errors(tmp_path, published):
    path, _ = published
    with pytest.raises(FileNotFoundError, match=r"absent.npy"):
        MovingMNISTFile(tmp_path / "absent.npy")
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"truncated.npy.*truncated.*\(20, 5, 16, 16\)"):
        MovingMNISTFile(truncated)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match=r"garbage.npy.*not a readable .npy"):
        MovingMNISTFile(garbage)
    cases = {
        "three_d.npy": (
            np.zeros((20, 16, 16), np.uint8),
            ValueError,
            r"\(T, N, H, W\).*\(20, 16, 16\)",
        ),
        "floats.npy": (np.zeros((20, 2, 4, 4), np.float32), TypeError, "uint8.*float32"),
        "short.npy": (np.zeros((12, 2, 4, 4), np.uint8), ValueError, "12 frames.*20 needed"),
        "strings.npy": (np.array([["a"]]), TypeError, "numeric"),
    }
    for name, (content, error, match) in cases.items():
        np.save(tmp_path / name, content)
        with pytest.raises(error, match=f"{name}.*{match}"):
            MovingMNISTFile(tmp_path / name)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match=r"objects.npy.*pickle"):
        MovingMNISTFile(pickled)
    with pytest.raises(ValueError, match=r"not a regular file"):
        MovingMNISTFile(tmp_path)
