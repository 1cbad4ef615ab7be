"""Softmax attention: the fused SDPA kernel or the explicit (B, H, N, M) matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mirrorla.ops._checks import check_qkv

__all__ = ["softmax_attention"]


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    fused: bool = True,
) -> Tensor:
    """``softmax(q kᵀ·scale + mask) v`` on (B, H, N, D) tensors.

    ``fused=True`` calls :func:`torch.nn.functional.scaled_dot_product_attention`. ``fused=False``
    builds the explicit (B, H, N, M) matrix: needed for attention maps and for FLOP counters, which
    skip the fused CPU kernel. ``attn_mask`` is a bool mask (True = attend) or an additive float
    mask broadcastable to (B, H, N, M).
    """
    check_qkv(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if fused:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    s = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        N, M = s.shape[-2:]
        s = s.masked_fill(~torch.ones(N, M, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    a = s.softmax(-1)
    if dropout_p > 0:
        a = F.dropout(a, dropout_p)
    return a @ v
