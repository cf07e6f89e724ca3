"""In-memory datasets for the demo, the drivers and the tests."""

from fusenas.data.datasets import (
    DATASETS,
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

__all__ = [
    "DATASETS",
    "ImageDataset",
    "default_cifar10_path",
    "load_cifar10_npz",
    "load_digits",
    "load_fashion_mnist",
    "load_splits",
    "random_subset",
    "read_idx",
    "train_test_split",
]
