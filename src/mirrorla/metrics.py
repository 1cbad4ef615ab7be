"""Image quality as super-resolution papers report it: PSNR and SSIM on the Y channel of 8-bit images.

Dimension letters: B batch, H, W height and width.

The convention (EDSR, RCAN, SwinIR; BasicSR's ``calculate_psnr``/``calculate_ssim`` with
``test_y_channel=True``): both images are first saved as 8 bits (:func:`quantize`), converted to the Y of
BT.601 YCbCr in [16, 235] (:func:`rgb_to_y`, kept in floating point like BasicSR's
``basicsr/metrics/metric_util.py::to_y_channel``), ``border`` pixels (usually the scale) are cropped from every
side, and PSNR/SSIM are computed in float64 with peak 255. Some MATLAB scripts call ``rgb2ycbcr`` on uint8
images, which also rounds Y to integers; this module does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "psnr_y", "quantize", "rgb_to_y", "ssim_y"]

# SSIM constants: Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to structural
# similarity", IEEE TIP 13(4), 2004, Sec. III-C: 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03.
_SSIM_WINDOW, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03
_PEAK = 255.0


def rgb_to_y(img: Tensor) -> Tensor:
    """Y (…, H, W) in [16, 235] of float RGB (…, 3, H, W) in [0, 1], as MATLAB's ``rgb2ycbcr``."""
    if img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects RGB images (..., 3, H, W), got shape {tuple(img.shape)}")
    red, green, blue = img.unbind(-3)
    # ITU-R BT.601 luma, studio range: Y = 16 + 219·(0.299 R + 0.587 G + 0.114 B), i.e. the coefficients
    # 65.481, 128.553, 24.966 of MATLAB's rgb2ycbcr.
    return 16.0 + 65.481 * red + 128.553 * green + 24.966 * blue


def quantize(img: Tensor) -> Tensor:
    """``img`` clamped to [0, 1] and rounded to the 256 levels of an 8-bit image (still float, still in [0, 1])."""
    return img.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def _cropped(sr: Tensor, hr: Tensor, border: int, y_only: bool = True) -> tuple[Tensor, Tensor]:
    """Quantized float64 images in [0, 255] with ``border`` pixels cropped: Y (B, H', W') or RGB (B, 3, H', W')."""
    if sr.shape != hr.shape or sr.ndim != 4 or sr.shape[1] != 3:
        raise ValueError(
            f"sr and hr must both be (B, 3, H, W) of one shape, got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    if not (sr.is_floating_point() and hr.is_floating_point()):
        raise TypeError(f"sr and hr must be float images in [0, 1], got {sr.dtype} and {hr.dtype}; divide uint8 by 255")
    height, width = sr.shape[-2:]
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise ValueError(f"border must be an integer >= 0, got {border!r}")
    if 2 * border >= min(height, width):
        raise ValueError(
            f"border {border} crops away all of a {height}×{width} image; use border < {min(height, width) / 2}"
        )
    images = []
    for img in (sr, hr):
        img = quantize(img.to(torch.float64))
        img = rgb_to_y(img) if y_only else img * _PEAK
        images.append(img[..., border : height - border, border : width - border])
    return images[0], images[1]


def _psnr(sr: Tensor, hr: Tensor) -> Tensor:
    mse = (sr - hr).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(_PEAK**2 / mse)  # mse = 0 gives +inf


def psnr_y(sr: Tensor, hr: Tensor, border: int) -> Tensor:
    """PSNR (B,) in dB on Y of float (B, 3, H, W) images in [0, 1], ``border`` pixels cropped; identical → inf."""
    return _psnr(*_cropped(sr, hr, border))


def psnr(sr: Tensor, hr: Tensor, border: int, y_only: bool = True) -> Tensor:
    """PSNR (B,) in dB on Y (``y_only``, the SR convention) or on all three RGB channels."""
    return _psnr(*_cropped(sr, hr, border, y_only))


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    offsets = torch.arange(_SSIM_WINDOW, dtype=dtype, device=device) - (_SSIM_WINDOW - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    return window / window.sum()


def _filter_valid(img: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian filtering of (B, 1, H, W) without padding: (B, 1, H - 10, W - 10)."""
    img = F.conv2d(img, window.view(1, 1, -1, 1))
    return F.conv2d(img, window.view(1, 1, 1, -1))


def ssim_y(sr: Tensor, hr: Tensor, border: int) -> Tensor:
    """Mean SSIM (B,) on Y of float (B, 3, H, W) images in [0, 1], ``border`` pixels cropped; identical → 1.

    Statistics use 'valid' filtering (no padding), so the map is (H - 2·border - 10, W - 2·border - 10).
    """
    y_sr, y_hr = _cropped(sr, hr, border)
    if min(y_sr.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {_SSIM_WINDOW}×{_SSIM_WINDOW} pixels after cropping border {border}, "
            f"got {y_sr.shape[-2]}×{y_sr.shape[-1]}; use larger images or a smaller border"
        )
    window = _gaussian_window(y_sr.dtype, y_sr.device)
    x, y = y_sr[:, None], y_hr[:, None]
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - mu_x**2
    var_y = _filter_valid(y * y, window) - mu_y**2
    cov_xy = _filter_valid(x * y, window) - mu_x * mu_y
    c1, c2 = (_SSIM_K1 * _PEAK) ** 2, (_SSIM_K2 * _PEAK) ** 2
    # Wang et al. 2004, eq. (13); the image score is the mean of the map, eq. (17).
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)
