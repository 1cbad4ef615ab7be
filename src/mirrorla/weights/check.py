"""The cheap check of shipped weights: a score on a small, fixed slice of the test data.

``scripts/package_weights.py`` records it in each provenance file; the default tests recompute it from
the weights loaded through timm and through the command line's checkpoint path, so a loading path
that changes the weights (a wrong key, a missed buffer, the wrong model arguments) fails there.

- classification: top-1 % of the first :data:`FMNIST_IMAGES` Fashion-MNIST test images (in file order);
- super-resolution: PSNR-Y (dB) of the central :data:`SR_CROP`² LR crop of the first test photo.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["FMNIST_IMAGES", "SR_CROP", "check_score", "CHECK_TOLERANCE"]

FMNIST_IMAGES = 500
SR_CROP = 48
#: How far a recomputed check may be from the recorded one: the weights are the same, only the order of
#: float sums may differ between machines (SIMD level) and library versions; one flipped prediction of
#: the 500 is 0.2 points.
CHECK_TOLERANCE = {"classification": 0.41, "super_resolution": 0.01}


@torch.no_grad()
def _fmnist_top1(model: nn.Module, n: int = FMNIST_IMAGES) -> float:
    from mirrorla.data import build_datasets

    _, eval_set, _ = build_datasets("fashion_mnist", augment=False, train_subset=1, download=False)
    images, labels = eval_set.get_batch(torch.arange(n))
    logits = model.eval()(eval_set.prepare_batch(images))
    return float((logits.argmax(-1) == labels).float().mean() * 100)


@torch.no_grad()
def _sr_crop_psnr(model: nn.Module, scale: int, crop: int = SR_CROP) -> float:
    from mirrorla.data.sr import load_pairs
    from mirrorla.engine.sr import image_scores, upscale

    pair = load_pairs("photos", "test", scale)[0]
    h, w = pair.lr.shape[1:]
    top, left = (h - crop) // 2, (w - crop) // 2
    lr = pair.lr[:, top : top + crop, left : left + crop]
    hr = pair.hr[:, scale * top : scale * (top + crop), scale * left : scale * (left + crop)]
    sr = upscale(model.eval(), lr)
    return image_scores(sr, hr, scale)["psnr"]


def check_score(model: nn.Module, task: str, config: dict[str, Any]) -> float:
    """The check of ``model`` (trained for ``task`` with run settings ``config``), rounded to 4 decimals."""
    if task == "classification":
        return round(_fmnist_top1(model), 4)
    if task == "super_resolution":
        return round(_sr_crop_psnr(model, int(config["scale"])), 4)
    raise ValueError(f"no check for task {task!r}")
