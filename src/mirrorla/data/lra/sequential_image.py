"""Sequential image classification in the form of LRA's Image task, on Fashion-MNIST.

LRA's Image task (``lra_benchmarks/image/input_pipeline.py``, ``get_cifar10_datasets``) feeds CIFAR-10
converted to grey scale as 32 × 32 = 1,024 tokens, one per pixel, each its 0…255 intensity (vocabulary
256, no padding token). CIFAR-10 is not available offline here, so this module uses Fashion-MNIST: each
28 × 28 image is padded with 2 zero pixels on every side to 32 × 32 and read in row-major order. Labels
are Fashion-MNIST's 0…9.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mirrorla.data.fashion_mnist import find_fashion_mnist, read_split

__all__ = ["SEQUENCE_SIDE", "fashion_mnist_sequences", "pixels_to_sequences"]

SEQUENCE_SIDE = 32
_PAD = 2


def pixels_to_sequences(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 images → (N, 1024) uint8 tokens: zero-padded to 32 × 32, row-major."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
    padded = np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    return padded.reshape(len(images), SEQUENCE_SIDE * SEQUENCE_SIDE)


def fashion_mnist_sequences(
    split: str, data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Path]]:
    """Tokens (N, 1024) uint8, labels (N,) int64 and the four Fashion-MNIST files found.

    ``split`` is 'train' (60,000) or 'test' (10,000). The files are looked up as
    :func:`mirrorla.data.find_fashion_mnist` does, without downloading.
    """
    files = find_fashion_mnist(data_dir, download=False)
    images, labels = read_split(files, split)
    return pixels_to_sequences(images), labels, files
