"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 70,000 real 28×28 grey-scale images of 10 classes.

The four official IDX files are looked for, in order, in

1. the ``data_dir`` argument (the ``--data-dir`` option),
2. the directory in the environment variable ``MIRRORLA_DATA``,
3. the user cache directory (``$XDG_CACHE_HOME/mirrorla/fashion-mnist``, default
   ``~/.cache/mirrorla/fashion-mnist``),
4. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``),

each either directly or in a ``fashion-mnist/`` or ``FashionMNIST/raw/`` sub-directory (torchvision's
layout), compressed (``.gz``) or not. If none has them and ``download=True``, they are fetched from
the dataset's official location into the cache directory and their MD5 checked against the values the
dataset's authors publish. Otherwise :class:`DatasetNotFoundError` says exactly how to get them.

An explicit ``data_dir`` is the only place looked in: if it lacks the files, the search does not go
on to the other places (a run would otherwise train on other data than the folder it records) and
nothing is downloaded into it; the error lists what was expected there and what was found.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mirrorla.data.download import removing_created_dirs
from mirrorla.data.idx import read_idx

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "ENV_VAR",
    "DatasetNotFoundError",
    "cache_dir",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_split",
]

ENV_VAR = "MIRRORLA_DATA"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# file stem → (MD5 of the official .gz file, expected array shape). The MD5s are the ones published in
# the dataset's README (github.com/zalandoresearch/fashion-mnist). Distribution packages may recompress
# the files, so files found on disk are checked by structure (magic, shape, size), downloads by MD5.
FILES: dict[str, tuple[str, tuple[int, ...]]] = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", (60000,)),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", (10000,)),
}
_SUBDIRS = ("", "fashion-mnist", "FashionMNIST/raw", "fashion_mnist")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded; the message says how to get it."""


def cache_dir() -> Path:
    """The user cache directory for Fashion-MNIST (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mirrorla" / "fashion-mnist"


def _candidate_dirs(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    dirs: list[tuple[str, Path]] = []
    if data_dir is not None:
        dirs.append(("--data-dir", Path(data_dir)))
    if os.environ.get(ENV_VAR):
        dirs.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    dirs.append(("user cache", cache_dir()))
    dirs.append(("Debian package dataset-fashion-mnist", DEBIAN_DIR))
    return dirs


def _files_by_layout(root: Path) -> list[tuple[Path, dict[str, Path]]]:
    """For each accepted layout under ``root``: (folder, the files of :data:`FILES` found in it)."""
    layouts = []
    for sub in _SUBDIRS:
        base = root / sub if sub else root
        found = {}
        for stem in FILES:
            for name in (stem + ".gz", stem):
                if (base / name).is_file():
                    found[stem] = base / name
                    break
        layouts.append((base, found))
    return layouts


def _files_in(root: Path) -> dict[str, Path] | None:
    """The four files under ``root`` (any accepted layout), or None if any is missing."""
    return next((found for _, found in _files_by_layout(root) if len(found) == len(FILES)), None)


def _not_in_data_dir(root: Path) -> DatasetNotFoundError:
    """The error for an explicit ``--data-dir`` without the four files: what was expected, what is there."""
    if not root.is_dir():
        found = "it does not exist" if not root.exists() else "it is not a folder"
    else:
        base, partial = max(_files_by_layout(root), key=lambda layout: len(layout[1]))
        if partial:
            missing = ", ".join(f"{stem}(.gz)" for stem in FILES if stem not in partial)
            found = f"{base} holds {len(partial)} of the 4 files; missing: {missing}"
        else:
            entries = sorted(p.name for p in root.iterdir())
            shown = ", ".join(entries[:8]) + (", …" if len(entries) > 8 else "")
            found = f"it holds none of them ({'contents: ' + shown if entries else 'it is empty'})"
    names = ", ".join(stem + ".gz" for stem in FILES)
    return DatasetNotFoundError(
        f"Fashion-MNIST is not in --data-dir {root}: {found}. Expected the four files {names} (or the same "
        f"without .gz) directly in {root} or in its sub-folder fashion-mnist/, FashionMNIST/raw/ (torchvision's "
        "layout) or fashion_mnist/. An explicit --data-dir is the only place looked in and nothing is downloaded "
        f"into it: put the four files there (from {URL}, or on Debian/Ubuntu sudo apt-get install "
        f"dataset-fashion-mnist, which installs them into {DEBIAN_DIR}), point --data-dir at the folder that "
        f"holds them, or leave --data-dir out to search ${ENV_VAR}, {cache_dir()} and {DEBIAN_DIR} and download "
        "into the cache if none has them"
    )


def find_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> dict[str, Path]:
    """Paths of the four Fashion-MNIST files: in ``data_dir`` if given, else searched in the documented
    order (module docstring).

    Raises:
        DatasetNotFoundError: not in ``data_dir``, or not found and not downloadable; the message lists
            where it looked and the commands that fix it.
    """
    if data_dir is not None:
        found = _files_in(Path(data_dir))
        if found is None:
            raise _not_in_data_dir(Path(data_dir))
        return found
    searched = _candidate_dirs(data_dir)
    for _, root in searched:
        found = _files_in(root)
        if found is not None:
            return found
    download_error = None
    if download:
        try:
            with removing_created_dirs(cache_dir()):
                return _download(cache_dir())
        except OSError as err:  # no network, proxy refusal, disk full ...
            download_error = err
    where = "\n".join(f"  - {label}: {path}" for label, path in searched)
    reason = f"the download from {URL} failed: {download_error}" if download_error else "downloading is disabled"
    names = ", ".join(s + ".gz" for s in FILES)
    raise DatasetNotFoundError(
        f"Fashion-MNIST was not found and {reason}.\nLooked in:\n{where}\n"
        "Get it in one of these ways:\n"
        "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (installs into "
        f"{DEBIAN_DIR})\n"
        f"  2. Download the four files {names} from {URL}\n"
        f"     into a directory DIR and pass --data-dir DIR (or export {ENV_VAR}=DIR),\n"
        f"     or put them into {cache_dir()}\n"
        "  3. On a machine with internet access, run the same command again: it downloads into the cache."
    )


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(target: Path, base_url: str = URL, timeout: float = 30.0) -> dict[str, Path]:
    """Fetch the four .gz files into ``target``, verify their MD5, move them into place atomically."""
    target.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, (md5, _) in FILES.items():
        dest = target / (stem + ".gz")
        if not dest.is_file():
            fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{stem}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base_url + stem + ".gz", timeout=timeout) as r:
                    shutil.copyfileobj(r, out)
                got = _md5(Path(tmp))
                if got != md5:
                    raise OSError(f"checksum mismatch for {stem}.gz: MD5 {got}, expected {md5}")
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        paths[stem] = dest
    return paths


def load_fashion_mnist(
    split: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of ``split`` ∈ {'train', 'test'}.

    N = 60,000 for 'train' and 10,000 for 'test'. Raises :class:`~mirrorla.data.idx.IdxFormatError` for
    a corrupt file and ``ValueError`` for labels outside 0…9.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return read_split(find_fashion_mnist(data_dir, download=download), split)


def read_split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of ``split`` from the files :func:`find_fashion_mnist` returned."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    img_stem, lbl_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images = read_idx(files[img_stem], expected_shape=FILES[img_stem][1])
    labels = read_idx(files[lbl_stem], expected_shape=FILES[lbl_stem][1]).astype(np.int64)
    _check_labels(labels, len(CLASSES), files[lbl_stem])
    return images, labels


def _check_labels(labels: np.ndarray, num_classes: int, source: Iterable | Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{source}: labels must lie in 0…{num_classes - 1}, found {labels.min()}…{labels.max()}; "
            "the file is corrupt"
        )
