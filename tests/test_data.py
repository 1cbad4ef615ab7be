"""Data: IDX parsing and validation, Fashion-MNIST lookup order and download, datasets, augmentation."""

from __future__ import annotations

import gzip
import hashlib
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import needs_fashion_mnist

from mirrorla.data import (
    DatasetNotFoundError,
    IdxFormatError,
    InMemoryImages,
    build_datasets,
    find_fashion_mnist,
    read_idx,
    write_idx,
)
from mirrorla.data import fashion_mnist as fm
from mirrorla.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, _random_translate_flip


def _real_fashion_mnist():
    try:
        return find_fashion_mnist(download=False)
    except DatasetNotFoundError:
        return None


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_roundtrip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((7, 5, 3)) * 100).astype(dtype)
    path = tmp_path / f"x.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (7, 5, 3)
    np.testing.assert_array_equal(back, array)


def test_idx_header_layout(tmp_path):
    # Bytes as the format description defines them: 0x00000801 for 1-d uint8, big-endian sizes.
    path = tmp_path / "labels.idx1"
    write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_truncated_raises_clear_error(tmp_path):
    path = tmp_path / "images.idx3"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(IdxFormatError, match="truncated"):
        read_idx(path)
    path.write_bytes(data[:10])  # inside the header
    with pytest.raises(IdxFormatError, match="truncated header"):
        read_idx(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(IdxFormatError, match="trailing"):
        read_idx(path)


def test_idx_truncated_gzip_raises_clear_error(tmp_path):
    path = tmp_path / "images.idx3.gz"
    write_idx(path, np.arange(4 * 28 * 28, dtype=np.int32).reshape(4, 28, 28))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxFormatError, match="corrupt or truncated"):
        read_idx(path)


def test_idx_bad_magic_and_shape(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 0]))  # unknown dtype code
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(path)
    write_idx(path, np.zeros((3, 2), dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="expected"):
        read_idx(path, expected_shape=(3, 5))
    assert read_idx(path, expected_shape=(None, 2)).shape == (3, 2)


def _fake_fashion_files(directory, n_train=60000, n_test=10000, gz=True):
    """Header-correct Fashion-MNIST files of the real sizes (zeros compress to a few KB)."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", np.zeros((n, 28, 28), np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))


@pytest.fixture
def isolated_lookup(tmp_path, monkeypatch):
    """No real Fashion-MNIST anywhere on the search path (env var, cache and Debian dir redirected)."""
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    return tmp_path


def test_lookup_order(isolated_lookup, monkeypatch):
    tmp = isolated_lookup
    for name in ("arg", "env", "cache/mirrorla/fashion-mnist", "debian"):
        _fake_fashion_files(tmp / name, n_train=20, n_test=10, gz=name != "env")
    monkeypatch.setenv(fm.ENV_VAR, str(tmp / "env"))
    assert find_fashion_mnist(tmp / "arg", download=False)["t10k-images-idx3-ubyte"].parent == tmp / "arg"
    assert find_fashion_mnist(None, download=False)["t10k-images-idx3-ubyte"].parent == tmp / "env"
    monkeypatch.delenv(fm.ENV_VAR)
    assert find_fashion_mnist(None, download=False)["t10k-images-idx3-ubyte"].parent == fm.cache_dir()
    for f in fm.cache_dir().iterdir():
        f.unlink()
    assert find_fashion_mnist(None, download=False)["t10k-images-idx3-ubyte"].parent == tmp / "debian"
    # torchvision's layout under --data-dir is found too.
    _fake_fashion_files(tmp / "tv" / "FashionMNIST" / "raw", n_train=20, n_test=10)
    assert find_fashion_mnist(tmp / "tv", download=False)["train-images-idx3-ubyte"].parent.name == "raw"


def test_not_found_message_says_how_to_get_it(isolated_lookup):
    with pytest.raises(DatasetNotFoundError) as info:
        find_fashion_mnist(isolated_lookup / "nothing", download=False)
    msg = str(info.value)
    for needle in ("apt-get install dataset-fashion-mnist", "--data-dir", fm.ENV_VAR, "train-images-idx3-ubyte.gz",
                   str(isolated_lookup / "nothing")):  # fmt: skip
        assert needle in msg


def test_wrong_size_file_rejected(isolated_lookup):
    _fake_fashion_files(isolated_lookup / "small", n_train=20, n_test=10)
    with pytest.raises(IdxFormatError, match="does not match the expected"):
        fm.load_fashion_mnist("test", isolated_lookup / "small", download=False)


def _serve(monkeypatch, payloads):
    def fake_urlopen(url, timeout=None):
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(fm.urllib.request, "urlopen", fake_urlopen)


def _gz(array):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as fh:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
        fh.write(header + array.tobytes())
    return buf.getvalue()


def test_download_verifies_checksum(isolated_lookup, monkeypatch):
    payloads = {
        "train-images-idx3-ubyte.gz": _gz(np.zeros((60000, 28, 28), np.uint8)),
        "train-labels-idx1-ubyte.gz": _gz((np.arange(60000) % 10).astype(np.uint8)),
        "t10k-images-idx3-ubyte.gz": _gz(np.full((10000, 28, 28), 7, np.uint8)),
        "t10k-labels-idx1-ubyte.gz": _gz((np.arange(10000) % 10).astype(np.uint8)),
    }
    _serve(monkeypatch, payloads)
    # The official MD5s do not match these stand-in files: the download must be rejected and nothing kept.
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch"):
        find_fashion_mnist(None, download=True)
    assert not any(fm.cache_dir().glob("*.gz"))
    md5s = {k[:-3]: hashlib.md5(v).hexdigest() for k, v in payloads.items()}
    monkeypatch.setattr(fm, "FILES", {k: (md5s[k], shape) for k, (_, shape) in fm.FILES.items()})
    files = find_fashion_mnist(None, download=True)
    assert files["t10k-images-idx3-ubyte"].parent == fm.cache_dir()
    images, labels = fm.load_fashion_mnist("test", None, download=False)
    assert images.shape == (10000, 28, 28) and images[0, 0, 0] == 7 and labels[:3].tolist() == [0, 1, 2]


def test_network_failure_gives_instructions(isolated_lookup, monkeypatch):
    def offline(url, timeout=None):
        raise OSError("Name or service not known")

    monkeypatch.setattr(fm.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError, match="download .* failed: Name or service not known"):
        find_fashion_mnist(None, download=True)


@needs_fashion_mnist
def test_real_fashion_mnist_shapes_and_counts():
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = fm.load_fashion_mnist(split, download=False)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,)
        assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
        if split == "train":
            x = images.astype(np.float64) / 255
            assert abs(x.mean() - FASHION_MNIST_MEAN[0]) < 5e-4 and abs(x.std() - FASHION_MNIST_STD[0]) < 5e-4


@needs_fashion_mnist
def test_build_fashion_mnist_subset_is_fixed():
    a, b, info = build_datasets("fashion-mnist", train_subset=300, eval_subset=100, download=False)
    a2, _, _ = build_datasets("fashion_mnist", train_subset=300, eval_subset=100, download=False)
    assert (len(a), len(b), info.num_classes, info.in_chans, info.image_size) == (300, 100, 10, 1, 28)
    assert torch.equal(a.images, a2.images) and torch.equal(a.labels, a2.labels)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="fashion_mnist.*cifar10.*imagefolder"):
        build_datasets("imagenet-22k")


def test_augmentation_is_seeded_and_is_a_translate_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 9, 7, generator=g)
    out1 = _random_translate_flip(x, 2, True, torch.Generator().manual_seed(3))
    out2 = _random_translate_flip(x, 2, True, torch.Generator().manual_seed(3))
    out3 = _random_translate_flip(x, 2, True, torch.Generator().manual_seed(4))
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    # Reference: pad, crop at the drawn offset, flip — image by image.
    ref_gen = torch.Generator().manual_seed(3)
    shifts = torch.randint(0, 5, (6, 2), generator=ref_gen)
    flips = torch.rand(6, generator=ref_gen) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(6):
        dy, dx = shifts[i].tolist()
        crop = padded[i, :, dy : dy + 9, dx : dx + 7]
        crop = crop.flip(-1) if flips[i] else crop
        assert torch.equal(out1[i], crop)
    assert flips.any() and (~flips).any() and (shifts != 2).any()  # the check exercised flips and shifts


def test_in_memory_prepare_batch_normalises_and_resizes():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    ds = InMemoryImages(images, torch.arange(4), mean=(0.5,), std=(0.25,), image_size=32, augment=False)
    out = ds.prepare_batch(images)
    assert out.shape == (4, 1, 32, 32)
    ds28 = InMemoryImages(images, torch.arange(4), mean=(0.5,), std=(0.25,), image_size=28, augment=False)
    torch.testing.assert_close(ds28.prepare_batch(images), (images.float() / 255 - 0.5) / 0.25)
    with pytest.raises(TypeError, match="uint8"):
        InMemoryImages(images.float(), torch.arange(4), mean=(0.5,), std=(0.25,), image_size=28, augment=False)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    train, val, info = build_datasets("imagefolder", data_dir=tmp_path, image_size=16, train_subset=10)
    assert (len(train), len(val), info.num_classes, info.in_chans) == (10, 8, 2, 3)
    x, y = val[0]
    assert x.shape == (3, 16, 16) and y in (0, 1)
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        build_datasets("imagefolder", data_dir=tmp_path / "train")


def test_subset_sizes_are_checked():
    from mirrorla.data.datasets import _subset_indices

    assert _subset_indices(10, None) is None and _subset_indices(10, 10) is None
    assert len(_subset_indices(10, 3)) == 3
    with pytest.raises(ValueError, match=r"train_subset 11 is larger than the training split \(10 images\)"):
        _subset_indices(10, 11)  # was silently "all"
    with pytest.raises(ValueError, match="positive integer"):
        _subset_indices(10, 0)
