"""MLLA: Mamba-like linear attention, the token mixer of an MLLA block (docs/methods.md §10).

Dimension letters: B batch, N tokens (P prefix + Hg·Wg spatial), C channels, H heads, D head dim.

Source: D. Han et al., "Demystify Mamba in Vision: A Linear Attention Perspective", NeurIPS 2024;
official github.com/LeapLabTHU/MLLA ``models/mlla.py``, classes ``MLLABlock`` (the mixer: the lines
between ``norm1`` and the residual add) and ``LinearAttention`` (the attention inside it).

    g = act_proj(x)                                     (the Mamba-style output gate)
    u = SiLU(DWC₃ₓ₃(in_proj(x)))                        (the input branch)
    q, k = split(qk(u)), v = u                          (no value projection)
    O = RoPE-numerator linear attention(ELU+1; mean normaliser, ε = 1e-6) + LePE₃ₓ₃(v)
    y = out_proj(O ⊙ SiLU(g))

A configuration of :class:`RotaryLinearAttention` (``elu`` map × the ``mean`` rotated value path × the
per-channel DWC branch × the SiLU gate) with MLLA's across-heads RoPE table and its input branch as
the projection (:meth:`project`). [Design] The block's conditional position encodings (``cpe1``,
``cpe2``) belong to the MLLA block, not to the mixer, and are not part of this layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.layers.linear import reject_fixed, reject_renamed
from mirrorla.layers.parts import DepthwiseConvBranch
from mirrorla.layers.rotary import ChannelRoPE, RotaryLinearAttention
from mirrorla.registry import register_attention

__all__ = ["MambaLikeLinearAttention"]


class MambaLikeLinearAttention(RotaryLinearAttention):
    """MLLA's token mixer.

    Args (beyond the common contract of :class:`AttentionBase`):
        rope: MLLA's RoPE on the numerator (default True); needs dim % 4 == 0 and an even head_dim.
        dwc_kernel: LePE kernel on v (3; 0 = off). in_kernel: kernel of the input branch's depthwise conv (3).

    Parameters (official names in brackets): ``in_proj``, ``act_proj`` Linear(C, C) [in_proj,
    act_proj]; ``qkv`` Linear(C, 2C, bias=qkv_bias) [attn.qk]; ``proj`` Linear(C, C) [out_proj]:
    trunc_normal(0.02), bias 0 (the model's ``_init_weights``); ``in_conv.conv`` Conv2d(C, C, 3,
    groups C) [dwc] and ``dwc.conv`` Conv2d(C, C, 3, groups C) [attn.lepe]: PyTorch default.

    Prefix (cls) tokens: [Design] the input conv covers the grid only; a prefix token's u is
    SiLU(in_proj(x)) and it gets no LePE, no RoPE phase (angle 0).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        rope: bool = True,
        dwc_kernel: int = 3,
        in_kernel: int = 3,
        **kwargs: Any,
    ) -> None:
        reject_renamed(type(self).__name__, kwargs)
        reject_fixed(
            type(self).__name__,
            kwargs,
            ("feature_map", "feature_map_kwargs", "normalizer", "dwc_shared", "gate", "out_norm", "key_pos_grid"),
        )
        reject_fixed(type(self).__name__, kwargs, ("value_path",))
        super().__init__(
            dim,
            num_heads,
            *args,
            feature_map="elu",
            normalizer="mean",
            dwc_kernel=dwc_kernel,
            dwc_shared=False,
            gate="silu",
            rope=rope,
            value_path="mean",
            **kwargs,
        )
        self.qkv = self._input_linear(2)  # [Code] ``qk``: v is the branch output itself
        self.in_proj = nn.Linear(dim, dim, **self._factory)
        self.act_proj = nn.Linear(dim, dim, **self._factory)
        self.in_conv = DepthwiseConvBranch(num_heads, self.head_dim, in_kernel, shared=False)
        self._init_linear(self.qkv, self.in_proj, self.act_proj, self.proj)

    def _build_rope(self) -> nn.Module:
        return ChannelRoPE(self.num_heads, self.head_dim)

    @property
    def needs_grid(self) -> bool:
        return True  # the input branch's depthwise conv

    def project(
        self, x: Tensor, grid: tuple[int, int] | None = None, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, N, C) → q, k, v (B, H, N, D) and the gate g = act_proj(x) (B, N, C)."""
        B, N, C = x.shape
        P = self.num_prefix_tokens
        grid = self.grid(N, grid)
        g = self.act_proj(x)
        u = self.in_proj(x)
        if key_padding_mask is not None:  # the conv must see zeros at padded rows, as after truncation
            u = u * key_padding_mask[..., None].to(u.dtype)
        conv = self.in_conv(self.split_heads(u), grid, P)  # (B, N, C), prefix rows 0
        if P:
            conv = torch.cat([u[:, :P], conv[:, P:]], dim=1)  # [Design] prefix tokens skip the conv
        u = F.silu(conv)
        q, k = self.qkv(u).split(C, dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(u), g


register_attention(
    "mlla", MambaLikeLinearAttention, "MLLA: in_proj+DWC+SiLU branch, ELU+1, RoPE numerator, LePE, SiLU gate"
)
