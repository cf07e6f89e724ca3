"""In-memory image classification datasets: digits, CIFAR-10 (.npz), Fashion-MNIST (IDX).

Every loader returns an :class:`ImageDataset`: uint8 images (N, C, H, W) and
int64 labels (N,). The sets are small enough to hold in memory, so training
loops index tensors directly instead of going through a DataLoader. Nothing is
downloaded: digits ships inside scikit-learn's wheel, the others are read from
a path (``../shared/data`` beside the project, or one the user gives).
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "cifar10", "fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels in memory.

    Attributes:
        x: uint8 (N, C, H, W) images, 0..255.
        y: int64 (N,) labels in [0, len(classes)).
        classes: class names.
        name: where it came from ("digits", "cifar10", ...).
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(
                f"x: expected uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.dtype != torch.int64 or tuple(self.y.shape) != (self.x.shape[0],):
            raise ValueError(
                f"y: expected int64 ({self.x.shape[0]},), got {self.y.dtype} {tuple(self.y.shape)}"
            )
        if self.y.numel() and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise ValueError(f"y: labels must lie in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor) -> ImageDataset:
        """The images at ``index`` (int64 indices or a bool mask)."""
        return ImageDataset(self.x[index], self.y[index], self.classes, self.name)

    def float(self) -> torch.Tensor:
        """Images as float32 in [0, 1], (N, C, H, W)."""
        return self.x.to(torch.float32) / 255.0


def load_digits() -> ImageDataset:
    """scikit-learn's 8 x 8 handwritten digits (1797 images, 10 classes), no download.

    Returns: x uint8 (1797, 1, 8, 8) (the 0..16 intensities scaled to 0..255), y int64.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageDataset(
        torch.from_numpy(x),
        torch.from_numpy(d.target.astype(np.int64)),
        tuple(str(c) for c in range(10)),
        "digits",
    )


def load_cifar10_npz(path: str | os.PathLike) -> ImageDataset:
    """CIFAR-10 from an .npz with ``x`` uint8 (N, 32, 32, 3) HWC, ``y`` int (N,), ``classes``.

    Args:
        path: the .npz file (e.g. ``../shared/data/cifar10/cifar10_train.npz``; its
            images are sorted by class, so take subsets with :func:`random_subset`).
    Returns: x uint8 (N, 3, 32, 32) (converted to CHW), y int64 (N,).
    """
    path = _existing_file(path, "path")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise ValueError(f"path: {path} holds {f.files}; expected arrays 'x' and 'y'")
            x, y = f["x"], f["y"]
            classes = tuple(str(c) for c in f["classes"]) if "classes" in f.files else None
    except ValueError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, ...
        raise ValueError(f"path: {path} is not a readable .npz file ({exc})") from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"path: {path}: expected x uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"path: {path}: expected integer labels y ({x.shape[0]},), got {y.dtype} {y.shape}"
        )
    classes = classes or tuple(str(c) for c in range(10))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    try:
        return ImageDataset(xt, torch.from_numpy(y.astype(np.int64)), classes, "cifar10")
    except ValueError as exc:
        raise ValueError(f"path: {path}: {exc}") from exc


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches while refusing anything but numpy arrays.

    The batches are pickles (dicts of bytes, lists and ndarrays); a plain
    pickle.load would run whatever a tampered file asks for.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_cifar10_batches(directory: str | os.PathLike, split: str = "train") -> ImageDataset:
    """CIFAR-10 from the standard python batches (``data_batch_1..5``, ``test_batch``).

    Args:
        directory: the ``cifar-10-batches-py`` directory.
        split: "train" (the five data batches, 50,000 images) or "test" (10,000).
    Returns: x uint8 (N, 3, 32, 32), y int64 (N,).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"directory: no such directory: {directory}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = _existing_file(directory / name, "directory")
        try:
            with open(path, "rb") as f:
                batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
            raise ValueError(f"directory: {path} is not a CIFAR-10 python batch ({exc})") from exc
        xs.append(data)
        ys.append(labels)
    classes = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")  # fmt: skip
    return ImageDataset(
        torch.from_numpy(np.concatenate(xs)),
        torch.from_numpy(np.concatenate(ys)),
        classes,
        "cifar10",
    )


def load_cifar10(path: str | os.PathLike | None = None) -> ImageDataset:
    """CIFAR-10 training images from an .npz file or a python-batches directory (default place)."""
    path = Path(path) if path is not None else default_cifar10_path()
    if path.is_dir():
        return load_cifar10_batches(path, "train")
    return load_cifar10_npz(path)


def load_train_set(
    name: str, path: str | os.PathLike | None = None, limit: int | None = None, seed: int = 0
) -> ImageDataset:
    """The training images of a data set by name (all of digits), optionally a seeded subset."""
    limit = _check_limit(limit)
    if name == "digits":
        ds = load_digits()
    elif name == "cifar10":
        ds = load_cifar10(path)
    elif name == "fashion-mnist":
        ds = load_fashion_mnist(path if path is not None else DEFAULT_FASHION_MNIST_DIR, "train")
    else:
        raise ValueError(f"name: expected one of {list(DATASETS)}, got {name!r}")
    return random_subset(ds, limit, seed) if limit is not None else ds


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (MNIST's format; ``.gz`` compressed or not) into a numpy array."""
    path = _existing_file(path, "path")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"path: {path} could not be read ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"path: {path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"path: {path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"path: {path}: IDX header says shape {shape} ({expected} bytes), "
            f"the file holds {len(data) - header} bytes"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"path: no {stem}[.gz] in {directory}")


def load_fashion_mnist(
    path: str | os.PathLike = DEFAULT_FASHION_MNIST_DIR, split: str = "train"
) -> ImageDataset:
    """Fashion-MNIST (or MNIST) from the four IDX files in a directory.

    Args:
        path: directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
            (Debian's ``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist).
        split: "train" (60,000 images) or "test" (10,000).
    Returns: x uint8 (N, 1, 28, 28), y int64 (N,).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"path: {directory} is not a directory with Fashion-MNIST IDX files"
        )
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"path: {directory}: expected uint8 images (N, H, W), got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"path: {directory}: {images.shape[0]} images but labels of shape {labels.shape}"
        )
    try:
        return ImageDataset(
            torch.from_numpy(images).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
            FASHION_MNIST_CLASSES,
            "fashion-mnist",
        )
    except ValueError as exc:
        raise ValueError(f"path: {directory}: {exc}") from exc


def random_subset(ds: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """``n`` images drawn without replacement (seeded; all of them when n >= len(ds))."""
    if not isinstance(ds, ImageDataset):
        raise TypeError(f"ds: expected an ImageDataset, got {type(ds).__name__}")
    n = _check_limit(n)
    if n >= len(ds):
        return ds
    gen = torch.Generator().manual_seed(seed)
    return ds.subset(torch.randperm(len(ds), generator=gen)[:n].sort().values)


def train_test_split(
    ds: ImageDataset, test_fraction: float = 0.2, seed: int = 0, stratify: bool = True
) -> tuple[ImageDataset, ImageDataset]:
    """Deterministic split: the same (dataset, fraction, seed) always gives the same sets.

    With ``stratify`` every class contributes ``round(count * test_fraction)`` test images.
    """
    if not isinstance(ds, ImageDataset):
        raise TypeError(f"ds: expected an ImageDataset, got {type(ds).__name__}")
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    n = len(ds)
    is_test = torch.zeros(n, dtype=torch.bool)
    groups = (
        [torch.nonzero(ds.y == c).flatten() for c in range(len(ds.classes))]
        if stratify
        else [torch.arange(n)]
    )
    for idx in groups:
        if idx.numel() == 0:
            continue
        perm = idx[torch.randperm(idx.numel(), generator=gen)]
        is_test[perm[: int(round(idx.numel() * test_fraction))]] = True
    if is_test.all() or not is_test.any():
        raise ValueError(f"test_fraction: {test_fraction} leaves one side of {n} images empty")
    return ds.subset(~is_test), ds.subset(is_test)


def default_cifar10_path() -> Path:
    """``$FUSENAS_DATA/cifar10/cifar10_train.npz``, else ``../shared/data/...`` from the
    working directory or from the source checkout."""
    rel = Path("cifar10") / "cifar10_train.npz"
    candidates = []
    if os.environ.get("FUSENAS_DATA"):
        candidates.append(Path(os.environ["FUSENAS_DATA"]) / rel)
    candidates.append(Path.cwd().parent / "shared" / "data" / rel)
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data" / rel)
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def load_splits(
    name: str,
    path: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) for a dataset by name.

    Args:
        name: "digits", "cifar10" or "fashion-mnist".
        path: the .npz (cifar10) or IDX directory (fashion-mnist); None: the default place.
        seed, test_fraction: the split of digits / CIFAR-10 (Fashion-MNIST has its own).
        limit: use a random (seeded) subset of at most ``limit`` images before
            splitting (Fashion-MNIST: of each of its splits).
    """
    limit = _check_limit(limit)
    if name in ("digits", "cifar10"):
        ds = load_digits() if name == "digits" else load_cifar10(path)
        if limit is not None:
            ds = random_subset(ds, limit, seed)
        return train_test_split(ds, test_fraction, seed)
    if name == "fashion-mnist":
        directory = path if path is not None else DEFAULT_FASHION_MNIST_DIR
        train, test = load_fashion_mnist(directory, "train"), load_fashion_mnist(directory, "test")
        if limit is not None:
            train, test = random_subset(train, limit, seed), random_subset(test, limit, seed)
        return train, test
    raise ValueError(f"name: expected one of {list(DATASETS)}, got {name!r}")


def _existing_file(path: str | os.PathLike, name: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path, got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: no such file: {p}")
    return p


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit: expected a positive integer or None, got {limit!r}")
    return limit
