"""Single-image super-resolution (SR) data: built-in photographs, bicubic degradation, paired datasets.

Dimension letters: C channels (always 3), H, W high-resolution (HR) height and width, h, w low-resolution
(LR) height and width, s the integer scale (H = s·h, W = s·w), p the LR patch side.

**Photos.** :data:`PHOTOS` lists real photographs shipped inside scikit-image, scikit-learn and matplotlib
(``pip install 'mirrorla[sr]'``), each with a fixed split: whole test images are never seen in training.
Seven train photos are gray (brick, camera, cell, coins, grass, gravel, moon) and load as R = G = B.

**Degradation.** LR images are made the way SR benchmarks make them: crop the HR image to a multiple of s
(:func:`modcrop`), shrink it by 1/s with antialiased bicubic, round to 8 bits. Two implementations:

- ``"matlab"`` (default): :func:`imresize`, MATLAB ``imresize``'s bicubic (Keys a = -1/2 kernel stretched
  by s, symmetric mirroring at borders), the one benchmark LR images (DIV2K's bicubic track, the usual
  Set5/Set14 scripts) are made with. It is written from MATLAB's documented algorithm, not checked against
  MATLAB itself; tests check the ×2 weights (-0.0117, -0.0352, 0.1133, 0.4336, mirrored) by hand.
- ``"torch"``: ``F.interpolate(mode="bicubic", antialias=True)``: the same kernel, but at borders it
  renormalises the truncated kernel instead of mirroring the image.

Measured on ``astronaut`` (512×512 RGB, modcropped) on 2026-12-01: |matlab - torch| in 8-bit LR levels,
interior = pixels at least 2 LR pixels from the edge (the kernel reaches ±2 LR pixels), border = the ring
of the outer 2 LR pixels:

=====  ======================  =====================================================
scale  interior: max / mean    border ring: max / mean (outermost pixel; second pixel)
=====  ======================  =====================================================
×2     0 / 0 (bit-identical)   11 / 0.245  (11 / 0.391; 2 / 0.097)
×3     0 / 0 (bit-identical)   12 / 0.408  (12 / 0.656; 3 / 0.158)
×4     0 / 0 (bit-identical)   12 / 0.464  (12 / 0.741; 2 / 0.181)
=====  ======================  =====================================================

so the two give the same LR images except on a 2-pixel frame, where a model trained on one method's LR
images sees different borders from the other's.

**Randomness.** :class:`SRPatches` draws image, crop and flip/rotation from the *global* torch RNG
(``torch.randint``/``torch.multinomial``), not from the item index. The training loop reseeds the global
RNG every epoch, so a run is a function of its seed; with ``num_workers > 0`` each DataLoader worker is
seeded from a base seed drawn in the main process, so a run is reproducible for a fixed worker count.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from mirrorla.data.checksums import data_records

__all__ = [
    "DOWNSAMPLE_METHODS",
    "IMAGE_EXTENSIONS",
    "PHOTOS",
    "Photo",
    "SRCenterCrops",
    "SRDataError",
    "SRDataInfo",
    "SRPair",
    "SRPatches",
    "bicubic_downsample",
    "build_sr_datasets",
    "data_files",
    "imresize",
    "list_image_files",
    "load_image",
    "load_pairs",
    "modcrop",
    "photo_names",
    "photo_path",
]

DOWNSAMPLE_METHODS = ("matlab", "torch")
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")
_INSTALL_HINT = "pip install 'mirrorla[sr]'"


class SRDataError(ValueError):
    """Bad or missing SR data; the message is one line naming the path (or image) and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# The photo catalog


@dataclass(frozen=True)
class Photo:
    """A photograph shipped inside an installed package.

    ``relpath`` is relative to the package's folder (for matplotlib: ``matplotlib.get_data_path()``);
    ``origin`` is what the photo is and its source/credit as the package's README or docstring states it.
    """

    name: str
    package: str
    relpath: str
    origin: str
    split: str


# fmt: off
# (name, package, path inside the package folder, split, origin)
_CATALOG = (
    # test split: whole images never used in training
    ("chelsea", "skimage", "data/chelsea.png", "test",
     "Chelsea the cat; CC0 by the photographer Stefan van der Walt (skimage.data.chelsea)."),
    ("coffee", "skimage", "data/coffee.png", "test",
     "Coffee cup, courtesy of Pikolo Espresso Bar; CC0 by the photographer Rachel Michetti "
     "(skimage.data.coffee)."),
    ("flower", "sklearn", "datasets/images/flower.jpg", "test",
     "Photo by Flickr user vultilion (photo 6056698931), CC BY 2.0, retrieved 2011 by Robert Layton "
     "(sklearn images/README.txt; its attribution line says danielbuechele)."),
    ("grace_hopper", "matplotlib", "sample_data/grace_hopper.jpg", "test",
     "Portrait of Grace Murray Hopper; the sample_data README states no source or licence (matplotlib PR "
     "#1599 added it as a public-domain image)."),
    # train split (the two motorcycle views are one stereo scene: both stay in train)
    ("astronaut", "skimage", "data/astronaut.png", "train",
     "NASA astronaut Eileen Collins, from the NASA Great Images database; public domain "
     "(skimage.data.astronaut)."),
    ("brick", "skimage", "data/brick.png", "train",
     "Brick wall (gray), CC0Textures Bricks25, perspective-corrected, rotated, cropped and scaled; CC0 "
     "(skimage.data.brick)."),
    ("camera", "skimage", "data/camera.png", "train",
     "Gray-level 'camera' photograph; CC0 by the photographer Lav Varshney (skimage.data.camera)."),
    ("cell", "skimage", "data/cell.png", "train",
     "Cell in saline (gray), a quantitative phase image from a digital hologram (Müller et al., Optics "
     "Express 2018); CC0 (skimage.data.cell)."),
    ("coins", "skimage", "data/coins.png", "train",
     "Greek coins from Pompeii (gray), Brooklyn Museum Collection; no known copyright restrictions "
     "(skimage.data.coins)."),
    ("grass", "skimage", "data/grass.png", "train",
     "Grass (gray), DeviantArt linolafett 'Grass-01', cropped to 512×512; CC0 (skimage.data.grass)."),
    ("gravel", "skimage", "data/gravel.png", "train",
     "Gravel (gray), CC0Textures Gravel04, rescaled and cropped to 512×512; CC0 (skimage.data.gravel)."),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", "train",
     "Hubble eXtreme Deep Field, HubbleSite release 2012/37; NASA, public domain "
     "(skimage.data.hubble_deep_field)."),
    ("ihc", "skimage", "data/ihc.png", "train",
     "IHC staining of colonic glands, Center for Microscopy And Molecular Imaging (CMMI); no known "
     "copyright restrictions (skimage.data.immunohistochemistry)."),
    ("moon", "skimage", "data/moon.png", "train",
     "Surface of the moon (gray, low contrast); the skimage.data.moon docstring states no source or "
     "licence."),
    ("motorcycle_left", "skimage", "data/motorcycle_left.png", "train",
     "Left view of the Middlebury 2014 stereo 'Motorcycle' (Scharstein et al., GCPR 2014), downsampled ×4 "
     "by scikit-image (skimage.data.stereo_motorcycle)."),
    ("motorcycle_right", "skimage", "data/motorcycle_right.png", "train",
     "Right view of the Middlebury 2014 stereo 'Motorcycle' (Scharstein et al., GCPR 2014), downsampled ×4"
     " by scikit-image (skimage.data.stereo_motorcycle)."),
    ("retina", "skimage", "data/retina.jpg", "train",
     "Fundus photograph of a normal left eye by Mikael Häggström, Wikimedia Commons; CC0 "
     "(skimage.data.retina)."),
    ("rocket", "skimage", "data/rocket.jpg", "train",
     "Launch of DSCOVR on a Falcon 9, SpaceX Photos on Flickr; released into the public domain by SpaceX "
     "(skimage.data.rocket)."),
    ("china", "sklearn", "datasets/images/china.jpg", "train",
     "Photo by Flickr user danielbuechele (photo 6061409035), CC BY 2.0, retrieved 2011 by Robert Layton "
     "(sklearn images/README.txt)."),
)
# fmt: on
PHOTOS: dict[str, Photo] = {
    name: Photo(name, package, relpath, origin, split) for name, package, relpath, split, origin in _CATALOG
}


def _package_folder(package: str, photo: str) -> Path:
    missing = SRDataError(f"photo '{photo}' ships with {package}, which is not installed; {_INSTALL_HINT}")
    if package == "matplotlib":
        try:
            import matplotlib
        except ImportError as err:
            raise missing from err
        return Path(matplotlib.get_data_path())
    # The package's folder from its import spec (its __file__) without importing it: `import sklearn` takes ~3 s.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise missing
    return Path(os.path.dirname(spec.origin))


def photo_names(split: str | None = None) -> list[str]:
    """Names of the catalog's photos in ``split`` (``"train"`` or ``"test"``; None: all), in catalog order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return [name for name, photo in PHOTOS.items() if split is None or photo.split == split]


def photo_path(name: str) -> Path:
    """Path of the built-in photo ``name`` inside its installed package."""
    if name not in PHOTOS:
        raise SRDataError(f"unknown photo {name!r}; choose one of {', '.join(PHOTOS)}")
    photo = PHOTOS[name]
    path = _package_folder(photo.package, name) / photo.relpath
    if not path.is_file():
        raise SRDataError(f"photo '{name}' not found at {path}; reinstall {photo.package} ({_INSTALL_HINT})")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reading images


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as uint8 (3, H, W) RGB.

    Gray is replicated to 3 channels; RGBA/LA/P are converted to RGB with alpha dropped (not composited);
    16-bit gray is rescaled to 8 bits (v·255/65535, rounded); 16-bit RGB is reduced to 8 bits by Pillow itself
    (it keeps the high byte). Any read failure raises :class:`SRDataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise SRDataError(f"no image file at {path}; check the path")
    try:
        with Image.open(path) as image:
            image.load()
            array = _rgb_array(image, path)
    except SRDataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise SRDataError(f"cannot read image {path} ({_one_line(err)}); replace the file or remove it") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _rgb_array(image: Image.Image, path: Path) -> np.ndarray:
    """uint8 (H, W, 3) of an opened image."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # round(v·255/65535)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        raise SRDataError(f"image {path} holds floating-point pixels; save it as an 8- or 16-bit image")
    return np.array(image.convert("RGB"), dtype=np.uint8)


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (not sub-folders), sorted by name; hidden files are skipped.

    Extensions: :data:`IMAGE_EXTENSIONS`, any case.
    """
    folder = Path(folder)
    if not folder.exists():
        raise SRDataError(f"image folder {folder} does not exist; pass an existing folder of images")
    if not folder.is_dir():
        raise SRDataError(f"{folder} is not a folder; pass a folder of images")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise SRDataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}; put the HR or LR images there")
    return files


# ---------------------------------------------------------------------------------------------------------------
# Degradation


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")


def _check_method(method: str) -> None:
    if method not in DOWNSAMPLE_METHODS:
        raise ValueError(f"unknown downsampling method {method!r}; choose one of {', '.join(DOWNSAMPLE_METHODS)}")


def modcrop(img: Tensor, scale: int) -> Tensor:
    """Crop (..., H, W) at the bottom and right so H and W are multiples of ``scale``."""
    _check_scale(scale)
    height, width = img.shape[-2:]
    return img[..., : height - height % scale, : width - width % scale]


def _cubic(distance: Tensor) -> Tensor:
    # Keys, "Cubic convolution interpolation for digital image processing", IEEE TASSP 29(6), 1981, with
    # a = -1/2: the kernel MATLAB's imresize calls "cubic" (and PyTorch's antialiased bicubic uses).
    ax = distance.abs()
    near = (1.5 * ax - 2.5) * ax * ax + 1.0
    far = ((-0.5 * ax + 2.5) * ax - 4.0) * ax + 2.0
    return torch.where(ax <= 1, near, torch.where(ax <= 2, far, torch.zeros_like(ax)))


def _output_length(length: int, scale: float) -> int:
    # MATLAB takes ceil(scale·length); rounding to 1e-9 first keeps 50·1.1 = 55.00000000000001 at 55.
    return max(1, math.ceil(round(length * scale, 9)))


def _resize_matrix(in_length: int, out_length: int, scale: float) -> Tensor:
    """float64 (out_length, in_length) matrix M with resized = M @ x along one axis (MATLAB ``contributions``)."""
    kernel_width = 4.0
    if scale < 1:  # antialiasing: stretch the kernel by 1/scale so it low-passes before subsampling
        kernel_width /= scale
        kernel = lambda d: scale * _cubic(scale * d)
    else:
        kernel = _cubic
    # 1-based positions as in MATLAB: output pixel x samples the input at u = x/scale + 0.5·(1 - 1/scale)
    center = torch.arange(1, out_length + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(center - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    index = left[:, None] + torch.arange(taps, dtype=torch.float64)  # (out, taps), 1-based, may leave the image
    weights = kernel(center[:, None] - index)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Symmetric mirroring with the edge pixel repeated (MATLAB pads with [1..n, n..1] periodically).
    folded = (index.long() - 1) % (2 * in_length)
    mirrored = torch.where(folded < in_length, folded, 2 * in_length - 1 - folded)
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    return matrix.scatter_add_(1, mirrored, weights)


def imresize(img: Tensor, scale: float) -> Tensor:
    """MATLAB-compatible bicubic resize of float (..., H, W) to (..., ceil(H·scale), ceil(W·scale)).

    Antialiased when ``scale < 1``; computed as two matrix products (along H, then W) with float64 weights
    cast to ``img``'s dtype. Values are not clamped.
    """
    if not img.is_floating_point() or img.ndim < 2:
        raise TypeError(f"img must be a float tensor (..., H, W), got {img.dtype} {tuple(img.shape)}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    height, width = img.shape[-2:]
    rows = _resize_matrix(height, _output_length(height, scale), scale).to(img)
    cols = _resize_matrix(width, _output_length(width, scale), scale).to(img)
    return torch.matmul(torch.matmul(rows, img), cols.T)


def bicubic_downsample(hr: Tensor, scale: int, method: str = "matlab") -> Tensor:
    """Bicubic LR image uint8 (3, H/s, W/s) of a modcropped uint8 HR image (3, H, W).

    Resizes in float64 on 8-bit levels (the same as resizing [0, 1] values and scaling by 255, resizing being
    linear), clamps to [0, 255] and rounds half up to uint8, once, after both passes. (MATLAB on a uint8
    array may round between its two passes; that would move some pixels by one level.)
    """
    _check_scale(scale)
    _check_method(method)
    if hr.dtype != torch.uint8 or hr.ndim != 3:
        raise TypeError(f"hr must be a uint8 image (3, H, W), got {hr.dtype} {tuple(hr.shape)}")
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(
            f"hr is {height}×{width}, not a multiple of scale {scale}; crop it first with modcrop(hr, {scale})"
        )
    if scale == 1:
        return hr.clone()
    levels = hr.to(torch.float64)
    if method == "matlab":
        lr = imresize(levels, 1 / scale)
    else:
        size = (height // scale, width // scale)
        lr = F.interpolate(levels[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
    # Round half up like MATLAB's uint8 conversion (torch.round rounds half to even).
    return lr.clamp_(0, 255).add_(0.5).floor_().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Pairs


@dataclass(frozen=True, eq=False)
class SRPair:
    """One image as uint8 LR (3, h, w) and HR (3, s·h, s·w)."""

    name: str
    lr: Tensor
    hr: Tensor

    def __post_init__(self) -> None:
        for label, img in (("lr", self.lr), ("hr", self.hr)):
            if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
                raise TypeError(f"{self.name}: {label} must be uint8 (3, H, W), got {img.dtype} {tuple(img.shape)}")
        (height, width), (lr_height, lr_width) = self.hr.shape[1:], self.lr.shape[1:]
        integer_multiple = min(lr_height, lr_width) > 0 and height % lr_height == 0 and width % lr_width == 0
        if not integer_multiple or height // lr_height != width // lr_width:
            raise ValueError(
                f"{self.name}: hr {height}×{width} must be s times lr {lr_height}×{lr_width} for one integer s"
            )

    @property
    def scale(self) -> int:
        return self.hr.shape[1] // self.lr.shape[1]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _hr_files(source: str, split: str) -> list[tuple[str, Path]]:
    if source == "photos":
        return [(name, photo_path(name)) for name in photo_names(_check_split(split))]
    return [(path.stem, path) for path in list_image_files(source)]


def _match_lr_files(hr_files: list[tuple[str, Path]], lr_dir: str | os.PathLike, scale: int) -> dict[str, Path]:
    """LR file per HR name: same stem, or stem + ``x{scale}`` (DIV2K's ``0001x2.png``)."""
    by_stem: dict[str, list[Path]] = {}
    for path in list_image_files(lr_dir):
        by_stem.setdefault(path.stem, []).append(path)
    matched = {}
    for name, hr_path in hr_files:
        candidates = by_stem.get(name, []) + by_stem.get(f"{name}x{scale}", [])
        if not candidates:
            raise SRDataError(
                f"no LR image for {hr_path} in {lr_dir}: expected {name}.<ext> or {name}x{scale}.<ext>; "
                "add it or remove the HR image"
            )
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise SRDataError(f"several LR images in {lr_dir} match {hr_path} ({names}); keep one")
        matched[name] = candidates[0]
    return matched


def _lr_files_for(source: str, hr_files: list[tuple[str, Path]], scale: int, lr_dir: str | None) -> dict[str, Path]:
    if lr_dir is None:
        return {}
    if source == "photos":
        raise SRDataError(f"lr_dir={lr_dir} applies to a folder source, not 'photos'; drop lr_dir or pass a folder")
    return _match_lr_files(hr_files, lr_dir, scale)


def load_pairs(source: str, split: str, scale: int, method: str = "matlab", lr_dir: str | None = None) -> list[SRPair]:
    """HR/LR pairs from the photo catalog (``source="photos"``, ``split`` "train"/"test") or a folder of HR images.

    For a folder, ``split`` is ignored and every image in it is used. HR images are modcropped to a multiple
    of ``scale``. LR images are ``bicubic_downsample(hr, scale, method)``, or, with ``lr_dir``, read from the
    file there with the same stem (optionally suffixed ``x{scale}``), which must be exactly (H/s, W/s).
    """
    _check_scale(scale)
    _check_method(method)
    hr_files = _hr_files(source, split)
    lr_files = _lr_files_for(source, hr_files, scale, lr_dir)
    pairs = []
    for name, hr_path in hr_files:
        hr = modcrop(load_image(hr_path), scale)
        if min(hr.shape[1:]) == 0:
            raise SRDataError(f"image {hr_path} is smaller than the scale {scale}; remove it")
        if name not in lr_files:
            pairs.append(SRPair(name, bicubic_downsample(hr, scale, method), hr))
            continue
        lr = load_image(lr_files[name])
        expected = (hr.shape[1] // scale, hr.shape[2] // scale)
        if tuple(lr.shape[1:]) != expected:
            raise SRDataError(
                f"LR image {lr_files[name]} is {lr.shape[1]}×{lr.shape[2]} but {hr_path} cropped to a multiple "
                f"of {scale} needs {expected[0]}×{expected[1]}; regenerate the LR images at scale {scale}"
            )
        pairs.append(SRPair(name, lr, hr))
    return pairs


def data_files(
    source: str, split: str, lr_dir: str | None = None, scale: int | None = None
) -> tuple[dict[str, Any], ...]:
    """Records (path, SHA-256, bytes) of the files :func:`load_pairs` reads; ``lr_dir`` needs ``scale``."""
    hr_files = _hr_files(source, split)
    if lr_dir is not None and scale is None:
        raise ValueError("data_files with lr_dir needs scale= to match LR names such as 0001x2.png")
    lr_files = _lr_files_for(source, hr_files, scale or 1, lr_dir)
    return data_records([path for _, path in hr_files] + list(lr_files.values()))


# ---------------------------------------------------------------------------------------------------------------
# Datasets


def _checked_pairs(pairs: Iterable[SRPair], scale: int, patch: int, what: str) -> tuple[SRPair, ...]:
    pairs = tuple(pairs)
    _check_scale(scale)
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"{what}: patch must be an integer >= 1, got {patch!r}")
    if not pairs:
        raise SRDataError(f"{what} needs at least one image pair, got none; check the data source")
    for pair in pairs:
        if pair.scale != scale:
            raise ValueError(
                f"{what}: pair {pair.name!r} has scale {pair.scale}, expected {scale}; reload it with scale={scale}"
            )
    largest = min(min(pair.lr.shape[1:]) for pair in pairs)
    for pair in pairs:
        height, width = pair.lr.shape[1:]
        if min(height, width) < patch:
            raise SRDataError(
                f"{what}: image {pair.name!r} has LR size {height}×{width}, smaller than the {patch}×{patch} "
                f"patch; use patch <= {largest} (the smallest LR side of these images) or remove the image"
            )
    return pairs


def _crop(pair: SRPair, scale: int, patch: int, top: int, left: int) -> tuple[Tensor, Tensor]:
    lr = pair.lr[:, top : top + patch, left : left + patch]
    hr = pair.hr[:, scale * top : scale * (top + patch), scale * left : scale * (left + patch)]
    return lr, hr


def _dihedral(img: Tensor, transform: int) -> Tensor:
    """One of the 8 symmetries of the square: ``transform // 4`` horizontal flips, then ``transform % 4`` rot90."""
    if transform >= 4:
        img = img.flip(-1)
    return torch.rot90(img, transform % 4, dims=(-2, -1))


def _to_unit(img: Tensor) -> Tensor:
    return img.to(torch.float32).div_(255.0).contiguous()


class SRPatches(Dataset):
    """``samples`` random aligned patches: float LR (3, p, p) and HR (3, s·p, s·p) in [0, 1].

    Each item picks an image uniformly (each image is seen equally often, as in DIV2K-style training; by
    pixel count, the two largest photos, retina and hubble_deep_field, mostly black, would supply 44% of
    the patches of the built-in set), an LR top-left corner
    uniformly (the HR crop starts at s times it) and, with ``augment``, one of the 8 flips/rotations for
    both. All draws come from the global torch RNG; the index only bounds the length (see module docstring).
    """

    def __init__(self, pairs: Iterable[SRPair], scale: int, patch: int, samples: int, augment: bool = True) -> None:
        self.pairs = _checked_pairs(pairs, scale, patch, "SRPatches")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"SRPatches: samples must be an integer >= 1, got {samples!r}")
        self.scale, self.patch, self.samples, self.augment = scale, patch, samples, augment
        self.weights = torch.full((len(self.pairs),), 1.0 / len(self.pairs), dtype=torch.float64)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.samples:
            raise IndexError(f"index {index} out of range for {self.samples} samples")
        pair = self.pairs[int(torch.multinomial(self.weights, 1))]
        height, width = pair.lr.shape[1:]
        top = int(torch.randint(height - self.patch + 1, (1,)))
        left = int(torch.randint(width - self.patch + 1, (1,)))
        lr, hr = _crop(pair, self.scale, self.patch, top, left)
        if self.augment:
            transform = int(torch.randint(8, (1,)))
            lr, hr = _dihedral(lr, transform), _dihedral(hr, transform)
        return _to_unit(lr), _to_unit(hr)


class SRCenterCrops(Dataset):
    """One item per image: the central aligned LR crop (3, p, p) and its HR crop (3, s·p, s·p), float in [0, 1]."""

    def __init__(self, pairs: Iterable[SRPair], scale: int, patch: int) -> None:
        self.pairs = _checked_pairs(pairs, scale, patch, "SRCenterCrops")
        self.scale, self.patch = scale, patch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        pair = self.pairs[index]
        height, width = pair.lr.shape[1:]
        lr, hr = _crop(pair, self.scale, self.patch, (height - self.patch) // 2, (width - self.patch) // 2)
        return _to_unit(lr), _to_unit(hr)


@dataclass(frozen=True)
class SRDataInfo:
    """What :func:`build_sr_datasets` built and read.

    ``name``/``eval_source``: the train and eval sources ("photos" or a folder); ``train_images``/
    ``eval_images``: image names; ``train_size``/``eval_size``: dataset lengths; ``patch``/``eval_patch``:
    LR patch sides; ``method``: the downsampling method (unused for images read from an LR folder, whose
    files then appear in ``files``); ``files``: records of every file read (see :mod:`mirrorla.data.checksums`).
    """

    name: str
    scale: int
    patch: int
    train_images: tuple[str, ...]
    eval_images: tuple[str, ...]
    train_size: int
    eval_size: int
    method: str
    files: tuple[dict[str, Any], ...]
    eval_patch: int = 0
    eval_source: str = ""


def build_sr_datasets(
    source: str = "photos",
    scale: int = 2,
    patch: int = 48,
    samples: int = 4000,
    eval_patch: int = 64,
    method: str = "matlab",
    lr_dir: str | None = None,
    augment: bool = True,
    eval_source: str | None = None,
    eval_lr_dir: str | None = None,
) -> tuple[SRPatches, SRCenterCrops, SRDataInfo]:
    """Train patches, eval center crops and their description.

    Train: ``source``'s train split ("photos") or every image of the folder. Eval: ``eval_source``'s test
    split or folder; when ``eval_source`` is None it is ``source`` (with ``lr_dir``), so "photos" evaluates
    on the test photos and a folder evaluates on its own (training) images, which measures fit, not
    generalisation: pass a separate ``eval_source`` folder to measure that.
    """
    if eval_source is None:
        if eval_lr_dir is not None:
            raise ValueError("eval_lr_dir needs eval_source; pass the folder of eval HR images too")
        eval_source, eval_lr_dir = source, lr_dir
    train_pairs = load_pairs(source, "train", scale, method, lr_dir)
    if eval_source != "photos" and (eval_source, eval_lr_dir) == (source, lr_dir):
        eval_pairs = train_pairs  # the same folder: read it once
    else:
        eval_pairs = load_pairs(eval_source, "test", scale, method, eval_lr_dir)
    train = SRPatches(train_pairs, scale, patch, samples, augment)
    # The validation crop is at most the smallest evaluation image (e.g. 75 LR pixels for chelsea at ×4).
    eval_patch = min(eval_patch, min(min(pair.lr.shape[1:]) for pair in eval_pairs)) if eval_pairs else eval_patch
    evaluation = SRCenterCrops(eval_pairs, scale, eval_patch)
    records = data_files(source, "train", lr_dir, scale)
    if eval_pairs is not train_pairs:
        records += data_files(eval_source, "test", eval_lr_dir, scale)
    unique = {record["path"]: record for record in records}
    info = SRDataInfo(
        name=str(source),
        scale=scale,
        patch=patch,
        train_images=tuple(pair.name for pair in train_pairs),
        eval_images=tuple(pair.name for pair in eval_pairs),
        train_size=len(train),
        eval_size=len(evaluation),
        method=method,
        files=tuple(unique[path] for path in sorted(unique)),
        eval_patch=eval_patch,
        eval_source=str(eval_source),
    )
    return train, evaluation, info
