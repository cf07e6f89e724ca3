"""Dataset loaders: digits, CIFAR-10 .npz, IDX (Fashion-MNIST), splits, and bad files."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fusenas.data import (
    ImageDataset,
    default_cifar10_path,
    load_cifar10_npz,
    load_digits,
    load_fashion_mnist,
    load_splits,
    random_subset,
    read_idx,
    train_test_split,
)

CIFAR = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "cifar10_train.npz"
)


def test_digits():
    ds = load_digits()
    assert len(ds) == 1797 and ds.x.shape == (1797, 1, 8, 8)
    assert ds.x.dtype == torch.uint8 and ds.y.dtype == torch.int64
    assert int(ds.x.max()) == 255 and ds.classes == tuple("0123456789")
    assert torch.equal(torch.bincount(ds.y).clamp(max=1), torch.ones(10, dtype=torch.int64))
    f = ds.float()
    assert f.dtype == torch.float32 and 0.0 <= float(f.min()) and float(f.max()) == 1.0


def test_split_is_deterministic_stratified_and_disjoint():
    ds = load_digits()
    tr1, te1 = train_test_split(ds, 0.2, seed=3)
    tr2, te2 = train_test_split(ds, 0.2, seed=3)
    assert torch.equal(te1.x, te2.x) and torch.equal(tr1.y, tr2.y)
    _, te3 = train_test_split(ds, 0.2, seed=4)
    assert not torch.equal(te1.x, te3.x)
    assert len(tr1) + len(te1) == len(ds)
    counts = torch.bincount(ds.y)
    expected = torch.tensor([round(int(c) * 0.2) for c in counts])
    assert torch.equal(torch.bincount(te1.y, minlength=10), expected)
    # disjoint: every image of the full set lands on exactly one side
    key = lambda d: {bytes(d.x[i].flatten().tolist()) + bytes([int(d.y[i])]) for i in range(len(d))}  # noqa: E731
    assert len(key(tr1) | key(te1)) == len(key(ds))
    tr4, te4 = train_test_split(ds, 0.5, seed=0, stratify=False)
    assert abs(len(te4) - len(ds) / 2) <= 1


def test_random_subset():
    ds = load_digits()
    sub = random_subset(ds, 100, seed=1)
    assert len(sub) == 100 and torch.equal(sub.x, random_subset(ds, 100, seed=1).x)
    assert random_subset(ds, 10_000) is ds
    with pytest.raises(ValueError, match="limit"):
        random_subset(ds, 0)
    with pytest.raises(TypeError, match="ds"):
        random_subset("ds", 3)


@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        ({"test_fraction": 0.0}, ValueError, "test_fraction"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"test_fraction": "0.2"}, ValueError, "test_fraction"),
        ({"test_fraction": 0.0001}, ValueError, "test_fraction"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_split_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        train_test_split(load_digits(), **kwargs)


def test_split_rejects_non_dataset():
    with pytest.raises(TypeError, match="ds"):
        train_test_split((torch.zeros(3), torch.zeros(3)))


def test_image_dataset_validation():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="x"):
        ImageDataset(x.float(), y, ("a",), "t")
    with pytest.raises(ValueError, match="y"):
        ImageDataset(x, y[:3], ("a",), "t")
    with pytest.raises(ValueError, match="y"):
        ImageDataset(x, y + 1, ("a",), "t")


# ------------------------------------------------------------------ CIFAR-10 .npz


def _write_npz(path: Path, n: int = 20, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        "y": rng.integers(0, 10, n).astype(np.int64),
        "classes": np.array([f"c{i}" for i in range(10)]),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_cifar_npz_synthetic(tmp_path):
    path = _write_npz(tmp_path / "c.npz")
    ds = load_cifar10_npz(path)
    assert ds.x.shape == (20, 3, 32, 32) and ds.x.dtype == torch.uint8 and ds.classes[3] == "c3"
    raw = np.load(path)
    assert torch.equal(ds.x[5].permute(1, 2, 0), torch.from_numpy(raw["x"][5]))  # HWC -> CHW


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"x": None}, "'x' and 'y'"),
        ({"x": np.zeros((20, 32, 32, 3), np.float32)}, "uint8"),
        ({"x": np.zeros((20, 3, 32, 32), np.uint8)}, "32, 32, 3"),
        ({"y": np.zeros(19, np.int64)}, "labels"),
        ({"y": np.full(20, 10, np.int64)}, "labels must lie"),
        ({"y": np.zeros(20, np.float32)}, "labels"),
    ],
)
def test_cifar_npz_malformed(tmp_path, overrides, match):
    path = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=match):
        load_cifar10_npz(path)


def test_cifar_npz_bad_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ValueError, match="path"):
        load_cifar10_npz(garbage)
    with pytest.raises(FileNotFoundError, match="path"):
        load_cifar10_npz(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="path"):
        load_cifar10_npz(3)


@pytest.mark.skipif(not CIFAR.is_file(), reason="../shared/data/cifar10/cifar10_train.npz absent")
def test_cifar_real_file():
    assert default_cifar10_path().resolve() == CIFAR.resolve()
    train, test = load_splits("cifar10", CIFAR, seed=0, limit=2000)
    assert len(train) + len(test) == 2000 and train.x.shape[1:] == (3, 32, 32)
    # The file is sorted by class: the subset must be random, not the first images.
    assert torch.bincount(test.y, minlength=10).min() > 20


# ------------------------------------------------------------------ IDX / Fashion-MNIST


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.tobytes()


def _write_fashion(directory: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for stem, arr in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            data = _idx_bytes(arr)
            if gz:
                (directory / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (directory / stem).write_bytes(data)
    return directory


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_synthetic(tmp_path, gz):
    directory = _write_fashion(tmp_path / "fm", gz=gz)
    train = load_fashion_mnist(directory, "train")
    test = load_fashion_mnist(directory, "test")
    assert train.x.shape == (30, 1, 28, 28) and len(test) == 10 and train.classes[9] == "Ankle boot"
    tr, te = load_splits("fashion-mnist", directory, limit=5)
    assert len(tr) == 5 and len(te) == 5


def test_read_idx_int32(tmp_path):
    arr = np.arange(12, dtype=">i4").reshape(3, 4)
    path = tmp_path / "a.idx"
    path.write_bytes(_idx_bytes(arr))
    out = read_idx(path)
    assert out.shape == (3, 4) and out.dtype == np.int32 and out[2, 3] == 11


def test_idx_malformed(tmp_path):
    good = _idx_bytes(np.zeros((4, 28, 28), np.uint8))
    cases = {
        "magic.idx": b"\x01\x02" + good[2:],
        "truncated.idx": good[:-5],
        "header.idx": good[:6],
        "empty.idx": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="path"):
            read_idx(tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="path"):
        read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="path"):
        load_fashion_mnist(tmp_path)  # a directory without the files
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(tmp_path, "validation")
    directory = _write_fashion(tmp_path / "fm", gz=False)
    labels = directory / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(np.zeros(29, np.uint8)))  # 30 images, 29 labels
    with pytest.raises(ValueError, match="labels"):
        load_fashion_mnist(directory)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="dataset-fashion-mnist not installed",
)
def test_fashion_mnist_real():
    train, test = load_splits("fashion-mnist")
    assert train.x.shape == (60000, 1, 28, 28) and len(test) == 10000


def test_load_splits_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        load_splits("imagenet")
    with pytest.raises(ValueError, match="limit"):
        load_splits("digits", limit=-3)
    tr, te = load_splits("digits", limit=500, seed=1)
    assert len(tr) + len(te) == 500


def _write_cifar_batches(directory, shared_data):
    """The standard python batches, made from real images of the shared .npz."""
    import pickle

    with np.load(shared_data / "cifar10" / "cifar10_train.npz") as f:
        x, y = f["x"][:60], f["y"][:60]
    directory.mkdir()
    flat = x.transpose(0, 3, 1, 2).reshape(60, -1)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        part = slice(10 * i, 10 * (i + 1))
        batch = {b"data": flat[part], b"labels": [int(v) for v in y[part]], b"batch_label": b"x"}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
    return x, y


def test_cifar_python_batches(tmp_path, shared_data):
    from fusenas.data.datasets import load_cifar10, load_cifar10_batches

    x, y = _write_cifar_batches(tmp_path / "cifar-10-batches-py", shared_data)
    train = load_cifar10(tmp_path / "cifar-10-batches-py")
    assert train.x.shape == (50, 3, 32, 32) and train.classes[0] == "airplane"
    assert torch.equal(train.x, torch.from_numpy(x[:50]).permute(0, 3, 1, 2))
    assert torch.equal(train.y, torch.from_numpy(y[:50]).long())
    test = load_cifar10_batches(tmp_path / "cifar-10-batches-py", "test")
    assert len(test) == 10


def test_cifar_python_batches_refuse_code(tmp_path):
    import pickle

    from fusenas.data.datasets import load_cifar10_batches

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    d = tmp_path / "batches"
    d.mkdir()
    for name in [f"data_batch_{k}" for k in range(1, 6)]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar10_batches(d)
    with pytest.raises(FileNotFoundError, match="directory"):
        load_cifar10_batches(tmp_path / "missing")
