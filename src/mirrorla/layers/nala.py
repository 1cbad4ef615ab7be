"""NaLaFormer: norm-aware linear attention (docs/methods.md §5).

Dimension letters: B batch, N tokens (P prefix + Hg·Wg), C channels, H heads, D head dim,
F = 2D feature dim, J = D/2 rotation pairs.

Source: W. Meng et al., "Norm×Direction: Restoring the Missing Query Norm in Vision Linear
Attention", arXiv 2506.21137; official github.com/ZacharyMeng/NaLaFormer ``NaLaformer/NALA.py``,
classes ``NormAwareLinearAttn`` and ``RoPE``.

    q, k, v, g = split(qkvg(x))                        (fp32 inside)
    φq, φk = norm-aware map (form "code" or "cosine")
    O_i = R(φq_i)ᵀ (mean_j R(φk_j) v_jᵀ) / (φq_iᵀ mean_j φk_j + 1e-6)      RoPE R in the numerator only
    y = proj(LayerNorm(merge(O) + LePE₅ₓ₅(V)) ⊙ SiLU(g))     LePE: one 5×5 kernel per channel

A configuration of shared parts: :class:`NormAwareFeatureMap` × a RoPE-numerator value path
(:meth:`mix`) × the shared DWC branch (per-channel) × LayerNorm × the shared SiLU gate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mirrorla.feature_maps.norm_aware import NALA_FORMS
from mirrorla.layers.linear import LinearAttention, reject_fixed, reject_renamed
from mirrorla.ops.linear_attention import linear_attention
from mirrorla.registry import register_attention

__all__ = ["NormAwareLinearAttention", "AxialRoPE"]


class AxialRoPE(nn.Module):
    """2-D rotary position embedding over the token grid, NaLaFormer's ``RoPE`` + ``theta_shift``.

    Frequencies ω_i = base^{−i/(D/4 − 1)}, i = 0 … D/4 − 1 (``linspace(0, 1, D/4)`` exponents). Pair j
    (channels 2j, 2j+1) of a token at row r, column c rotates by β = r·ω_j for j < D/4 and by
    β = c·ω_{j−D/4} otherwise: (a, b) ↦ (a cos β − b sin β, b cos β + a sin β). A last dim that is a
    multiple of D (e.g. the 2D-wide feature maps) is rotated chunk by chunk. Prefix tokens: β = 0.

    Args: head_dim: D (a multiple of 4). base: 10000.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(
                f"2-D RoPE rotates D/4 row pairs and D/4 column pairs and needs head_dim % 4 == 0, got "
                f"head_dim={head_dim}; change dim/num_heads or pass rope=False"
            )
        self.head_dim = head_dim
        # [Code] NALA.py ``RoPE.__init__``: ``1.0 / (10000 ** torch.linspace(0, 1, D // 4))`` in float32.
        # The same float32 arithmetic gives the same bits (a float64 evaluation rounds differently
        # in the last bit for most D); a float64 layer uses these float32 values.
        freqs = 1.0 / (base ** torch.linspace(0, 1, head_dim // 4, dtype=torch.float32))
        self.register_buffer("freqs", freqs, persistent=False)

    def angles(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        """β (P + Hg·Wg, D/2), row-major tokens; prefix rows 0."""
        Hg, Wg = grid
        f = self.freqs
        rows = torch.arange(Hg, device=f.device, dtype=f.dtype).repeat_interleave(Wg)
        cols = torch.arange(Wg, device=f.device, dtype=f.dtype).repeat(Hg)
        beta = torch.cat([rows[:, None] * f, cols[:, None] * f], dim=-1)
        if num_prefix_tokens:
            beta = torch.cat([beta.new_zeros(num_prefix_tokens, beta.shape[-1]), beta])
        return beta

    def tables(self, grid: tuple[int, int], num_prefix_tokens: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos β and sin β, each (N, 1, D/2) in ``dtype``: built once per call and shared by q and k."""
        beta = self.angles(grid, num_prefix_tokens).to(dtype)
        return beta.cos()[:, None, :], beta.sin()[:, None, :]

    def rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, H, N, m·D) rotated by the tables of :meth:`tables`; same shape and dtype."""
        *lead, N, F = x.shape
        D = self.head_dim
        if F % D:
            raise ValueError(f"AxialRoPE(head_dim={D}) needs a last dim that is a multiple of {D}, got {F}")
        if cos.shape[0] != N:
            raise ValueError(f"the RoPE tables cover {cos.shape[0]} tokens (grid + prefix), but N={N}")
        pairs = x.reshape(*lead, N, F // D, D // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
        return out.reshape(x.shape)

    def forward(self, x: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        """x (B, H, N, m·D) → rotated, same shape and dtype."""
        return self.rotate(x, *self.tables(grid, num_prefix_tokens, x.dtype))


class NormAwareLinearAttention(LinearAttention):
    """NaLaFormer's norm-aware linear attention; ``nala_form`` picks the released code or the paper form.

    Args (beyond the common contract of :class:`AttentionBase`):
        nala_form: ``"code"`` (default, the released ``NALA.py``) or ``"cosine"`` (paper form, §5.2).
        rope: RoPE on the numerator (default True, [Code]); needs head_dim % 4 == 0.
        dwc_kernel: LePE kernel (5; 0 turns it off).
        lam, phase_scale, norm_eps: see :class:`NormAwareFeatureMap`.

    Parameters (official names in brackets):
        ``qkv`` Linear(C, 4C, bias) [qkvg], ``proj`` Linear(C, C) [out_proj]: PyTorch default init
        ([Code]: the NaLaFormer model never re-initialises Linear layers);
        ``dwc.conv`` Conv2d(C, C, k, groups C) [lepe]: trunc_normal(0.02), bias 0 (the model's
        ``_init_weights`` reaches every Conv2d); ``out_norm`` LayerNorm(C) (1, 0) [ln].
        No parameter in the feature map (λ = 3 is hard-coded in the source).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        nala_form: str = "code",
        rope: bool = True,
        dwc_kernel: int = 5,
        lam: float = 3.0,
        phase_scale: float = 20.0,
        norm_eps: float = 1e-6,
        **kwargs,
    ) -> None:
        reject_renamed("NormAwareLinearAttention", kwargs)
        reject_fixed(
            "NormAwareLinearAttention",
            kwargs,
            ("feature_map", "feature_map_kwargs", "normalizer", "dwc_shared", "gate", "out_norm", "key_pos_grid"),
        )
        if nala_form not in NALA_FORMS:
            raise ValueError(f"nala_form must be one of {NALA_FORMS}, got {nala_form!r}")
        super().__init__(
            dim,
            num_heads,
            *args,
            feature_map="norm_aware",
            feature_map_kwargs=dict(form=nala_form, lam=lam, phase_scale=phase_scale, norm_eps=norm_eps),
            normalizer="mean",
            dwc_kernel=dwc_kernel,
            dwc_shared=False,
            out_norm=True,
            gate="silu",
            **kwargs,
        )
        self.nala_form = nala_form
        self.rope = AxialRoPE(self.head_dim) if rope else None
        # [Code] NaLaFormer keeps the PyTorch default Linear init and trunc_normal(0.02) convs.
        self.qkv.reset_parameters()
        self.proj.reset_parameters()
        if self.dwc is not None:
            nn.init.trunc_normal_(self.dwc.conv.weight, std=0.02)
            nn.init.zeros_(self.dwc.conv.bias)

    @property
    def needs_grid(self) -> bool:
        return super().needs_grid or self.rope is not None

    def mix(
        self,
        phi_q: Tensor,
        phi_k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None,
        causal: bool,
        grid: tuple[int, int] | None = None,
    ) -> Tensor:
        """Rotated numerator over the un-rotated denominator: (B, H, N, 2D)², (B, H, N, D) → (B, H, N, D).

        ``grid``: the (Hg, Wg) of the N − P spatial tokens for RoPE (default: a square of N − P).

        Returns fp32 (fp64 for fp64 inputs) whatever v's dtype: the ratio is not bounded by the
        values (it reached 4.8e5 at ×100 inputs) and must reach the LayerNorm before any fp16 cast;
        :meth:`LinearAttention.forward` evaluates the norm in fp32 and then returns v's dtype.
        """
        v = v.to(phi_q.dtype)  # [Code] the official layer runs q, k, v in fp32; φ are fp32 (or fp64) already
        core = dict(
            causal=causal,
            normalize=False,
            normalizer=self.normalizer,
            key_padding_mask=key_padding_mask,
            chunk_size=self.chunk_size,
        )
        # Denominator φq·mean(φk) from the un-rotated features ([Code]: z uses q, k; kv uses q_, k_).
        den = linear_attention(phi_q, phi_k, v.new_ones(*v.shape[:-1], 1), **core)
        if self.rope is not None:
            grid, P = self.grid(phi_q.shape[2], grid), self.num_prefix_tokens
            cos, sin = self.rope.tables(grid, P, phi_q.dtype)
            phi_q, phi_k = self.rope.rotate(phi_q, cos, sin), self.rope.rotate(phi_k, cos, sin)
        num = linear_attention(phi_q, phi_k, v, **core)
        return num / (den + self.eps)


register_attention(
    "nala", NormAwareLinearAttention, "NaLaFormer, released-code form: norm-aware power, RoPE numerator, LN, SiLU gate"
)
register_attention(
    "nala_cos", NormAwareLinearAttention, "NaLaFormer, paper cosine-inhibit form (option)", nala_form="cosine"
)
