"""FLatten: focused linear attention (METHODS.md §3), the common baseline of PolaFormer and NaLaFormer.

Dimension letters: B batch, N tokens, C channels, H heads, D head dim.

Source: D. Han et al., "FLatten Transformer: Vision Transformer using Focused Linear Attention",
ICCV 2023; official github.com/LeapLabTHU/FLatten-Transformer ``models/flatten_swin.py``, class
``FocusedLinearAttention`` (post-2024-05-28 mean-normalised form).

    q, k, v = split(qkv(x));  k ← k + P
    φ = focused map (ReLU + 1e-6, / softplus(s), power p = 3 with norm restoration)
    O = mean-normalised linear attention(φq, φk, v; ε = 1e-6) + DWC₅ₓ₅(V), one kernel shared by heads
    y = proj(O)

A configuration of shared parts: :class:`FocusedFeatureMap` × the plain value path × the shared
:class:`DepthwiseConvBranch` × the shared key position table of :class:`GridLinearAttention`.
"""

from __future__ import annotations

from mirrorla.feature_maps.focused import FocusedFeatureMap
from mirrorla.layers.grid_linear import GridLinearAttention

__all__ = ["FocusedLinearAttention", "PE_MODES"]

PE_MODES = ("learned", "none")
#: Default construction grid of P: the 14×14 patch grid of a 224² image at patch 16 (DeiT). The
#: official Swin/PVT stages build P on their own grid (56×56 … ); backbones pass ``pe_grid``.
DEFAULT_PE_GRID = (14, 14)


class FocusedLinearAttention(GridLinearAttention):
    """FLatten's focused linear attention.

    Args (beyond the common contract of :class:`AttentionBase`):
        focusing_factor: p = 3. norm_scope: ``"full"`` (default, [Code]) or ``"head"``.
        kernel_size: DWC kernel (5; 0 turns the branch off).
        pe: ``"learned"`` (default, [Code]) or ``"none"``.
        pe_grid: construction grid (Hp, Wp) of P; other runtime grids resize P bicubically.
        core_dtype, chunk_size: passed to the core.

    Parameters (official names in brackets):
        ``qkv`` Linear(C, 3C, bias=qkv_bias) [qkv], ``proj`` Linear(C, C) [proj]: trunc_normal(0.02), bias 0;
        ``feature_map.scale`` (1, 1, C) init 0 [scale]; ``pos_embed.weight`` (1, Hp·Wp, C) init 0
        [positional_encoding]; ``dwc.conv`` Conv2d(D, D, k, groups D) PyTorch default [dwc].

    Needs the token grid (DWC and P): pass ``hw``, set ``grid_size``, or give a square N − P.
    """

    #: P's construction grid is a constructor option; PVT backbones pass each stage's patch grid.
    build_grid_option = "pe_grid"

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_prefix_tokens: int = 0,
        *,
        focusing_factor: float = 3.0,
        norm_scope: str = "full",
        kernel_size: int = 5,
        pe: str = "learned",
        pe_grid: tuple[int, int] = DEFAULT_PE_GRID,
        **kwargs,
    ) -> None:
        self.reject_fixed(
            "FocusedLinearAttention",
            kwargs,
            ("feature_map", "normalizer", "dwc_kernel", "dwc_shared", "gate", "out_norm", "key_pos_grid"),
        )
        if pe not in PE_MODES:
            raise ValueError(f"pe must be one of {PE_MODES}, got {pe!r}")

        def feature_map(num_heads: int, head_dim: int) -> FocusedFeatureMap:
            return FocusedFeatureMap(num_heads, head_dim, focusing_factor=focusing_factor, norm_scope=norm_scope)

        super().__init__(
            dim,
            num_heads,
            qkv_bias,
            attn_drop,
            proj_drop,
            num_prefix_tokens,
            feature_map=feature_map,
            normalizer="mean",
            dwc_kernel=kernel_size,
            dwc_shared=True,
            key_pos_grid=tuple(pe_grid) if pe == "learned" else None,
            **kwargs,
        )
