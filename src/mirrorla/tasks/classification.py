"""Image classification: labelled images, a classifier, cross-entropy (with Mixup/CutMix), top-1/top-5."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.models.factory import VIT, create_model
from mirrorla.tasks.base import register_task

__all__ = ["ClassificationTask", "create_classifier"]


def create_classifier(cfg: Any, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """The model of ``cfg`` for images (B, in_chans, image_size, image_size) → logits (B, num_classes).

    Built by :func:`mirrorla.models.create_model`, as every entry point builds its models.
    """
    common = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=cfg.drop_path)
    attn = dict(attention=cfg.attention, attn_kwargs=dict(cfg.attention_kwargs))
    if cfg.model == VIT:
        if image_size % cfg.patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {cfg.patch_size}")
        vit_args: dict[str, Any] = dict(
            img_size=image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
        )
        if cfg.attention is not None:
            vit_args["dynamic_img_size"] = False
        return create_model(VIT, **attn, **vit_args, **common)
    try:
        return create_model(cfg.model, **attn, img_size=image_size, **common)
    except TypeError as err:  # a timm model without an ``img_size`` argument
        if "img_size" not in str(err):
            raise
        return create_model(cfg.model, **attn, **common)


@register_task
class ClassificationTask:
    """Fashion-MNIST, torchvision datasets or an ImageFolder (:func:`mirrorla.data.build_datasets`);
    the model of ``cfg`` with a ``num_classes`` head; label-smoothed cross-entropy, or Mixup/CutMix
    with soft-target cross-entropy (timm); top-1 accuracy ranks checkpoints."""

    name = "classification"
    metric = "top1"

    def __init__(self, cfg: Any = None) -> None:
        pass  # nothing of the run configuration is needed outside build_*

    def build_datasets(self, cfg: Any):
        from mirrorla.data import build_datasets

        return build_datasets(
            cfg.dataset,
            data_dir=cfg.data_dir,
            image_size=cfg.image_size,
            augment=cfg.augment,
            train_subset=cfg.train_subset,
            eval_subset=cfg.eval_subset,
            download=cfg.download,
        )

    def build_model(self, cfg: Any, info: Any) -> nn.Module:
        return create_classifier(cfg, info.num_classes, info.in_chans, info.image_size)

    def build_loss(self, cfg: Any, info: Any):
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            mixup = Mixup(
                mixup_alpha=cfg.mixup,
                cutmix_alpha=cfg.cutmix,
                switch_prob=cfg.mixup_switch_prob,
                label_smoothing=cfg.label_smoothing,
                num_classes=info.num_classes,
            )
            return SoftTargetCrossEntropy(), mixup
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), None

    def batch_sums(self, output: Tensor, y: Tensor) -> dict[str, float]:
        # Against the un-mixed labels; with Mixup/CutMix this is only a rough signal.
        return {"top1": 100.0 * (output.argmax(1) == y).sum().item()}

    def eval_sums(self, output: Tensor, y: Tensor) -> dict[str, float]:
        logits = output.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        return {
            "loss": F.cross_entropy(logits, y, reduction="sum").item(),
            "top1": 100.0 * (topk[:, 0] == y).sum().item(),
            "top5": 100.0 * (topk == y[:, None]).any(dim=1).sum().item(),
        }
