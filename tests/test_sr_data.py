"""SR data: photo catalog, image reading, MATLAB-style bicubic, LR/HR pairs and patch datasets."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mirrorla.data.sr import (
    DOWNSAMPLE_METHODS,
    PHOTOS,
    SRCenterCrops,
    SRDataError,
    SRPair,
    SRPatches,
    bicubic_downsample,
    build_sr_datasets,
    data_files,
    imresize,
    list_image_files,
    load_image,
    load_pairs,
    modcrop,
    photo_names,
    photo_path,
)


def _save(path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message


# ---------------------------------------------------------------------------------------------------------------
# imresize and bicubic_downsample


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2.0, 3.0])
def test_imresize_keeps_constant_images_constant(scale):
    img = torch.full((2, 3, 25, 38), 0.37, dtype=torch.float64)
    out = imresize(img, scale)
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-12)


def test_imresize_x2_weights_by_hand():
    # Keys a = -1/2 kernel stretched by 2, at distances 3.5, 2.5, 1.5, 0.5 input pixels, times 1/2.
    taps = [-0.01171875, -0.03515625, 0.11328125, 0.43359375]
    # Batch of unit columns (16, 16, 1): out[k] is column k of the (8, 16) resize matrix along H.
    matrix = imresize(torch.eye(16, dtype=torch.float64)[:, :, None], 0.5)[:, :, 0].T
    assert matrix.shape == (8, 16)
    assert matrix[3, 3:11].tolist() == pytest.approx(taps + taps[::-1])  # output 3 sits at input 6.5
    assert matrix[3, :3].abs().max() == 0 and matrix[3, 11:].abs().max() == 0
    # MATLAB mirrors with the edge repeated: inputs -1, -2, -3 fold onto 0, 1, 2
    first = [taps[3] + taps[2], taps[3] + taps[1], taps[2] + taps[0], taps[1], taps[0]]
    assert matrix[0, :5].tolist() == pytest.approx(first)


@pytest.mark.parametrize(
    ("shape", "scale", "expected"),
    [((37, 50), 1 / 2, (19, 25)), ((37, 50), 1 / 3, (13, 17)), ((36, 51), 1 / 4, (9, 13)), ((9, 7), 3.0, (27, 21))],
)
def test_imresize_output_size_is_ceil(shape, scale, expected):
    assert imresize(torch.rand(3, *shape), scale).shape == (3, *expected)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("method", DOWNSAMPLE_METHODS)
def test_bicubic_downsample_sizes(scale, method):
    hr = torch.randint(0, 256, (3, 12 * scale - 7, 9 * scale + 5), dtype=torch.uint8)
    hr = modcrop(hr, scale)
    assert hr.shape[1] % scale == 0 and hr.shape[2] % scale == 0
    lr = bicubic_downsample(hr, scale, method)
    assert lr.dtype == torch.uint8
    assert lr.shape == (3, hr.shape[1] // scale, hr.shape[2] // scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matlab_and_torch_agree_inside_and_differ_at_borders(scale):
    # smooth image: bilinear upsampling of coarse noise, on a ramp (borders differ most where the image slopes)
    size = (24 * scale, 30 * scale)
    img = F.interpolate(torch.rand(1, 3, 8, 10, dtype=torch.float64), size=size, mode="bilinear")
    img = img + torch.linspace(0, 1, size[1], dtype=torch.float64)
    matlab = imresize(img, 1 / scale)
    torch_ = F.interpolate(img, size=matlab.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
    diff = (matlab - torch_).abs()
    margin = 3  # LR pixels, i.e. 3·scale HR pixels; the kernel reaches 2 LR pixels
    assert diff[..., margin:-margin, margin:-margin].max() < 1e-4
    assert diff[..., :, 0].min() > 1e-3  # left column: mirroring vs renormalising the truncated kernel


def test_bicubic_downsample_input_checks():
    with pytest.raises(ValueError, match="modcrop"):
        bicubic_downsample(torch.zeros(3, 31, 32, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="matlab, torch"):
        bicubic_downsample(torch.zeros(3, 32, 32, dtype=torch.uint8), 2, method="lanczos")
    with pytest.raises(TypeError, match="uint8"):
        bicubic_downsample(torch.zeros(3, 32, 32), 2)


def test_bicubic_downsample_clamps_overshoot():
    hr = torch.zeros(3, 8, 8, dtype=torch.uint8)
    hr[:, :, 4:] = 255  # a hard edge overshoots below 0 and above 255 before clamping
    lr = bicubic_downsample(hr, 2)
    assert lr.min() == 0 and lr.max() == 255
    assert lr[:, :, 0].eq(0).all() and lr[:, :, -1].eq(255).all()


# ---------------------------------------------------------------------------------------------------------------
# Reading files


def test_load_image_converts_modes(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    _save(tmp_path / "gray.png", gray)
    assert torch.equal(load_image(tmp_path / "gray.png"), torch.from_numpy(gray).expand(3, 4, 5))

    rgba = np.concatenate([_random_rgb(4, 5), np.full((4, 5, 1), 7, np.uint8)], axis=2)
    _save(tmp_path / "rgba.png", rgba)
    assert torch.equal(load_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))

    wide = np.array([[0, 65535, 257 * 100, 1000]], dtype=np.uint16)
    _save(tmp_path / "gray16.png", wide)
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")  # really a 16-bit file
    assert load_image(tmp_path / "gray16.png")[0, 0].tolist() == [0, 255, 100, 4]  # round(v·255/65535)

    Image.fromarray(_random_rgb(6, 6)).convert("P").save(tmp_path / "palette.png")
    palette = load_image(tmp_path / "palette.png")
    assert palette.shape == (3, 6, 6) and palette.dtype == torch.uint8


def test_unreadable_file_and_missing_folder_raise_one_line_errors(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(SRDataError) as err:
        load_image(broken)
    _assert_one_line_naming(err, broken)
    assert isinstance(err.value.__cause__, OSError)  # PIL's error is chained, not shown as a traceback

    truncated = tmp_path / "truncated.png"
    _save(truncated, _random_rgb(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(SRDataError) as err:
        load_image(truncated)
    _assert_one_line_naming(err, truncated)

    missing = tmp_path / "nowhere"
    with pytest.raises(SRDataError) as err:
        list_image_files(missing)
    _assert_one_line_naming(err, missing)
    with pytest.raises(SRDataError) as err:
        load_pairs(str(missing), "train", 2)
    _assert_one_line_naming(err, missing)


def test_list_image_files_sorted_case_insensitive_non_recursive(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.webp", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"")
    assert [p.name for p in list_image_files(tmp_path)] == ["a.jpg", "b.PNG", "c.webp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SRDataError, match="no images"):
        list_image_files(tmp_path / "empty")
    with pytest.raises(SRDataError, match="not a folder"):
        list_image_files(tmp_path / "notes.txt")


# ---------------------------------------------------------------------------------------------------------------
# Pairs from folders


def _hr_folder(tmp_path, sizes=((21, 30), (16, 19))):
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for i, size in enumerate(sizes):
        _save(hr_dir / f"{i:04d}.png", _random_rgb(*size, seed=i))
    return hr_dir


@pytest.mark.parametrize("suffix", ["", "x2"])
def test_lr_dir_matching(tmp_path, suffix):
    hr_dir, lr_dir = _hr_folder(tmp_path), tmp_path / "lr"
    lr_dir.mkdir()
    made = {}
    for path in sorted(hr_dir.iterdir()):
        lr = torch.randint(0, 256, (3, *[n // 2 for n in load_image(path).shape[1:]]), dtype=torch.uint8)
        _save(lr_dir / f"{path.stem}{suffix}.png", lr.permute(1, 2, 0).numpy())
        made[path.stem] = lr
    pairs = load_pairs(str(hr_dir), "ignored", 2, lr_dir=str(lr_dir))
    assert [p.name for p in pairs] == ["0000", "0001"]
    for pair in pairs:
        assert torch.equal(pair.lr, made[pair.name])
        assert pair.hr.shape == (3, 2 * pair.lr.shape[1], 2 * pair.lr.shape[2])  # HR modcropped: 21×30 → 20×30
    records = data_files(str(hr_dir), "ignored", lr_dir=str(lr_dir), scale=2)
    assert len(records) == 4 and all(len(r["sha256"]) == 64 for r in records)


def test_lr_dir_mismatch_errors(tmp_path):
    hr_dir, lr_dir = _hr_folder(tmp_path), tmp_path / "lr"
    lr_dir.mkdir()
    _save(lr_dir / "0000x2.png", _random_rgb(10, 15))
    with pytest.raises(SRDataError, match="no LR image for .*0001.png.*0001x2"):
        load_pairs(str(hr_dir), "train", 2, lr_dir=str(lr_dir))
    _save(lr_dir / "0001.png", _random_rgb(8, 8))  # needs 8×9 (16×19 modcropped to 16×18)
    with pytest.raises(SRDataError, match="is 8×8 .* needs 8×9"):
        load_pairs(str(hr_dir), "train", 2, lr_dir=str(lr_dir))
    _save(lr_dir / "0001x2.png", _random_rgb(8, 9))
    with pytest.raises(SRDataError, match="several LR images"):
        load_pairs(str(hr_dir), "train", 2, lr_dir=str(lr_dir))


def test_folder_pairs_use_the_chosen_downsampling(tmp_path):
    hr_dir = _hr_folder(tmp_path)
    for method in DOWNSAMPLE_METHODS:
        for pair in load_pairs(str(hr_dir), "train", 3, method=method):
            assert torch.equal(pair.lr, bicubic_downsample(pair.hr, 3, method))
            assert pair.hr.shape[1] % 3 == 0 and pair.hr.shape[2] % 3 == 0


# ---------------------------------------------------------------------------------------------------------------
# Datasets


def _subsampled_pairs(scale: int) -> list[SRPair]:
    """Pairs whose LR is the HR's top-left pixel of every s×s block, so an aligned crop keeps lr == hr[::s, ::s]."""
    pairs = []
    for i, (height, width) in enumerate([(14, 23), (31, 17)]):
        hr = torch.randint(0, 256, (3, scale * height, scale * width), dtype=torch.uint8)
        pairs.append(SRPair(f"img{i}", hr[:, ::scale, ::scale].contiguous(), hr))
    return pairs


def _to_levels(img: torch.Tensor) -> torch.Tensor:
    return img.mul(255).round().to(torch.uint8)


def test_patches_are_aligned_and_reproducible():
    scale, patch = 3, 9
    dataset = SRPatches(_subsampled_pairs(scale), scale, patch, samples=40, augment=False)
    torch.manual_seed(123)
    first = [dataset[i] for i in range(len(dataset))]
    torch.manual_seed(123)
    second = [dataset[i] for i in range(len(dataset))]
    for (lr, hr), (lr2, hr2) in zip(first, second, strict=True):
        assert lr.shape == (3, patch, patch) and hr.shape == (3, scale * patch, scale * patch)
        assert lr.dtype == torch.float32 and 0 <= lr.min() and lr.max() <= 1
        assert torch.equal(_to_levels(lr), _to_levels(hr)[:, ::scale, ::scale])
        assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert len({lr.sum().item() for lr, _ in first}) > 30  # crops really vary


def test_augmentation_is_applied_identically_and_covers_all_8_transforms():
    scale, patch = 2, 6
    lr = torch.randperm(3 * 8 * 8).remainder(256).to(torch.uint8).view(3, 8, 8)
    hr = lr.repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # each LR pixel becomes an s×s block
    dataset = SRPatches([SRPair("blocks", lr, hr)], scale, patch, samples=200, augment=True)
    candidates = {}  # every crop under every symmetry of the square → (top, left, transform)
    for top in range(3):
        for left in range(3):
            crop = lr[:, top : top + patch, left : left + patch]
            for transform in range(8):
                img = crop.flip(-1) if transform >= 4 else crop
                candidates[torch.rot90(img, transform % 4, (-2, -1)).numpy().tobytes()] = (top, left, transform)
    seen = set()
    for i in range(len(dataset)):
        lr_patch, hr_patch = (_to_levels(img) for img in dataset[i])
        assert torch.equal(hr_patch, lr_patch.repeat_interleave(2, 1).repeat_interleave(2, 2))
        seen.add(candidates[lr_patch.numpy().tobytes()])
    assert {transform for _, _, transform in seen} == set(range(8))
    assert {(top, left) for top, left, _ in seen} == {(top, left) for top in range(3) for left in range(3)}


def test_patch_larger_than_an_image_names_it():
    pairs = _subsampled_pairs(2)  # LR sizes 14×23 and 31×17
    with pytest.raises(SRDataError, match=r"'img0' has LR size 14×23.*patch <= 14"):
        SRPatches(pairs, 2, 16, samples=4)
    with pytest.raises(SRDataError, match="img0"):
        SRCenterCrops(pairs, 2, 15)
    with pytest.raises(ValueError, match="scale 2, expected 3"):
        SRPatches(pairs, 3, 4, samples=4)


def test_center_crops_are_central_and_deterministic():
    scale, patch = 2, 10
    pairs = _subsampled_pairs(scale)
    dataset = SRCenterCrops(pairs, scale, patch)
    assert len(dataset) == 2
    for pair, (lr, hr) in zip(pairs, dataset, strict=True):
        top, left = (pair.lr.shape[1] - patch) // 2, (pair.lr.shape[2] - patch) // 2
        assert torch.equal(_to_levels(lr), pair.lr[:, top : top + patch, left : left + patch])
        assert torch.equal(_to_levels(hr), pair.hr[:, 2 * top : 2 * (top + patch), 2 * left : 2 * (left + patch)])
    torch.manual_seed(5)
    again = SRCenterCrops(pairs, scale, patch)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(dataset, again, strict=True))


def test_build_from_folder_with_separate_eval_folder(tmp_path):
    train_dir = _hr_folder(tmp_path, sizes=((40, 44), (36, 50)))
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    _save(eval_dir / "val.png", _random_rgb(30, 30, seed=9))
    train, evaluation, info = build_sr_datasets(
        str(train_dir), scale=2, patch=8, samples=5, eval_patch=12, eval_source=str(eval_dir)
    )
    assert (len(train), len(evaluation)) == (info.train_size, info.eval_size) == (5, 1)
    assert info.train_images == ("0000", "0001") and info.eval_images == ("val",)
    assert info.eval_source == str(eval_dir) and info.method == "matlab" and len(info.files) == 3
    _, same, info_same = build_sr_datasets(str(train_dir), scale=2, patch=8, samples=5, eval_patch=12)
    assert info_same.eval_images == ("0000", "0001") and len(same) == 2  # default: the folder itself


# ---------------------------------------------------------------------------------------------------------------
# The photo catalog


def _need_photo_packages() -> None:
    # find_spec, not importorskip: the catalog only locates files, and `import sklearn` alone takes seconds
    for package in ("skimage", "sklearn", "matplotlib"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'mirrorla[sr]')")


def test_photo_catalog_files_exist_load_and_splits_are_disjoint():
    _need_photo_packages()
    train, test = set(photo_names("train")), set(photo_names("test"))
    assert not train & test and train | test == set(PHOTOS)
    assert test == {"chelsea", "coffee", "flower", "grace_hopper"}
    assert {"motorcycle_left", "motorcycle_right"} <= train
    for name in PHOTOS:
        img = load_image(photo_path(name))
        assert img.dtype == torch.uint8 and img.shape[0] == 3 and min(img.shape[1:]) >= 300, name
        assert PHOTOS[name].origin.strip() and "\n" not in PHOTOS[name].origin
    assert [r["path"] for r in data_files("photos", "test")] == sorted(str(photo_path(n).resolve()) for n in test)


def test_photo_test_pairs_and_eval_crops():
    _need_photo_packages()
    pairs = load_pairs("photos", "test", 4)
    assert [p.name for p in pairs] == photo_names("test")
    assert all(p.scale == 4 and p.hr.shape[1] == 4 * p.lr.shape[1] for p in pairs)
    crops = SRCenterCrops(pairs, 4, 64)
    assert len(crops) == 4 and crops[0][1].shape == (3, 256, 256)


def test_photo_errors(monkeypatch):
    with pytest.raises(SRDataError, match="unknown photo 'lena'"):
        photo_path("lena")
    with pytest.raises(ValueError, match="split"):
        photo_names("val")
    with pytest.raises(SRDataError, match="lr_dir"):
        load_pairs("photos", "test", 2, lr_dir="somewhere")
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` fail
    with pytest.raises(SRDataError, match=r"pip install 'mirrorla\[sr\]'"):
        photo_path("flower")
