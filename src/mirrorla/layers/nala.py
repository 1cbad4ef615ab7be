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

A configuration of shared parts: :class:`NormAwareFeatureMap` × the RoPE-numerator value path of
:class:`RotaryLinearAttention` (``value_path="mean"``, which MLLA and RALA share; :class:`AxialRoPE` lives
in :mod:`mirrorla.layers.rotary` and is re-exported here) × the shared DWC branch (per-channel) ×
LayerNorm × the shared SiLU gate.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mirrorla.feature_maps.norm_aware import NALA_FORMS
from mirrorla.layers.linear import reject_fixed, reject_renamed
from mirrorla.layers.rotary import AxialRoPE, RotaryLinearAttention
from mirrorla.registry import register_attention

__all__ = ["NormAwareLinearAttention", "AxialRoPE"]


class NormAwareLinearAttention(RotaryLinearAttention):
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
            (
                "feature_map",
                "feature_map_kwargs",
                "normalizer",
                "dwc_shared",
                "gate",
                "out_norm",
                "key_pos_grid",
                "value_path",
            ),
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
            rope=rope,
            value_path="mean",
            **kwargs,
        )
        self.nala_form = nala_form
        # [Code] NaLaFormer keeps the PyTorch default Linear init and trunc_normal(0.02) convs.
        self.qkv.reset_parameters()
        self.proj.reset_parameters()
        if self.dwc is not None:
            nn.init.trunc_normal_(self.dwc.conv.weight, std=0.02)
            nn.init.zeros_(self.dwc.conv.bias)


register_attention(
    "nala", NormAwareLinearAttention, "NaLaFormer, released-code form: norm-aware power, RoPE numerator, LN, SiLU gate"
)
register_attention(
    "nala_cos", NormAwareLinearAttention, "NaLaFormer, paper cosine-inhibit form (option)", nala_form="cosine"
)
