"""Softmax attention layer (docs/methods.md §1.3), the quadratic baseline.

Dimension letters: B batch, N tokens, C channels, H heads, D head dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mirrorla.layers.base import AttentionBase
from mirrorla.layers.fused import set_fused_attn, use_fused_attn
from mirrorla.ops.softmax import softmax_attention
from mirrorla.registry import register_attention

__all__ = ["SoftmaxAttention", "set_fused_softmax"]

#: The former name of :func:`mirrorla.layers.fused.set_fused_attn` (one switch for every softmax layer).
set_fused_softmax = set_fused_attn


class SoftmaxAttention(AttentionBase):
    """qkv → softmax(QKᵀ·D^-1/2 + mask) V → proj, mirroring ``timm.layers.Attention``.

    ``fused`` (attribute, default :func:`mirrorla.layers.fused.use_fused_attn`) selects
    ``scaled_dot_product_attention`` or the explicit matrix, which FLOP counters can see. Supports
    ``attn_mask`` (bool True = attend, or additive float), ``key_padding_mask`` (B, M) True = keep,
    ``is_causal`` and attention dropout.
    """

    is_linear = False

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, *args, **kwargs)
        self.qkv = self._input_linear(3)
        self.fused = use_fused_attn()
        self._init_linear(self.qkv, self.proj)

    def forward(
        self,
        x: Tensor,
        hw: tuple[int, int] | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        self.check_input(x, key_padding_mask, hw)
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = attn_mask
        if key_padding_mask is not None:
            kpm = key_padding_mask[:, None, None, :]
            if mask is None:
                mask = kpm
            elif mask.dtype == torch.bool:
                mask = mask & kpm
            else:
                mask = mask.masked_fill(~kpm, float("-inf"))
        o = softmax_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_drop_p if self.training else 0.0,
            is_causal=is_causal,
            fused=self.fused,
        )
        return self.proj_drop(self.proj(self.merge_heads(o)))


register_attention("softmax", SoftmaxAttention, "softmax attention (scaled_dot_product_attention)")
