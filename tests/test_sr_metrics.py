"""SR metrics: Y conversion, PSNR and SSIM on Y against scikit-image, border cropping, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirrorla.metrics import psnr, psnr_y, quantize, rgb_to_y, ssim_y

# Both sides run in float64 on the same Y values; 1e-6 relative leaves room only for summation order.
RTOL = 1e-6


def _y_numpy(img: torch.Tensor, border: int) -> np.ndarray:
    """Y of one (3, H, W) image computed independently of rgb_to_y, cropped: the skimage side of the check."""
    levels = np.round(np.clip(img.double().numpy(), 0, 1) * 255) / 255
    y = 16 + 65.481 * levels[0] + 128.553 * levels[1] + 24.966 * levels[2]
    return y[border : y.shape[0] - border, border : y.shape[1] - border]


def _camera_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 3×61×67 crop of the real photo ``camera`` and a noisy, blurred-ish version of it."""
    data = pytest.importorskip("skimage.data")
    gray = torch.from_numpy(data.camera()[200:261, 150:217].astype(np.float64) / 255)
    hr = torch.stack([gray, gray.roll(1, 0), gray.roll(1, 1)])[None]
    sr = (0.5 * hr + 0.5 * hr.roll(1, -1) + 0.02 * torch.randn(hr.shape, dtype=torch.float64)).clamp(0, 1)
    return sr, hr


def _random_pair() -> tuple[torch.Tensor, torch.Tensor]:
    hr = torch.rand(2, 3, 37, 45)
    return (hr + 0.05 * torch.randn(hr.shape)).clamp(0, 1), hr


@pytest.mark.parametrize("make_pair", [_random_pair, _camera_pair], ids=["random", "camera"])
@pytest.mark.parametrize("border", [0, 4])
def test_psnr_ssim_match_skimage(make_pair, border):
    metrics = pytest.importorskip("skimage.metrics")
    sr, hr = make_pair()
    got_psnr, got_ssim = psnr_y(sr, hr, border), ssim_y(sr, hr, border)
    assert got_psnr.shape == got_ssim.shape == (sr.shape[0],)
    for i in range(sr.shape[0]):
        y_sr, y_hr = _y_numpy(sr[i], border), _y_numpy(hr[i], border)
        want_psnr = metrics.peak_signal_noise_ratio(y_hr, y_sr, data_range=255)
        want_ssim = metrics.structural_similarity(
            y_hr, y_sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert got_psnr[i].item() == pytest.approx(want_psnr, rel=RTOL)
        assert got_ssim[i].item() == pytest.approx(want_ssim, rel=RTOL)
        assert 0.0 < want_ssim < 0.999  # the images really differ: the check is not trivially 1 == 1


def test_rgb_to_y_known_values():
    black, white = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    assert rgb_to_y(black).item() == pytest.approx(16.0)
    assert rgb_to_y(white).item() == pytest.approx(235.0)
    pure = torch.eye(3).view(3, 3, 1, 1)  # red, green, blue images
    assert rgb_to_y(pure).flatten().tolist() == pytest.approx([16 + 65.481, 16 + 128.553, 16 + 24.966])
    with pytest.raises(ValueError, match="3, H, W"):
        rgb_to_y(torch.zeros(4, 5, 5))


def test_quantize_rounds_to_8_bit_levels():
    img = torch.tensor([-0.2, 0.0, 0.3 / 255, 0.7 / 255, 0.5, 1.3])
    assert quantize(img).mul(255).tolist() == pytest.approx([0, 0, 0, 1, 128, 255])


def test_identical_images_give_inf_psnr_and_unit_ssim():
    img = torch.rand(2, 3, 24, 26)
    assert torch.isinf(psnr_y(img, img.clone(), 2)).all()
    assert torch.allclose(ssim_y(img, img.clone(), 2), torch.ones(2, dtype=torch.float64))
    # differences below half an 8-bit level vanish once both images are quantized
    assert torch.isinf(psnr_y(quantize(img), quantize(img) + 0.4 / 255, 0)).all()


def test_border_crop_ignores_a_differing_border():
    hr = torch.full((1, 3, 20, 20), 0.5)
    sr = hr.clone()
    sr[..., :2, :] = 1.0  # only the top 2 rows differ, in all channels
    assert torch.isinf(psnr_y(sr, hr, border=2)).all()
    # by hand: Y = 16 + 219·v, levels 128/255 and 255/255 differ by 219·127/255 in 40 of 400 pixels
    diff = 219 * (255 - 128) / 255
    want = 10 * math.log10(255**2 / (diff**2 * 40 / 400))
    assert psnr_y(sr, hr, border=0).item() == pytest.approx(want, rel=1e-12)
    # over RGB: every channel differs by 127 levels in the same 40 pixels
    want_rgb = 10 * math.log10(255**2 / (127**2 * 40 / 400))
    assert psnr(sr, hr, border=0, y_only=False).item() == pytest.approx(want_rgb, rel=1e-12)


def test_input_checks():
    a = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\) and \(1, 3, 16, 15\)"):
        psnr_y(a, a[..., :15], 0)
    with pytest.raises(ValueError, match="border 8"):
        psnr_y(a, a, 8)
    with pytest.raises(ValueError, match="at least 11"):
        ssim_y(a, a, 3)
    with pytest.raises(TypeError, match="float"):
        psnr_y((a * 255).to(torch.uint8), (a * 255).to(torch.uint8), 0)
