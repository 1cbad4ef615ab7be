"""Single-image super-resolution: LR/HR photo pairs, the SR network, L1 loss, PSNR/SSIM on Y.

The configuration fields it reads (:class:`mirrorla.engine.config.TrainConfig`):

- ``dataset``: ``"photos"`` (the photographs shipped with scikit-image, scikit-learn and matplotlib,
  :data:`mirrorla.data.sr.PHOTOS`, fixed train/test split) or ``"folder"`` with ``data_dir`` = a folder
  of HR images (DIV2K, ...; see :func:`mirrorla.data.sr.build_sr_datasets`), and ``eval_data_dir`` a
  folder of HR test images (Set5, Set14, B100, Urban100, ...; default: the training folder itself);
- ``scale`` (2, 3, 4) and ``degradation`` (how LR images are made: ``"matlab"`` bicubic or ``"torch"``);
- ``image_size``: the LR training patch side (default :data:`TRAIN_PATCH`); ``train_subset``: training
  patches per epoch (default :data:`EPOCH_PATCHES`), each a random crop of a random image;
- ``model``: ``sr_tiny``/``sr_small``/``sr_light`` with ``attention`` (:mod:`mirrorla.models.sr`).

During training the evaluation split is the central :data:`EVAL_PATCH`² LR crop of every test image
(seconds per epoch even for softmax); whole test images are scored by :func:`mirrorla.engine.sr.evaluate_images`.
Metrics as the SR literature reports them: PSNR and SSIM on the Y channel (BT.601) of 8-bit images with
``scale`` border pixels cropped (:mod:`mirrorla.metrics`); ``psnr`` ranks checkpoints.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mirrorla.models.factory import create_model
from mirrorla.tasks.base import register_task

__all__ = ["SuperResolutionTask", "TRAIN_PATCH", "EVAL_PATCH", "EPOCH_PATCHES", "SR_MODELS"]

#: LR side of a training patch (BasicSR's light-model recipes use 64; 48 keeps CPU steps short).
TRAIN_PATCH = 48
#: LR side of the central crop of each test image scored after every epoch.
EVAL_PATCH = 96
#: Training patches per epoch.
EPOCH_PATCHES = 1000
#: The SR model names of :func:`mirrorla.models.create_model`.
SR_MODELS = ("sr_tiny", "sr_small", "sr_light")


@register_task
class SuperResolutionTask:
    """LR → HR on photographs; L1 loss (the light SR models' training loss); PSNR (Y) ranks checkpoints."""

    name = "super_resolution"
    metric = "psnr"

    def __init__(self, cfg: Any = None) -> None:
        # The metrics crop ``scale`` border pixels, as the SR literature does.
        self.border = cfg.scale if cfg is not None else 0

    def build_datasets(self, cfg: Any):
        from mirrorla.data.sr import build_sr_datasets

        if cfg.dataset not in ("photos", "folder"):
            raise ValueError(
                f"super-resolution data is 'photos' (built-in photographs) or 'folder' (--data-dir with HR images), "
                f"got --dataset {cfg.dataset!r}"
            )
        if cfg.dataset == "folder" and not cfg.data_dir:
            raise ValueError("--dataset folder needs --data-dir, a folder of HR images (e.g. DIV2K_train_HR)")
        return build_sr_datasets(
            "photos" if cfg.dataset == "photos" else cfg.data_dir,
            scale=cfg.scale,
            patch=cfg.image_size or TRAIN_PATCH,
            samples=cfg.train_subset or EPOCH_PATCHES,
            eval_patch=EVAL_PATCH,
            method=cfg.degradation,
            augment=cfg.augment,
            eval_source=cfg.eval_data_dir,
        )

    def build_model(self, cfg: Any, info: Any) -> nn.Module:
        if cfg.model not in SR_MODELS:
            raise ValueError(f"super-resolution trains one of {', '.join(SR_MODELS)}, got --model {cfg.model!r}")
        if cfg.attention is None:
            raise ValueError("the SR network needs an attention: pass --attention <name> (`mirrorla list`)")
        return create_model(cfg.model, attention=cfg.attention, attn_kwargs=dict(cfg.attention_kwargs), scale=cfg.scale)

    def build_loss(self, cfg: Any, info: Any):
        return nn.L1Loss(), None

    def batch_sums(self, output: Tensor, y: Tensor) -> dict[str, float]:
        from mirrorla.metrics import psnr_y

        return {"psnr": psnr_y(output.detach(), y, border=self.border).sum().item()}

    def eval_sums(self, output: Tensor, y: Tensor) -> dict[str, float]:
        from mirrorla.metrics import psnr_y, ssim_y

        border = self.border
        return {
            "loss": (output - y).abs().mean(dim=(1, 2, 3)).sum().item(),
            "psnr": psnr_y(output, y, border=border).sum().item(),
            "ssim": ssim_y(output, y, border=border).sum().item(),
        }
