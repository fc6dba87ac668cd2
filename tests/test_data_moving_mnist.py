"""Generated Moving MNIST: determinism, motion, composition, sharding, digit pools and files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from convlstm.data import MovingMNIST, SyntheticRadar, bundled_mnist_digits, load_mnist_digits


def test_items_have_documented_shapes_dtype_and_range():
    ds = MovingMNIST(num_samples=3, input_len=7, output_len=5, size=(40, 52))
    inputs, targets = ds[1]
    assert inputs.shape == (7, 1, 40, 52) and targets.shape == (5, 1, 40, 52)
    assert inputs.dtype == targets.dtype == torch.float32
    frames = torch.cat([inputs, targets])
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.max() > 0.5
    assert len(ds) == 3


def test_sequence_is_a_pure_function_of_seed_and_index():
    a = MovingMNIST(num_samples=10, seed=7)
    b = MovingMNIST(num_samples=10, seed=7)
    order = [9, 0, 5, 9]
    assert [a.render(i).tobytes() for i in order] == [
        b.render(i).tobytes() for i in reversed(order)
    ][::-1]
    assert len({a.render(i).tobytes() for i in range(10)}) == 10
    assert a.render(0).tobytes() != MovingMNIST(num_samples=10, seed=8).render(0).tobytes()
    assert torch.equal(a[-1][1], a[9][1])


def _turning_points(position: np.ndarray) -> np.ndarray:
    step = np.diff(position)
    moving = np.flatnonzero(step != 0)
    direction = np.sign(step[moving])
    changes = np.flatnonzero(direction[1:] != direction[:-1])
    return position[moving[changes] + 1]


def test_digit_stays_inside_canvas_and_bounces_off_the_walls():
    # A 4x4 square "digit": all 16 pixels are visible iff it is fully inside the canvas, and its
    # centre of mass is its top-left corner + 1.5.
    square = np.full((1, 4, 4), 255, dtype=np.uint8)
    size, speed = 32, 4.0
    ds = MovingMNIST(
        num_samples=12,
        input_len=20,
        output_len=20,
        size=size,
        num_digits=1,
        digits=square,
        speed_range=(3.0, speed),
    )
    rows, cols = np.indices((size, size))
    low, high = 1.5, size - 4 + 1.5
    bounces = 0
    for i in range(len(ds)):
        frames = ds.render(i)
        mass = frames.sum(axis=(1, 2))
        np.testing.assert_array_equal(mass, 16.0)
        for grid in (rows, cols):
            centre = (frames * grid).sum(axis=(1, 2)) / mass
            assert centre.min() >= low and centre.max() <= high
            assert np.abs(np.diff(centre)).max() <= speed + 1  # constant speed, rounded positions
            turns = _turning_points(centre)
            distance_to_wall = np.minimum(turns - low, high - turns)
            assert np.all(distance_to_wall <= speed + 0.5), "direction reversed away from a wall"
            bounces += len(turns)
    assert bounces >= 10


def test_real_digits_remain_fully_visible():
    ds = MovingMNIST(num_samples=4, num_digits=1, digits="val", input_len=15, output_len=15)
    for i in range(len(ds)):
        frames = ds.render(i)
        assert len({round(float(m), 3) for m in frames.sum(axis=(1, 2))}) == 1


def test_overlapping_digits_are_combined_by_maximum():
    left = np.zeros((28, 28), np.float32)
    left[:, :18] = 0.5
    right = np.zeros((28, 28), np.float32)
    right[:, 10:] = 0.8
    pool = np.stack([left, right])
    # The canvas is the digit size, so both digits always sit at (0, 0) and overlap in cols 10-17.
    ds = MovingMNIST(num_samples=16, size=28, digits=pool, input_len=1, output_len=1)
    allowed = {left.tobytes(), right.tobytes(), np.maximum(left, right).tobytes()}
    seen = {ds.render(i)[0].tobytes() for i in range(len(ds))}
    assert seen <= allowed
    assert np.maximum(left, right).tobytes() in seen


@pytest.mark.parametrize(
    "make",
    [
        lambda: MovingMNIST(num_samples=8, size=32, input_len=2, output_len=2, seed=3),
        lambda: SyntheticRadar(num_samples=8, size=16, input_len=2, output_len=2, seed=3),
    ],
    ids=["moving_mnist", "radar"],
)
def test_dataloader_workers_yield_disjoint_deterministic_samples(make):
    ds = make()
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    inputs = torch.cat([batch[0] for batch in loader])
    expected = torch.stack([make()[i][0] for i in range(len(ds))])
    assert torch.equal(inputs, expected)
    assert len({x.numpy().tobytes() for x in inputs}) == len(ds)


def test_distributed_ranks_draw_disjoint_samples_without_a_process_group():
    drawn = []
    for rank in (0, 1):
        ds = MovingMNIST(num_samples=10, size=32, input_len=2, output_len=2, seed=5)
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        drawn.append({ds[i][0].numpy().tobytes() for i in sampler})
    assert len(drawn[0]) == len(drawn[1]) == 5
    assert not drawn[0] & drawn[1]


def test_train_and_val_digit_pools_are_disjoint_and_cover_every_class():
    train, train_labels = bundled_mnist_digits("train")
    val, val_labels = bundled_mnist_digits("val")
    everything, _ = bundled_mnist_digits("all")
    assert (len(train), len(val), len(everything)) == (7000, 1000, 8000)
    train_images = {image.tobytes() for image in train}
    assert not any(image.tobytes() in train_images for image in val)
    assert np.bincount(val_labels, minlength=10).min() >= 80
    assert np.bincount(train_labels, minlength=10).min() >= 600
    np.testing.assert_array_equal(
        MovingMNIST(num_samples=1, digits="val").digits, val / np.float32(255)
    )
    with pytest.raises(ValueError, match=r"train"):
        bundled_mnist_digits("test")  # type: ignore[arg-type]


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_load_mnist_digits_reads_idx_gzip_npy_and_npz(tmp_path):
    images = bundled_mnist_digits("val")[0][:6]
    (tmp_path / "images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    np.save(tmp_path / "images.npy", images)
    np.savez_compressed(tmp_path / "images.npz", digits=images)
    for name, kwargs in [
        ("images-idx3-ubyte", {}),
        ("images-idx3-ubyte.gz", {}),
        ("images.npy", {}),
        ("images.npz", {"key": "digits"}),
    ]:
        np.testing.assert_array_equal(load_mnist_digits(tmp_path / name, **kwargs), images)
    loaded = load_mnist_digits(tmp_path / "images-idx3-ubyte.gz")
    assert MovingMNIST(num_samples=2, digits=loaded).digits.shape == (6, 28, 28)


def test_load_mnist_digits_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing-idx3"):
        load_mnist_digits(tmp_path / "missing-idx3")
    labels = tmp_path / "labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(np.arange(10, dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"labels file"):
        load_mnist_digits(labels)
    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(_idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100])
    with pytest.raises(ValueError, match=r"truncated.*\(4, 28, 28\)"):
        load_mnist_digits(truncated)
    floats = tmp_path / "float-idx3"
    floats.write_bytes(_idx_bytes(np.zeros((1, 2, 2), np.float32), type_code=0x0D))
    with pytest.raises(TypeError, match=r"0x0d"):
        load_mnist_digits(floats)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"not an IDX file"):
        load_mnist_digits(text)
    bad_gzip = tmp_path / "broken.gz"
    bad_gzip.write_bytes(gzip.compress(_idx_bytes(np.zeros((1, 2, 2), np.uint8)))[:-12])
    with pytest.raises(ValueError, match=r"broken.gz"):
        load_mnist_digits(bad_gzip)
    np.save(tmp_path / "flat.npy", np.zeros((5, 784), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W\).*\(5, 784\)"):
        load_mnist_digits(tmp_path / "flat.npy")
    np.save(tmp_path / "float.npy", np.zeros((2, 28, 28), np.float32))
    with pytest.raises(TypeError, match=r"uint8"):
        load_mnist_digits(tmp_path / "float.npy")
    np.savez(tmp_path / "other.npz", pixels=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"no array 'images'.*pixels"):
        load_mnist_digits(tmp_path / "other.npz")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 20}, ValueError, r"size \(20, 20\) is smaller than the digits \(28, 28\)"),
        ({"num_digits": 0}, ValueError, "num_digits must be an integer >= 1, got 0"),
        ({"num_digits": 2.0}, TypeError, "num_digits must be an integer"),
        ({"input_len": 0}, ValueError, "input_len"),
        ({"num_samples": -1}, ValueError, "num_samples"),
        ({"speed_range": (5.0, 2.0)}, ValueError, "low <= high"),
        ({"speed_range": (-1.0, 2.0)}, ValueError, r"speed_range\[0\]"),
        ({"speed_range": 3.0}, TypeError, "pair"),
        ({"seed": -1}, ValueError, "seed"),
        ({"digits": "test"}, ValueError, "digits must be one of"),
        ({"digits": np.zeros((28, 28), np.uint8)}, ValueError, r"got shape \(28, 28\)"),
        ({"digits": np.full((1, 4, 4), 2.0)}, ValueError, r"within \[0, 1\]"),
        ({"digits": np.zeros((1, 4, 4), np.int64)}, TypeError, "int64"),
        ({"digits": [[0]]}, TypeError, "list"),
        ({"size": 100_000}, ValueError, "GiB"),
    ],
)
def test_bad_arguments_are_rejected_with_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        MovingMNIST(**{"num_samples": 2, **kwargs})


def test_out_of_range_and_non_integer_indices():
    ds = MovingMNIST(num_samples=3)
    with pytest.raises(IndexError, match=r"index 3 is out of range for 3"):
        ds[3]
    with pytest.raises(TypeError, match=r"integers"):
        ds[1.5]  # type: ignore[index]
    assert torch.equal(ds[np.int64(2)][0], ds[torch.tensor(2)][0])
