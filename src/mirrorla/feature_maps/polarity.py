"""PolaFormer's polarity-aware feature map (docs/methods.md §4).

Dimension letters: B batch, H heads, N tokens, D head dim, C = H·D, F = 2D feature dim.

Source: W. Meng et al., "PolaFormer: Polarity-aware Linear Attention for Vision Transformers",
ICLR 2025; official ``models/pola_swin.py`` / ``models/pola_pvt.py`` (class ``PolaLinearAttention``),
mirrored in flash-bidirectional-linear-attention ``flash_bla/layers/polaformer.py``:

    x ← x / softplus(s)                       s ∈ R^C, init 0, shared by q and k, before any ReLU
    p = 1 + α·sigmoid(w)                      w ∈ R^{H×D}, init 0, α = 4  →  p = 3 at init
    φ(q) = [ReLU(q)^p ; ReLU(−q)^p],  φ(k) = [ReLU(k)^p ; ReLU(−k)^p]       (no ε, no rescaling)

This map returns the *same-sign* pair (φ(q), φ(k)); the opposite-sign query [q⁻ ; q⁺] is the same
tensor with its halves swapped (:func:`swap_polarity`), which PolaFormer's value path applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.feature_maps.base import FeatureMap
from mirrorla.feature_maps.focused import _check_heads, _upcast
from mirrorla.feature_maps.registry import register_feature_map
from mirrorla.ops.linear_attention.two_stream import swap_halves

__all__ = ["PolarityFeatureMap", "polarity_split", "swap_polarity"]


def polarity_split(x: Tensor, power: Tensor | float) -> Tensor:
    """[ReLU(x)^p ; ReLU(−x)^p] along the last dim: (..., D) → (..., 2D).

    Evaluated as |x|^p masked by the sign of x, written straight into the two halves: one power
    (the costly op, forward and backward) instead of two, same values bit for bit.
    """
    magnitude = x.abs() ** power  # (..., D)
    signs = torch.stack([x > 0, x < 0], dim=-2)  # (..., 2, D): the ReLU(x) and ReLU(−x) halves
    return (magnitude.unsqueeze(-2) * signs).flatten(-2)


def swap_polarity(phi: Tensor) -> Tensor:
    """[a ; b] → [b ; a] along the last dim (the opposite-sign query of PolaFormer)."""
    return swap_halves(phi, dim=-1)


class PolarityFeatureMap(FeatureMap):
    """φ(x) = [ReLU(x/σ)^p ; ReLU(−x/σ)^p], σ = softplus(s), p = 1 + α·sigmoid(w) per head and channel.

    Args:
        num_heads: H. head_dim: D.
        alpha: α (4, the ImageNet config ``LA.ALPHA``; the LRA runs use 3, 5, 7). p ∈ (1, 1 + α).

    Parameters:
        ``scale`` (1, 1, C), init 0 (official shape and name).
        ``power`` (1, H, 1, D), init 0 → p = 1 + α/2 (official shape and name); shared by q, k and
        the two polarity halves.

    ``feature_dim(D) = 2D``. Evaluated in fp32 with autocast off (docs/methods.md §1.1): (|q|/ln 2)^5
    exceeds the fp16 maximum once |q| > 6.4.
    """

    def __init__(self, num_heads: int, head_dim: int, *, alpha: float = 4.0) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (PolaFormer uses 4), got {alpha}")
        self.num_heads, self.head_dim, self.alpha = num_heads, head_dim, float(alpha)
        self.scale = nn.Parameter(torch.zeros(1, 1, num_heads * head_dim))
        self.power = nn.Parameter(torch.zeros(1, num_heads, 1, head_dim))

    def feature_dim(self, head_dim: int) -> int:
        return 2 * head_dim

    def exponent(self, dtype: torch.dtype | None = None) -> Tensor:
        """p = 1 + α·sigmoid(w), (1, H, 1, D), evaluated in ``dtype`` (default: w's dtype).

        The forward evaluates it in fp32 even for an fp16 w: in fp16 its backward multiplies
        ∂L/∂p by α before sigmoid' ≤ 1/4 and overflowed (2.8e4 · 4 > 65504 at N = 4096, ×100 inputs).
        """
        w = self.power if dtype is None else self.power.to(dtype)
        return 1.0 + self.alpha * torch.sigmoid(w)

    def forward(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_heads(q, k, self.num_heads, self.head_dim, type(self).__name__)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = _upcast(q), _upcast(k)
            # The parameters enter in q's (fp32 / fp64) dtype, so their gradients are formed there
            # and rounded to an fp16 parameter's dtype once, at the end.
            s = F.softplus(self.scale.to(q.dtype)).view(1, self.num_heads, 1, self.head_dim)
            p = self.exponent(q.dtype)
            return polarity_split(q / s, p), polarity_split(k / s, p)

    def truncated_input(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[()]:
        return ()  # the positive and the negative half are both kept, as two feature blocks

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, alpha={self.alpha}"


register_feature_map("polarity", PolarityFeatureMap)
