"""Datasets behind one ``--dataset`` option: Fashion-MNIST (default), torchvision datasets, ImageFolder.

``build_datasets(name, ...)`` returns ``(train, eval, info)``. Two kinds of dataset come out:

- :class:`InMemoryImages` (Fashion-MNIST): all images as one uint8 tensor (N, C, H, W). Batches are
  sliced directly and augmented on the whole batch by :meth:`InMemoryImages.prepare_batch` with an
  explicit ``torch.Generator``, so augmentation is fast and a function of (seed, epoch, rank) only.
- torchvision / ImageFolder datasets: per-sample PIL transforms in ``DataLoader`` workers; they are
  deterministic given the loader's generator, which the engine seeds per epoch.

Names: ``fashion_mnist`` (alias ``fashion-mnist``), ``mnist``, ``kmnist``, ``cifar10``, ``cifar100``,
``svhn``, ``tv:<ClassName>`` (any torchvision dataset with a ``train=`` argument) and
``imagefolder`` (``--data-dir`` holding ``train/`` and ``val/`` or ``test/``, one sub-folder per class).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mirrorla.data.checksums import data_records
from mirrorla.data.download import DOWNLOAD_ERRORS, removing_created_dirs
from mirrorla.data.fashion_mnist import ENV_VAR, DatasetNotFoundError, find_fashion_mnist, read_split

__all__ = ["DatasetInfo", "InMemoryImages", "build_datasets", "list_datasets"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, and which files it was read from.

    ``files``: a record (absolute path, SHA-256, bytes; see :mod:`mirrorla.data.checksums`) per file
    or folder read; empty for data built in memory.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    eval_size: int
    files: tuple[dict[str, Any], ...] = ()


# name → (torchvision class, mean, std, native size, horizontal flips make sense)
_TORCHVISION = {
    "mnist": ("MNIST", (0.1307,), (0.3081,), 28, False),
    "kmnist": ("KMNIST", (0.1918,), (0.3483,), 28, False),
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, True),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, True),
    "svhn": ("SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 32, False),
}
# Fashion-MNIST training-set pixel mean/std (on [0, 1]); recomputed by tests/test_data.py from the files.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def list_datasets() -> list[str]:
    """The names ``--dataset`` accepts (besides ``tv:<ClassName>``)."""
    return ["fashion_mnist", *_TORCHVISION, "imagefolder"]


class InMemoryImages(Dataset):
    """uint8 images (N, C, H, W) and int64 labels (N,) held in memory, with batch-level augmentation.

    ``prepare_batch(x_uint8, generator)`` → float (B, C, S, S) normalised with ``mean``/``std``; when
    ``augment`` is on it first applies a random translation (zero-padded crop, ``pad`` pixels) and, if
    ``hflip``, a random horizontal flip per image, drawn from ``generator``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int,
        augment: bool,
        pad: int = 2,
        hflip: bool = True,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.image_size, self.augment, self.pad, self.hflip = image_size, augment, pad, hflip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.images[indices], self.labels[indices]

    def prepare_batch(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = x.float().div_(255.0)
        if self.augment:
            x = _random_translate_flip(x, self.pad, self.hflip, generator)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def _random_translate_flip(x: Tensor, pad: int, hflip: bool, generator: torch.Generator | None) -> Tensor:
    """Per image: shift by (dy, dx) ∈ [-pad, pad]² with zero fill (= pad + random crop), then flip w.p. ½."""
    B, _, H, W = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (B, 2), generator=generator)
    flips = torch.rand(B, generator=generator) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = torch.arange(H).view(1, H) + shifts[:, :1]  # (B, H)
    cols = torch.arange(W).view(1, W) + shifts[:, 1:]  # (B, W)
    if hflip:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    b = torch.arange(B).view(B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _subset_indices(n: int, limit: int | None, seed: int = 0, option: str = "train_subset") -> np.ndarray | None:
    # A fixed permutation (seed 0 by default) so every run and every seed of a comparison sees the
    # same subset; the run seed varies initialisation and order, not the data.
    if limit is None:
        return None
    if not isinstance(limit, numbers.Integral) or limit <= 0:
        raise ValueError(f"{option} must be a positive integer, got {limit!r}; None means all images")
    if limit > n:
        split = "training" if option == "train_subset" else "evaluation"
        raise ValueError(
            f"{option} {limit} is larger than the {split} split ({n} images): pass at most {n}, or leave it "
            "out to use all of it"
        )
    if limit == n:
        return None
    return np.random.default_rng(seed).permutation(n)[:limit]


def _default_root(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mirrorla" / "datasets"


def build_datasets(
    name: str = "fashion_mnist",
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    augment: bool = True,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    download: bool = True,
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Train and evaluation datasets and their :class:`DatasetInfo`.

    Args:
        name: see the module docstring.
        data_dir: where the data is (or goes, for downloads).
        image_size: side the model sees; default the dataset's native size (ImageFolder: 224).
        augment: train-time augmentation (evaluation data is never augmented).
        train_subset, eval_subset: use only this many images (a fixed random subset), for quick runs.
        download: allow downloading when the data is not on disk.
    """
    key = name.lower().replace("-", "_")
    if key == "fashion_mnist":
        return _fashion_mnist(data_dir, image_size, augment, train_subset, eval_subset, download)
    if key == "imagefolder":
        return _image_folder(data_dir, image_size or 224, augment, train_subset, eval_subset)
    if key in _TORCHVISION or name.startswith("tv:"):
        return _torchvision(name, key, data_dir, image_size, augment, train_subset, eval_subset, download)
    raise ValueError(
        f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}, or tv:<torchvision class name>"
    )


def _fashion_mnist(data_dir, image_size, augment, train_subset, eval_subset, download):
    files = find_fashion_mnist(data_dir, download=download)
    splits = {}
    for split, limit, option in (("train", train_subset, "train_subset"), ("test", eval_subset, "eval_subset")):
        images, labels = read_split(files, split)
        idx = _subset_indices(len(labels), limit, option=option)
        if idx is not None:
            images, labels = images[idx], labels[idx]
        splits[split] = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels))
    size = image_size or 28
    common = dict(mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, image_size=size)
    train = InMemoryImages(*splits["train"], augment=augment, **common)
    test = InMemoryImages(*splits["test"], augment=False, **common)
    info = DatasetInfo(
        "fashion_mnist", 10, 1, size, FASHION_MNIST_MEAN, FASHION_MNIST_STD, len(train), len(test),
        files=data_records(files.values()),
    )  # fmt: skip
    return train, test, info


def _maybe_subset(ds: Dataset, limit: int | None, option: str) -> Dataset:
    idx = _subset_indices(len(ds), limit, option=option)
    return ds if idx is None else torch.utils.data.Subset(ds, idx.tolist())


def _torchvision(name, key, data_dir, image_size, augment, train_subset, eval_subset, download):
    import torchvision
    from torchvision import transforms as T

    if name.startswith("tv:"):
        cls_name = name[3:]
        mean, std, native, hflip = _IMAGENET_MEAN, _IMAGENET_STD, None, True
    else:
        cls_name, mean, std, native, hflip = _TORCHVISION[key]
    cls = getattr(torchvision.datasets, cls_name, None)
    if cls is None:
        raise ValueError(f"torchvision.datasets has no dataset {cls_name!r}")
    size = image_size or native or 32
    root = _default_root(data_dir)
    kw = dict(root=str(root), download=download)
    provide = (
        f"on a machine with internet access run the same command once (it downloads into {root}) and copy that "
        f"folder here, or put torchvision's {cls_name} files into a folder DIR and pass --data-dir DIR"
    )
    try:
        with removing_created_dirs(root):
            if cls_name == "SVHN":
                train_raw, test_raw = cls(split="train", **kw), cls(split="test", **kw)
            else:
                train_raw, test_raw = cls(train=True, **kw), cls(train=False, **kw)
    except RuntimeError as err:  # torchvision raises RuntimeError("Dataset not found ...")
        raise DatasetNotFoundError(f"{cls_name} is not in {root} ({err}); {provide}") from err
    except DOWNLOAD_ERRORS as err:  # offline: urllib's URLError, a refused or dropped connection
        reason = getattr(err, "reason", None) or err
        raise DatasetNotFoundError(
            f"{cls_name} is not in {root} and downloading it failed ({reason}); {provide}"
        ) from err
    probe = train_raw[0][0]
    in_chans = len(probe.getbands()) if hasattr(probe, "getbands") else 3
    if len(mean) != in_chans:
        mean, std = (mean[0],) * in_chans, (std[0],) * in_chans
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    resize = [] if native == size else [T.Resize(size)]
    train_tf = resize + ([T.RandomCrop(size, padding=size // 8)] + ([T.RandomHorizontalFlip()] if hflip else []))
    train_raw.transform = T.Compose((train_tf if augment else resize) + norm)
    test_raw.transform = T.Compose(resize + [T.CenterCrop(size)] + norm)
    classes = getattr(train_raw, "classes", None)
    num_classes = len(classes) if classes else int(max(np.asarray(getattr(train_raw, "labels", [0])))) + 1
    train, test = (
        _maybe_subset(train_raw, train_subset, "train_subset"),
        _maybe_subset(test_raw, eval_subset, "eval_subset"),
    )
    info = DatasetInfo(
        key if not name.startswith("tv:") else name, num_classes, in_chans, size, mean, std, len(train), len(test),
        files=data_records(_torchvision_sources(train_raw) + _torchvision_sources(test_raw)),
    )  # fmt: skip
    return train, test, info


def _torchvision_sources(ds) -> list[Path]:
    """Where a torchvision dataset reads its data from: its own folder or file, else its whole root."""
    root = Path(ds.root)
    if hasattr(ds, "raw_folder"):  # MNIST, KMNIST, ...: the extracted IDX files
        return [Path(ds.raw_folder)]
    if hasattr(ds, "base_folder") and (root / ds.base_folder).is_dir():  # CIFAR: the extracted batches
        return [root / ds.base_folder]
    if isinstance(getattr(ds, "filename", None), str) and (root / ds.filename).is_file():  # SVHN: one .mat file
        return [root / ds.filename]
    return [root]


def _image_folder(data_dir, size, augment, train_subset, eval_subset):
    from torchvision import datasets
    from torchvision import transforms as T

    if data_dir is None:
        raise ValueError(
            "--dataset imagefolder needs --data-dir DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/..."
        )
    root = Path(data_dir)
    eval_dir = next((root / d for d in ("val", "validation", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or eval_dir is None:
        raise FileNotFoundError(f"{root} must contain train/ and val/ (or test/) folders with one sub-folder per class")
    norm = [T.ToTensor(), T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)]
    train_tf = (
        [T.RandomResizedCrop(size, scale=(0.35, 1.0)), T.RandomHorizontalFlip()]
        if augment
        else [T.Resize(int(size / 0.875)), T.CenterCrop(size)]
    )
    eval_tf = [T.Resize(int(size / 0.875)), T.CenterCrop(size)]
    train_raw = datasets.ImageFolder(str(root / "train"), transform=T.Compose(train_tf + norm))
    test_raw = datasets.ImageFolder(str(eval_dir), transform=T.Compose(eval_tf + norm))
    if train_raw.classes != test_raw.classes:
        raise ValueError(f"class folders differ between {root / 'train'} and {eval_dir}")
    train, test = (
        _maybe_subset(train_raw, train_subset, "train_subset"),
        _maybe_subset(test_raw, eval_subset, "eval_subset"),
    )
    info = DatasetInfo(
        "imagefolder", len(train_raw.classes), 3, size, _IMAGENET_MEAN, _IMAGENET_STD, len(train), len(test),
        files=data_records([root / "train", eval_dir]),
    )  # fmt: skip
    return train, test, info
