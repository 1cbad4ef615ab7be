"""FLatten: focused linear attention (docs/methods.md §3), the common baseline of PolaFormer and NaLaFormer.

Dimension letters: B batch, N tokens, C channels, H heads, D head dim.

Source: D. Han et al., "FLatten Transformer: Vision Transformer using Focused Linear Attention",
ICCV 2023; official github.com/LeapLabTHU/FLatten-Transformer ``models/flatten_swin.py``, class
``FocusedLinearAttention`` (post-2024-05-28 mean-normalised form).

    q, k, v = split(qkv(x));  k ← k + P
    φ = focused map (ReLU + 1e-6, / softplus(s), power p = 3 with norm restoration)
    O = mean-normalised linear attention(φq, φk, v; ε = 1e-6) + DWC₅ₓ₅(V), one kernel shared by heads
    y = proj(O)

A configuration of :class:`LinearAttention`: the ``focused`` feature map × the plain value path ×
the shared DWC branch × the key position table P. Options of the map (``focusing_factor`` p = 3,
``norm_scope`` ``"full"``/``"head"``) are given as keywords.

Parameters (official names in brackets): ``qkv`` Linear(C, 3C, bias=qkv_bias) [qkv], ``proj``
Linear(C, C) [proj]: trunc_normal(0.02), bias 0; ``feature_map.scale`` (1, 1, C) init 0 [scale];
``pos_embed.weight`` (1, Hp·Wp, C) init 0 [positional_encoding]; ``dwc.conv`` Conv2d(D, D, k,
groups D) PyTorch default [dwc].
"""

from __future__ import annotations

from typing import Any

from mirrorla.layers.linear import LinearAttention
from mirrorla.registry import register_attention

__all__ = ["FocusedLinearAttention", "FLATTEN_DEFAULTS"]

#: FLatten as a configuration. P's default grid is the 14×14 patch grid of a 224² image at patch 16
#: (DeiT); the official Swin/PVT stages build P on their own grid (56×56 … ), which the PVT backbone
#: passes through ``key_pos_grid``.
FLATTEN_DEFAULTS: dict[str, Any] = dict(
    feature_map="focused", normalizer="mean", dwc_kernel=5, dwc_shared=True, key_pos_grid=(14, 14)
)


class FocusedLinearAttention(LinearAttention):
    """Import alias: ``LinearAttention(**FLATTEN_DEFAULTS, ...)`` (the registry entry ``flatten``)."""

    def __init__(self, dim: int, num_heads: int = 8, *args: Any, **kwargs: Any) -> None:
        super().__init__(dim, num_heads, *args, **{**FLATTEN_DEFAULTS, **kwargs})


register_attention(
    "flatten", LinearAttention, "FLatten focused linear attention (p=3, 5x5 DWC, learned P)", **FLATTEN_DEFAULTS
)
