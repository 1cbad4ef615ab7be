"""NP-Map, the norm-preserved feature map of STILL (docs/methods.md §7.2).

Dimension letters: B batch, H heads, N tokens, D head dim, F = feature_dim (D_f); features have 2F entries.

    x₁ = x − 2 (x·û_h) û_h            one Householder reflection per head, û_h = u_h / max(‖u_h‖, 1e-6)
    x₂ = W_h x₁                       W_h ∈ R^{F×D}, no bias
    ũ  = ‖x‖ · x₂ / max(‖x₂‖, 1e-12)  direction from the learned map, magnitude from the pretrained x
    φ(x) = max([softmax(ũ) ; softmax(−ũ)], 1e-12)

Source: STILL (arXiv 2602.02180), official ``still/models/still/modeling_still.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["NPMap", "np_map"]


def np_map(x: Tensor, householder: Tensor, weight: Tensor) -> Tensor:
    """Functional NP-Map.

    Args:
        x: (B, H, N, D) post-RoPE queries or keys.
        householder: (H, D) reflection vectors u_h.
        weight: (H, F, D) per-head linear maps W_h.

    Returns:
        (B, H, N, 2F) non-negative features in fp32 (float64 inputs stay float64); autocast is off
        inside because the map has a norm, a division and an exp (precision policy, docs/methods.md §1.1).
    """
    if x.dim() != 4:
        raise ValueError(f"np_map expects x of shape (B, H, N, D), got {tuple(x.shape)}")
    H, D = x.shape[1], x.shape[3]
    if householder.shape != (H, D) or weight.dim() != 3 or weight.shape[0] != H or weight.shape[2] != D:
        raise ValueError(
            f"np_map parameter shapes disagree with x {tuple(x.shape)}: householder {tuple(householder.shape)} "
            f"(expected {(H, D)}), weight {tuple(weight.shape)} (expected ({H}, F, {D}))"
        )
    dtype = torch.float64 if torch.float64 in (x.dtype, householder.dtype, weight.dtype) else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(dtype)
        u = householder.to(dtype)
        u_hat = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (H, D)
        u_hat = u_hat[None, :, None, :]  # (1, H, 1, D)
        x1 = x - 2 * (x * u_hat).sum(-1, keepdim=True) * u_hat
        x2 = torch.einsum("bhnd,hfd->bhnf", x1, weight.to(dtype))
        radius = x.norm(dim=-1, keepdim=True)
        u_tilde = radius * x2 / x2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        features = torch.cat([u_tilde.softmax(-1), (-u_tilde).softmax(-1)], dim=-1)
        return features.clamp_min(1e-12)


class NPMap(nn.Module):
    """Learnable NP-Map for one layer's queries or keys (per-head parameters).

    Args:
        num_heads: H (query heads; keys are GQA-expanded before the map).
        head_dim: D.
        feature_dim: F (default 128 as in the official code); the output has 2F features.
    """

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int = 128, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_heads, self.head_dim, self.feature_dim = num_heads, head_dim, feature_dim
        self.householder = nn.Parameter(torch.empty(num_heads, head_dim, **factory))
        self.weight = nn.Parameter(torch.empty(num_heads, feature_dim, head_dim, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # u ~ N(0, 1); W_h kaiming-uniform with the default gain (a = 0), as the official
        # ``StillHedgehogFeatureMap.FeatureMapMLP.init_weights_`` re-initialises its per-head Linears.
        nn.init.normal_(self.householder)
        for h in range(self.num_heads):
            nn.init.kaiming_uniform_(self.weight.data[h])

    @property
    def output_dim(self) -> int:
        return 2 * self.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, N, D) → (B, H, N, 2F) fp32 features."""
        return np_map(x, self.householder, self.weight)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, feature_dim={self.feature_dim}"
