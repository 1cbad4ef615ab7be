"""Super-resolution with a trained network: load a checkpoint, score whole images, upscale a file.

Dimension letters: C = 3 channels, h×w an LR image, s the scale.

Scoring follows the SR literature: the network's output is clamped and rounded to 8 bits, then PSNR and
SSIM are computed on the Y channel (BT.601) with ``scale`` pixels cropped at every border
(:mod:`mirrorla.metrics`). Whole images go through the network in one pass, without tiling: the point of
the comparison is global attention over every LR pixel. Bicubic, the floor every SR table reports, is
MATLAB-style bicubic upsampling (:func:`mirrorla.data.sr.imresize`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mirrorla.engine.checkpoint import checkpoint_config, load_checkpoint
from mirrorla.engine.config import TrainConfig

__all__ = [
    "load_trained_sr",
    "upscale",
    "bicubic_upscale",
    "evaluate_images",
    "upscale_file",
    "save_image",
    "image_scores",
    "mean_scores",
]


def load_trained_sr(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = False
) -> tuple[nn.Module, TrainConfig]:
    """The SR network of a ``mirrorla sr train``/``sr compare`` run (run folder, checkpoints/ or file), in eval mode."""
    from mirrorla.tasks import create_task

    ckpt = load_checkpoint(checkpoint, weights_only=True)
    cfg = checkpoint_config(ckpt, checkpoint)
    if cfg.task != "super_resolution":
        raise ValueError(f"{ckpt['path']} is a {cfg.task} run, not a super-resolution one (mirrorla sr train)")
    model = create_task(cfg.task, cfg).build_model(cfg, None)
    weights = ckpt["ema"] if ema else ckpt["model"]
    if weights is None:
        raise ValueError(f"{ckpt['path']} holds no EMA weights (the run had --ema-decay 0)")
    model.load_state_dict(weights)
    return model.to(device).eval(), cfg


def _to_unit(img: Tensor) -> Tensor:
    return img.float().div(255.0)


def _to_uint8(img: Tensor) -> Tensor:
    return img.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


@torch.inference_mode()
def upscale(model: nn.Module, lr: Tensor) -> Tensor:
    """uint8 LR image (3, h, w) → uint8 SR image (3, s·h, s·w), one forward pass on the model's device."""
    device = next(model.parameters()).device
    return _to_uint8(model(_to_unit(lr)[None].to(device))[0]).cpu()


def bicubic_upscale(lr: Tensor, scale: int) -> Tensor:
    """uint8 (3, h, w) → uint8 (3, s·h, s·w) by MATLAB-style bicubic: the floor of every SR table."""
    from mirrorla.data.sr import imresize

    return _to_uint8(imresize(_to_unit(lr), float(scale)))


def image_scores(sr: Tensor, hr: Tensor, scale: int) -> dict[str, float]:
    """PSNR and SSIM on Y (border ``scale``) of a uint8 (3, H, W) output against its HR image."""
    from mirrorla.metrics import psnr_y, ssim_y

    a, b = _to_unit(sr)[None], _to_unit(hr)[None]
    return {"psnr": psnr_y(a, b, border=scale).item(), "ssim": ssim_y(a, b, border=scale).item()}


def evaluate_images(
    model: nn.Module | None, pairs, scale: int, progress=None, save_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """PSNR/SSIM (Y, border ``scale``) of each :class:`~mirrorla.data.sr.SRPair`, and the forward time.

    ``model=None`` scores bicubic upsampling. Returns one row per image: name, LR and HR size, psnr, ssim,
    seconds (one forward pass, the network only; None for bicubic). ``progress``: a tqdm bar to advance.
    ``save_dir``: also write each output there as ``<name>.png``.
    """
    rows = []
    for pair in pairs:
        if model is None:
            sr, seconds = bicubic_upscale(pair.lr, scale), None
        else:
            t0 = time.perf_counter()
            sr = upscale(model, pair.lr)
            seconds = time.perf_counter() - t0
        if tuple(sr.shape) != tuple(pair.hr.shape):
            raise ValueError(f"{pair.name}: the output is {tuple(sr.shape)}, its HR image {tuple(pair.hr.shape)}")
        if save_dir is not None:
            save_image(sr, Path(save_dir) / f"{pair.name}.png")
        lr_hw, hr_hw = list(pair.lr.shape[1:]), list(pair.hr.shape[1:])
        rows.append(
            {"image": pair.name, "lr_hw": lr_hw, "hr_hw": hr_hw, **image_scores(sr, pair.hr, scale), "seconds": seconds}
        )
        if progress is not None:
            progress.update(1)
    return rows


def mean_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean PSNR and SSIM over images (the way SR tables report a test set)."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim")}


def save_image(img: Tensor, dst: str | os.PathLike, *, replace: bool = True) -> None:
    """Write a uint8 (3, H, W) image; the format comes from the extension. Encoded in memory and written
    with :func:`~mirrorla.engine.checkpoint.atomic_write_bytes`, so a crash or a full disk never leaves a
    half-written file under the user's name nor a temporary file; ``replace=False``: never replace an
    existing ``dst`` (``FileExistsError``), also not one another process writes at the same moment."""
    import io

    from PIL import Image

    from mirrorla.engine.checkpoint import atomic_write_bytes

    dst = Path(dst)
    image_format = Image.registered_extensions().get(dst.suffix.lower())
    if image_format is None:
        raise ValueError(f"cannot tell the image format of {dst}: give it an extension such as .png")
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(buf, format=image_format)
    atomic_write_bytes(dst, buf.getvalue(), replace=replace)


def upscale_file(
    model: nn.Module, scale: int, src: str | os.PathLike, dst: str | os.PathLike, *, replace: bool = True
) -> dict[str, Any]:
    """Read image ``src``, upscale it in one pass, write ``dst`` (format from its extension, e.g. .png; an
    existing ``dst`` is replaced only with ``replace``, see :func:`save_image`)."""
    from mirrorla.data.sr import load_image

    lr = load_image(src)
    t0 = time.perf_counter()
    sr = upscale(model, lr)
    seconds = time.perf_counter() - t0
    save_image(sr, dst, replace=replace)
    return {
        "input": str(src),
        "output": str(dst),
        "lr_hw": list(lr.shape[1:]),
        "sr_hw": list(sr.shape[1:]),
        "seconds": seconds,
    }
