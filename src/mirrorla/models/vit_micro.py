"""``vit_micro_{attention}``: the small ViT of ``mirrorla compare`` as a timm model.

The classifier every Fashion-MNIST run of ``mirrorla train`` / ``mirrorla compare`` trains by default
(``model="vit"`` with :data:`mirrorla.engine.config.BASE`'s sizes): 28×28 grey images, patch 4 (7×7 = 49
tokens + cls), width 64, 4 blocks, 2 heads, MLP ratio 2, 10 classes, a fixed patch grid. Registered so
that the weights shipped for it (:mod:`mirrorla.weights`) load through
``timm.create_model("vit_micro_mirror.fmnist", pretrained=True)``; the same parameter names as the
classifier of a run (tests/test_pretrained.py checks that the two agree).
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg

from mirrorla.models._timm import register, untrained_cfg
from mirrorla.models.vit import SKIPPED, LinearVisionTransformer

__all__ = ["VIT_MICRO", "register_micro_models"]

default_cfgs: dict[str, Any] = {}

#: The model arguments of ``vit_micro_*`` (those of ``mirrorla compare``'s ViT on Fashion-MNIST).
VIT_MICRO: dict[str, Any] = dict(
    img_size=28, in_chans=1, num_classes=10, patch_size=4, embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0,
    dynamic_img_size=False,
)  # fmt: skip

#: Fashion-MNIST's normalisation (mirrorla.data.datasets.FASHION_MNIST_MEAN/STD).
_MEAN, _STD = (0.2860,), (0.3530,)


def register_micro_models(attention: str) -> list[str]:
    """Register ``vit_micro_{attention}`` with timm; none for an attention that refuses the cls token."""
    if attention in SKIPPED:
        return []
    name = f"vit_micro_{attention}"

    def build(name: str, **kwargs: Any) -> LinearVisionTransformer:
        return build_model_with_cfg(
            LinearVisionTransformer,
            name,
            pretrained=False,
            feature_cfg=dict(out_indices=3, feature_cls="getter"),
            attention=attention,
            **{**VIT_MICRO, **kwargs},
        )

    cfg = untrained_cfg(
        num_classes=10, input_size=(1, 28, 28), crop_pct=1.0, interpolation="bilinear", mean=_MEAN, std=_STD
    )
    doc = f"The small ViT of `mirrorla compare` (28² grey, patch 4, width 64, 4 blocks) with {attention!r} attention."
    register(name, __name__, build, cfg, doc)
    return [name]
