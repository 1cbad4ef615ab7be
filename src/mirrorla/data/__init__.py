"""Datasets for training and comparison: Fashion-MNIST (IDX files), torchvision datasets, ImageFolder."""

from mirrorla.data.datasets import DatasetInfo, InMemoryImages, build_datasets, list_datasets
from mirrorla.data.fashion_mnist import DatasetNotFoundError, find_fashion_mnist, load_fashion_mnist
from mirrorla.data.idx import IdxFormatError, read_idx, write_idx

__all__ = [
    "DatasetInfo",
    "DatasetNotFoundError",
    "IdxFormatError",
    "InMemoryImages",
    "build_datasets",
    "find_fashion_mnist",
    "list_datasets",
    "load_fashion_mnist",
    "read_idx",
    "write_idx",
]
