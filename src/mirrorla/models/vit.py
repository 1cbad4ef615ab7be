"""Plain ViT/DeiT with any registered attention, built on timm's ``VisionTransformer``.

Dimension letters: B batch, N tokens (P prefix + Hp·Wp patches), C channels.

The attention comes in through timm's ``attn_layer`` hook (no copy of timm's model). timm's ``Block``
calls ``attn(x, attn_mask=...)`` without the patch grid, so :class:`LinearVisionTransformer` tells
every attention module the grid of the current input (``attn.grid_size``) when it embeds the patches;
layers that need the grid (depthwise-conv branches) then work for non-square inputs too.

Sizes (METHODS.md §8.2, DeiT paper): patch 16, MLP ratio 4, qkv bias; tiny 192/12/3, small 384/12/6,
base 768/12/12 (width / blocks / heads). Model names: ``deit_{size}_{attention}`` for every name in
:func:`mirrorla.list_attentions`.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from mirrorla.models._timm import register, submodule_no_weight_decay, untrained_cfg
from mirrorla.registry import attention_layer, create_attention, list_attentions

__all__ = ["LinearVisionTransformer", "DEIT_SIZES", "SKIPPED", "register_deit_models", "set_grid_size"]

default_cfgs: dict[str, Any] = {}

DEIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def set_grid_size(model: VisionTransformer, grid: tuple[int, int]) -> None:
    """Tell every attention module of ``model.blocks`` the patch grid ``(Hp, Wp)`` of the input."""
    for blk in model.blocks:
        if hasattr(blk.attn, "grid_size"):
            blk.attn.grid_size = (int(grid[0]), int(grid[1]))


class LinearVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` whose attention is a mirrorla registry entry.

    Args:
        attention: a name in :func:`mirrorla.list_attentions` (``'mirror'``, ``'softmax'``, ...).
        attn_kwargs: extra options of that attention (e.g. ``dict(dwc_kernel=5)``).
        **kwargs: :class:`timm.models.vision_transformer.VisionTransformer` arguments.
            ``dynamic_img_size`` defaults to True here, so a model built at 224² runs at any size
            divisible by the patch (the position table is resampled, as timm does).

    ``num_prefix_tokens`` of the attention (cls + register tokens) is set from the model, so the
    spatial parts of an attention (DWC on V) see only the patch grid (METHODS.md §8.1, DeiT row).
    The class adds no state to ``VisionTransformer``; :func:`mirrorla.convert` relies on that.
    """

    def __init__(self, attention: str = "mirror", attn_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        if "attn_layer" in kwargs:
            raise TypeError("pass attention='<registry name>' (and attn_kwargs=) instead of attn_layer")
        if attention not in list_attentions():
            raise ValueError(f"unknown attention {attention!r}; valid names: {', '.join(list_attentions())}")
        num_prefix = (1 if kwargs.get("class_token", True) else 0) + int(kwargs.get("reg_tokens", 0) or 0)
        kwargs.setdefault("dynamic_img_size", True)
        layer = attention_layer(attention, num_prefix_tokens=num_prefix, **(attn_kwargs or {}))
        super().__init__(attn_layer=layer, **kwargs)
        self.attention = attention

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's (position table, cls token) plus what the attention layers exclude (e.g. angles)."""
        return set(super().no_weight_decay()) | submodule_no_weight_decay(self)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        # Every path (forward_features, forward_intermediates, features_only) embeds patches here:
        # x is (B, Hp, Wp, C) with dynamic_img_size, else (B, N, C) on the fixed patch grid.
        set_grid_size(self, x.shape[1:3] if x.dim() == 4 else self.patch_embed.grid_size)
        return super()._pos_embed(x)


def _build(name: str, *, size: str, attention: str, **kwargs: Any) -> LinearVisionTransformer:
    model_args = {**DEIT_SIZES[size], **kwargs}
    return build_model_with_cfg(
        LinearVisionTransformer,
        name,
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        attention=attention,
        **model_args,
    )


#: Attentions without DeiT models, with the reason (they cannot take the cls token).
SKIPPED: dict[str, str] = {}


def register_deit_models(attention: str) -> list[str]:
    """Register ``deit_{tiny,small,base}_{attention}`` with timm; returns the new names.

    An attention that refuses prefix tokens (e.g. window attention, which partitions the grid)
    gets no DeiT names; the reason is kept in :data:`SKIPPED`.
    """
    try:  # a 1-block probe of the constructor contract, 8 channels: microseconds
        create_attention(attention, 8, 2, num_prefix_tokens=1)
    except ValueError as err:
        SKIPPED[attention] = str(err)
        return []
    names = []
    for size in DEIT_SIZES:
        name = f"deit_{size}_{attention}"

        def build(name: str, size: str = size, **kwargs: Any) -> LinearVisionTransformer:
            return _build(name, size=size, attention=attention, **kwargs)

        doc = f"DeiT-{size.capitalize()} (patch 16, 224²) with {attention!r} attention in every block; untrained."
        register(name, __name__, build, untrained_cfg(), doc)
        names.append(name)
    return names
