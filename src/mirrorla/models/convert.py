"""Linearize a timm ViT/DeiT: swap its attention modules for a registry attention, keeping weights.

Dimension letters: N tokens, C channels.

``convert(model, 'mirror')`` replaces ``blocks[i].attn`` of a timm ``VisionTransformer`` (e.g. loaded
from a local checkpoint) by ``create_attention('mirror', C, heads, ...)`` and copies the fused qkv
projection (3C × C) and the output projection into it. Everything else in the model is untouched.
Parameters the new attention adds (MirrorLA's reflection angles, a DWC branch, a gate's extra rows)
keep their own initialisation. Converting back with ``attention='softmax'`` restores the original
function exactly, which is how the tests prove that the weights were carried over.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from mirrorla.layers.base import AttentionBase
from mirrorla.models.vit import GridBlock, LinearVisionTransformer
from mirrorla.registry import create_attention, get_attention_entry

__all__ = ["convert"]


def convert(model: nn.Module, attention: str = "mirror", **kwargs: Any) -> nn.Module:
    """Replace every attention of a timm ViT/DeiT with ``attention``, in place; returns ``model``.

    Args:
        model: a ``timm`` ``VisionTransformer`` (``vit_*``, ``deit_*`` non-distilled, ...) or a
            mirrorla ``deit_*`` model. Its attentions must be timm ``Attention`` without qk-norm or
            scale-norm, or mirrorla layers with a fused (3C × C) ``qkv`` projection.
        attention: a name in :func:`mirrorla.list_attentions`.
        **kwargs: options of the new attention (e.g. ``dwc_kernel=5``); qkv/proj bias, proj dropout
            and ``num_prefix_tokens`` come from the model.

    The model's class becomes :class:`LinearVisionTransformer` and each block's :class:`GridBlock`
    (subclasses of timm's, adding no state) so that the patch grid of every input reaches the layers
    that need it, as an argument. Raises ``TypeError`` for
    models or attention modules it cannot convert, before changing anything.
    """
    entry = get_attention_entry(attention)  # raises for an unknown name, listing valid ones
    if not isinstance(model, VisionTransformer) or type(model) not in (VisionTransformer, LinearVisionTransformer):
        raise TypeError(
            f"convert supports timm VisionTransformer models (vit_*, deit_* without distillation) and "
            f"mirrorla deit_* models; got {type(model).__name__}. Subclasses with their own forward "
            "(e.g. distilled DeiT) and other architectures are not supported."
        )
    target_linear = getattr(entry.cls, "is_linear", True)
    plans = []
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (Block, GridBlock):
            raise TypeError(
                f"blocks.{i} is a {type(blk).__name__}; convert supports timm's pre-norm Block only (its "
                "forward is replaced by GridBlock's, which passes the patch grid to the attention)"
            )
        src = getattr(blk, "attn", None)
        qkv, proj, heads, attn_drop = _source_parts(src, i)
        if target_linear and attn_drop > 0:
            raise ValueError(
                f"blocks.{i}.attn uses attention dropout {attn_drop}, which a linear attention cannot "
                f"apply; set it to 0 first (e.g. model.blocks[{i}].attn.attn_drop.p = 0) or convert to softmax"
            )
        plans.append((blk, src, qkv, proj, heads, attn_drop))
    for blk, src, qkv, proj, heads, attn_drop in plans:
        dim = qkv.in_features
        new = create_attention(
            attention,
            dim,
            heads,
            **{
                "qkv_bias": qkv.bias is not None,
                "proj_bias": proj.bias is not None,
                "proj_drop": _dropout_p(src, "proj_drop"),
                "num_prefix_tokens": model.num_prefix_tokens,
                **({} if target_linear else {"attn_drop": attn_drop}),
                **kwargs,
            },
        )
        new.to(device=qkv.weight.device, dtype=qkv.weight.dtype)
        new_qkv = getattr(new, "qkv", None)
        if not isinstance(new_qkv, nn.Linear) or new_qkv.in_features != dim or new_qkv.out_features < 3 * dim:
            raise TypeError(
                f"attention {attention!r} has no fused qkv projection of at least 3C rows to carry the "
                "weights into; convert supports layers built on mirrorla's LinearAttention/SoftmaxAttention"
            )
        with torch.no_grad():
            new_qkv.weight[: 3 * dim].copy_(qkv.weight)
            if qkv.bias is not None:
                new_qkv.bias[: 3 * dim].copy_(qkv.bias)
            new.proj.weight.copy_(proj.weight)
            if proj.bias is not None:
                new.proj.bias.copy_(proj.bias)
        new.train(src.training)
        blk.attn = new
        blk.__class__ = GridBlock
    if type(model) is VisionTransformer:
        model.__class__ = LinearVisionTransformer
    model.attention = attention
    return model


def _source_parts(src: nn.Module | None, index: int) -> tuple[nn.Linear, nn.Linear, int, float]:
    """(qkv, proj, num_heads, attn_drop) of a convertible attention module, else TypeError."""
    where = f"blocks.{index}.attn"
    if isinstance(src, TimmAttention):
        for part in ("q_norm", "k_norm", "norm"):
            if not isinstance(getattr(src, part, nn.Identity()), nn.Identity):
                raise TypeError(f"{where} uses {part} (qk_norm/scale_norm), which convert cannot carry over")
        heads = src.num_heads
        attn_drop = _dropout_p(src, "attn_drop")
    elif isinstance(src, AttentionBase):
        heads, attn_drop = src.num_heads, float(getattr(src, "attn_drop_p", 0.0))
    else:
        raise TypeError(f"{where} is a {type(src).__name__}; expected timm Attention or a mirrorla attention layer")
    qkv, proj = getattr(src, "qkv", None), getattr(src, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        raise TypeError(f"{where} ({type(src).__name__}) has no fused qkv and proj Linear layers")
    dim = qkv.in_features
    if qkv.out_features != 3 * dim or proj.in_features != dim or proj.out_features != dim:
        raise TypeError(
            f"{where}: expected qkv Linear({dim}, {3 * dim}) and proj Linear({dim}, {dim}), got "
            f"qkv {tuple(qkv.weight.shape)}, proj {tuple(proj.weight.shape)} (gated or resized attention)"
        )
    return qkv, proj, heads, attn_drop


def _dropout_p(module: nn.Module, name: str) -> float:
    drop = getattr(module, name, None)
    return float(drop.p) if isinstance(drop, nn.Dropout) else 0.0
