"""MirrorLinearAttention: the linear layer with the MirrorLA feature map (METHODS.md §2.1).

Dimension letters: B batch, N tokens, C channels, H heads, D head dim.
"""

from __future__ import annotations

import math

import torch

from mirrorla.feature_maps import MirrorFeatureMap, ReLUFeatureMap
from mirrorla.layers.linear import LinearAttention

__all__ = ["MirrorLinearAttention"]


class MirrorLinearAttention(LinearAttention):
    """φ(x) = ReLU(H_blk(Θ)·H_c·x) linear attention; every MirrorLA component is a switch.

    Args (beyond :class:`LinearAttention`, whose extras ``dwc_kernel``, ``dwc_shared``,
    ``out_norm`` and ``gate`` are all off by default):
        block_reflection, variance_modulation, cross_head: the ablation switches (§2.8); all on = R3.
        theta_init, alpha_init, variance_eps, detach_variance: see :class:`MirrorFeatureMap`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_prefix_tokens: int = 0,
        *,
        block_reflection: bool = True,
        variance_modulation: bool = True,
        cross_head: bool = True,
        theta_init: str | float = "uniform",
        alpha_init: float = 0.1 * math.pi,
        variance_eps: float = 1e-6,
        detach_variance: bool = False,
        **kwargs,
    ) -> None:
        if "feature_map" in kwargs:
            raise TypeError("MirrorLinearAttention builds its own feature map; use LinearAttention for others")

        def feature_map(num_heads: int, head_dim: int) -> MirrorFeatureMap:
            return MirrorFeatureMap(
                num_heads,
                head_dim,
                block_reflection=block_reflection,
                variance_modulation=variance_modulation,
                cross_head=cross_head,
                theta_init=theta_init,
                alpha_init=alpha_init,
                variance_eps=variance_eps,
                detach_variance=detach_variance,
            )

        super().__init__(
            dim,
            num_heads,
            qkv_bias,
            attn_drop,
            proj_drop,
            num_prefix_tokens,
            feature_map=feature_map,
            **kwargs,
        )

    @torch.no_grad()
    def fold_reflections(self) -> MirrorLinearAttention:
        """Multiply the constant reflection R = H_blk(θ)·H_c into W_q, b_q, W_k, b_k (inference).

        Only possible without variance modulation (then R does not depend on the input). Afterwards
        the feature map is a plain ReLU and outputs are unchanged. Returns self.
        """
        fm = self.feature_map
        if not isinstance(fm, MirrorFeatureMap):
            raise ValueError("reflections are already folded")
        R = fm.reflection_matrix().to(self.qkv.weight.dtype)
        C = self.dim
        w = self.qkv.weight
        w[:C] = R @ w[:C]
        w[C : 2 * C] = R @ w[C : 2 * C]
        if self.qkv.bias is not None:
            b = self.qkv.bias
            b[:C] = R @ b[:C]
            b[C : 2 * C] = R @ b[C : 2 * C]
        self.feature_map = ReLUFeatureMap()
        return self
