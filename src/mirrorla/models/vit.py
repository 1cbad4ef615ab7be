"""Plain ViT/DeiT with any registered attention, built on timm's ``VisionTransformer``.

Dimension letters: B batch, N tokens (P prefix + Hp·Wp patches), C channels.

The attention comes in through timm's ``attn_layer`` hook (no copy of timm's model). timm's ``Block``
calls ``attn(x, attn_mask=...)`` without the patch grid, so the blocks here are :class:`GridBlock`
(timm's ``block_fn=`` hook), whose forward takes the grid and passes it to the attention as ``hw``;
:class:`LinearVisionTransformer` passes the patch grid of the current input to every block in
``forward_features`` and ``forward_intermediates`` (and so in ``features_only`` models). Layers that
need the grid (depthwise-conv branches, key position tables, RoPE) then work for non-square inputs;
nothing about a call is stored on a module.

Sizes (docs/methods.md §8.2, DeiT paper): patch 16, MLP ratio 4, qkv bias; tiny 192/12/3, small 384/12/6,
base 768/12/12 (width / blocks / heads). Model names: ``deit_{size}_{attention}`` for every name in
:func:`mirrorla.list_attentions`.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn
from torch.utils.checkpoint import checkpoint

from mirrorla.models._timm import register, submodule_no_weight_decay, untrained_cfg
from mirrorla.registry import attention_layer, create_attention

__all__ = ["LinearVisionTransformer", "GridBlock", "DEIT_SIZES", "SKIPPED", "register_deit_models"]

default_cfgs: dict[str, Any] = {}

DEIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


class GridBlock(Block):
    """timm's pre-norm ``Block`` whose forward takes the patch grid and passes it to the attention.

    Same parameters, names and initialisation as ``Block`` (it only overrides ``forward``).
    """

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int] | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        attn = self.attn(self.norm1(x), hw=hw, attn_mask=attn_mask, is_causal=is_causal)
        x = x + self.drop_path1(self.ls1(attn))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class LinearVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` whose attention is a mirrorla registry entry.

    Args:
        attention: a name in :func:`mirrorla.list_attentions` (``'mirror'``, ``'softmax'``, ...).
        attn_kwargs: extra options of that attention (e.g. ``dict(dwc_kernel=5)``).
        **kwargs: :class:`timm.models.vision_transformer.VisionTransformer` arguments.
            ``dynamic_img_size`` defaults to True here, so a model built at 224² runs at any size
            divisible by the patch (the position table is resampled, as timm does).

    ``num_prefix_tokens`` of the attention (cls + register tokens) is set from the model, so the
    spatial parts of an attention (DWC on V) see only the patch grid (docs/methods.md §8.1, DeiT row).
    The class adds no state to ``VisionTransformer``; :func:`mirrorla.convert` relies on that.
    """

    def __init__(self, attention: str = "mirror", attn_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        for hook in ("attn_layer", "block_fn"):
            if hook in kwargs:
                raise TypeError(
                    f"LinearVisionTransformer sets {hook} itself; pass attention='<registry name>' (and attn_kwargs=)"
                )
        num_prefix = (1 if kwargs.get("class_token", True) else 0) + int(kwargs.get("reg_tokens", 0) or 0)
        kwargs.setdefault("dynamic_img_size", True)
        layer = attention_layer(attention, num_prefix_tokens=num_prefix, **(attn_kwargs or {}))
        super().__init__(attn_layer=layer, block_fn=GridBlock, **kwargs)
        self.attention = attention

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's (position table, cls token) plus what the attention layers exclude (e.g. angles)."""
        return set(super().no_weight_decay()) | submodule_no_weight_decay(self)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image (B, 3, H, W) → tokens (B, P + Hp·Wp, C) and the patch grid (Hp, Wp)."""
        x = self.patch_embed(x)
        # (B, Hp, Wp, C) with dynamic_img_size, else (B, N, C) on the fixed patch grid. The branch is on
        # a build option, not on the input, and the sides stay shapes (no int()), so FX and
        # torch.export trace it.
        if self.dynamic_img_size:
            grid = (x.shape[1], x.shape[2])
        else:
            grid = (self.patch_embed.grid_size[0], self.patch_embed.grid_size[1])
        x = self.norm_pre(self.patch_drop(self._pos_embed(x)))
        return x, grid

    def _run_block(self, blk, x, grid, attn_mask, is_causal) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, grid, attn_mask, is_causal, use_reentrant=False)
        return blk(x, grid, attn_mask=attn_mask, is_causal=is_causal)

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """timm's ``forward_features`` with the patch grid passed to every block."""
        x, grid = self.embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x, grid, attn_mask, is_causal)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ):
        """timm's ``forward_intermediates`` (same arguments and outputs) with the grid passed to every block."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, (Hp, Wp) = self.embed(x)
        blocks = self.blocks if not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._run_block(blk, x, (Hp, Wp), attn_mask, is_causal)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        P = self.num_prefix_tokens
        prefix_tokens = [y[:, :P] for y in intermediates] if P else None
        intermediates = [y[:, P:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.reshape(B, Hp, Wp, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if output_dict:
            out: dict[str, Any] = {"image_intermediates": intermediates}
            if prefix_tokens is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens, strict=True))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


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
        register(name, __name__, build, untrained_cfg(min_input_size=(3, 32, 32)), doc)
        names.append(name)
    return names
