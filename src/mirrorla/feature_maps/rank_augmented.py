"""RALA's rank-augmented feature map (docs/methods.md §11).

Dimension letters: B batch, H heads, N query tokens, M key tokens, D head dim.

Source: Q. Fan et al., "Breaking the Low-Rank Dilemma of Linear Attention" (RAVLT), CVPR 2025;
official github.com/qhfan/RALA ``classfication/RALA.py``, class ``GateLinearAttentionNoSilu``.

    φq = ELU(q) + 1,   φk⁰ = ELU(k) + 1
    q̄ = mean_i φq_i                                         (over the kept tokens)
    α_j = M · softmax_j(D^−½ · q̄·φk⁰_j)                    (over the kept keys)
    φk_j = α_j · φk⁰_j

The key weights α are one per key and head; they depend on every query (a sequence statistic), so
the map is not token-local and cannot be used causally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mirrorla.feature_maps.base import FeatureMap
from mirrorla.feature_maps.focused import _check_heads, _upcast
from mirrorla.feature_maps.registry import register_feature_map

__all__ = ["RankAugmentedFeatureMap", "elu_plus_one"]


def elu_plus_one(x: Tensor) -> Tensor:
    """ELU(x) + 1 > 0, the map of MLLA, RALA and MALA (Katharopoulos et al. 2020)."""
    return F.elu(x) + 1.0


class RankAugmentedFeatureMap(FeatureMap):
    """ELU + 1 with RALA's per-key weights α_j = M·softmax_j(D^−½ q̄·φk_j); no parameters.

    Args:
        num_heads: H. head_dim: D.
        rank_augment: the key weights α (default True). False gives plain ELU + 1 (the ablation).

    With a key-padding mask q̄ is the mean over the kept tokens, the softmax runs over the kept keys and
    M counts them, so a padded batch equals the truncated one ([Design]; the official code has no mask).
    Evaluated in fp32 with autocast off for half inputs (the softmax over M keys).
    """

    token_local = False

    def __init__(self, num_heads: int, head_dim: int, *, rank_augment: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.rank_augment = num_heads, head_dim, bool(rank_augment)
        self.token_local = not self.rank_augment

    def forward(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_heads(q, k, self.num_heads, self.head_dim, type(self).__name__)
        with torch.autocast(device_type=q.device.type, enabled=False):
            phi_q, phi_k = elu_plus_one(_upcast(q)), elu_plus_one(_upcast(k))
            if not self.rank_augment:
                return phi_q, phi_k
            M = phi_k.shape[-2]
            if key_padding_mask is None:
                q_mean = phi_q.mean(-2, keepdim=True)  # (B, H, 1, D)
                count = float(M)
            else:
                keep = key_padding_mask[:, None, :, None].to(phi_q.dtype)  # (B, 1, M, 1)
                count = key_padding_mask.sum(-1).clamp_min(1).to(phi_q.dtype)[:, None, None, None]
                q_mean = (phi_q * keep).sum(-2, keepdim=True) / count
            # [Code] ``eff = softmax(scale · q_mean @ kᵀ)``, ``k = k · eff · (H·W)``; scale = D^−½.
            logits = (q_mean @ phi_k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, H, 1, M)
            if key_padding_mask is not None:
                logits = logits.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
            weights = torch.softmax(logits, dim=-1).transpose(-2, -1) * count  # (B, H, M, 1)
            return phi_q, phi_k * weights

    def truncated_input(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[()]:
        return ()  # ELU + 1 is injective and α > 0: nothing is zeroed

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, rank_augment={self.rank_augment}"


register_feature_map("rank_augmented", RankAugmentedFeatureMap)
