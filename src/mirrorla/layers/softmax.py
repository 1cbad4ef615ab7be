"""Softmax attention layer (METHODS.md §1.3), the quadratic baseline.

Dimension letters: B batch, N tokens, C channels, H heads, D head dim.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from mirrorla.layers.base import AttentionBase
from mirrorla.ops.softmax import softmax_attention

__all__ = ["SoftmaxAttention", "set_fused_softmax"]

# Backend switch as a global default (like timm's TIMM_FUSED_ATTN): fused SDPA unless
# MIRRORLA_FUSED_ATTN=0. Each layer copies it into its ``fused`` attribute at construction.
_FUSED_DEFAULT = os.environ.get("MIRRORLA_FUSED_ATTN", "1") != "0"


def set_fused_softmax(enable: bool) -> None:
    """Default backend of SoftmaxAttention layers built from now on (existing layers: set ``.fused``)."""
    global _FUSED_DEFAULT
    _FUSED_DEFAULT = bool(enable)


class SoftmaxAttention(AttentionBase):
    """qkv → softmax(QKᵀ·D^-1/2 + mask) V → proj, mirroring ``timm.layers.Attention``.

    ``fused`` (attribute) selects ``scaled_dot_product_attention`` (default) or the explicit matrix,
    which FLOP counters can see. Supports ``attn_mask`` (bool True = attend, or additive float),
    ``key_padding_mask`` (B, M) True = keep, ``is_causal`` and attention dropout.
    """

    is_linear = False

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_prefix_tokens: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, num_prefix_tokens, **kwargs)
        self.qkv = self._input_linear(3)
        self.fused = _FUSED_DEFAULT
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
