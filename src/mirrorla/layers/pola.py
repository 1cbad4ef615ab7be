"""PolaFormer: polarity-aware linear attention (docs/methods.md §4).

Dimension letters: B batch, N tokens, C channels, H heads, D head dim, F = 2D feature dim.

Source: W. Meng et al., "PolaFormer: Polarity-aware Linear Attention for Vision Transformers",
ICLR 2025; official github.com/ZacharyMeng/PolaFormer ``models/pola_swin.py`` (class
``PolaLinearAttention``, fused ``qkvg``), with the identical layer in
flash-bidirectional-linear-attention ``flash_bla/layers/polaformer.py``.

    q, k, v, g = split(qkvg(x));  k ← k + P
    φ_sim(q) = [q⁺ ; q⁻], φ_opp(q) = [q⁻ ; q⁺], φ(k) = [k⁺ ; k⁻]      (PolarityFeatureMap)
    O = [LA_mean(φ_sim(Q), φ(K), V¹) | LA_mean(φ_opp(Q), φ(K), V²)]  per head, V = [V¹ | V²]
    y = proj((merge(O) + DWC₅ₓ₅(V)) ⊙ g)

A configuration of shared parts: :class:`PolarityFeatureMap` × a two-stream value path (:meth:`mix`)
× the shared DWC branch × the shared linear gate × the shared key position table of :class:`LinearAttention`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mirrorla.layers.linear import LinearAttention, reject_fixed, reject_renamed
from mirrorla.ops.linear_attention.two_stream import swap_halves, two_stream_linear_attention
from mirrorla.registry import register_attention

__all__ = ["PolaLinearAttention"]


class PolaLinearAttention(LinearAttention):
    """PolaFormer's linear attention.

    Args (beyond the common contract of :class:`AttentionBase`):
        alpha: α = 4; the learnable power is p = 1 + α·sigmoid(w) (an option of the ``polarity`` map).
        dwc_kernel: DWC kernel (5; 0 turns the branch off).
        key_pos_grid: construction grid of the learned key position table P ((14, 14); None = off).
        gate: ``"linear"`` (default, [Code]): the token-dependent g = W_g x + b of the fused qkvg
            projection multiplies (O + DWC(V)), no activation. ``None``: no output gate (qkv is then
            Linear(C, 3C)). ``"silu"`` is accepted as for any :class:`LinearAttention`.
        stream_gates: ``False`` (default). ``True`` ([Paper] reading of Fig. 2, with ``gate=None``):
            two learnable per-head, per-channel coefficient matrices G^s, G^o (init 1) scale the
            same-sign and opposite-sign streams.

    Parameters (official names in brackets):
        ``qkv`` Linear(C, 4C, bias=qkv_bias) [qkvg; PVT splits it into qg and kv with the same
        count], ``proj`` Linear(C, C) [proj]: trunc_normal(0.02), bias 0;
        ``feature_map.scale`` (1, 1, C) init 0 [scale]; ``feature_map.power`` (1, H, 1, D) init 0
        [power]; ``pos_embed.weight`` (1, Hp·Wp, C) init 0 [positional_encoding];
        ``dwc.conv`` Conv2d(D, D, k, groups D) PyTorch default [dwc];
        ``stream_gates=True`` only: ``gate_sim`` (H, ⌈D/2⌉), ``gate_opp`` (H, ⌊D/2⌋), init 1.

    V is split with ``chunk(2)`` as in the official code (the sim half gets ⌈D/2⌉ channels).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        alpha: float = 4.0,
        dwc_kernel: int = 5,
        key_pos_grid: tuple[int, int] | None = (14, 14),
        gate: str | None = "linear",
        stream_gates: bool = False,
        **kwargs: Any,
    ) -> None:
        reject_renamed("PolaLinearAttention", kwargs)
        reject_fixed(
            "PolaLinearAttention", kwargs, ("feature_map", "feature_map_kwargs", "normalizer", "dwc_shared", "out_norm")
        )
        if gate == "static":
            raise ValueError("PolaLinearAttention: gate='static' was renamed; use gate=None, stream_gates=True")
        if dim // max(num_heads, 1) < 2:
            raise ValueError(
                f"PolaFormer splits each head's values into two halves and needs head_dim >= 2, got "
                f"dim={dim}, num_heads={num_heads}"
            )
        super().__init__(
            dim,
            num_heads,
            *args,
            feature_map="polarity",
            feature_map_kwargs=dict(alpha=alpha),
            normalizer="mean",
            dwc_kernel=dwc_kernel,
            dwc_shared=True,
            gate=gate,
            key_pos_grid=key_pos_grid,
            **kwargs,
        )
        self.stream_gates = bool(stream_gates)
        if stream_gates:
            D = self.head_dim
            self.gate_sim = nn.Parameter(torch.ones(num_heads, D - D // 2))
            self.gate_opp = nn.Parameter(torch.ones(num_heads, D // 2))

    def mix(
        self,
        phi_q: Tensor,
        phi_k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None,
        causal: bool,
        grid: tuple[int, int] | None = None,
    ) -> Tensor:
        """Same-sign stream on V¹, opposite-sign stream on V²: (B, H, N, 2D)², (B, H, N, D) → (B, H, N, D).

        Non-causal: one pass over both streams (:func:`two_stream_linear_attention`, one S GEMM and
        one read-out GEMM). Causal: the two streams as two chunked linear attentions.
        """
        scale = torch.cat([self.gate_sim, self.gate_opp], dim=-1) if self.stream_gates else None
        if not causal:
            return two_stream_linear_attention(
                phi_q,
                phi_k,
                v,
                normalizer=self.normalizer,
                eps=self.eps,
                key_padding_mask=key_padding_mask,
                stream_scale=scale,
            )
        v_sim, v_opp = v.chunk(2, dim=-1)
        o_sim = super().mix(phi_q, phi_k, v_sim, key_padding_mask, causal)
        # [Code] opposite stream [q⁻ ; q⁺]·[k⁺ ; k⁻] (the paper draws [q⁺ ; q⁻]·[k⁻ ; k⁺]: same scores).
        o_opp = super().mix(swap_halves(phi_q), phi_k, v_opp, key_padding_mask, causal)
        o = torch.cat([o_sim, o_opp], dim=-1)
        return o if scale is None else o * scale[None, :, None, :].to(o.dtype)


register_attention(
    "pola", PolaLinearAttention, "PolaFormer: polarity split, learnable power, ± streams, linear gate, DWC, P"
)
