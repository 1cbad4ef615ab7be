"""Attention layers (B, N, C) → (B, N, C). Each layer module registers its entries next to its classes."""

from mirrorla.layers.agent import AgentAttention
from mirrorla.layers.base import AttentionBase
from mirrorla.layers.flatten import FocusedLinearAttention
from mirrorla.layers.fused import set_fused_attn, use_fused_attn
from mirrorla.layers.l2vit import LinearGlobalAttention, LocalWindowAttention
from mirrorla.layers.linear import LinearAttention
from mirrorla.layers.mirror import MirrorLinearAttention
from mirrorla.layers.mlla import MambaLikeLinearAttention
from mirrorla.layers.nala import NormAwareLinearAttention
from mirrorla.layers.pola import PolaLinearAttention
from mirrorla.layers.rotary import MagnitudeAwareLinearAttention, RankAugmentedLinearAttention, RotaryLinearAttention
from mirrorla.layers.softmax import SoftmaxAttention
from mirrorla.layers.spatial_reduction import SpatialReductionAttention

__all__ = [
    "AttentionBase",
    "SoftmaxAttention",
    "LinearAttention",
    "MirrorLinearAttention",
    "FocusedLinearAttention",
    "PolaLinearAttention",
    "NormAwareLinearAttention",
    "RotaryLinearAttention",
    "MambaLikeLinearAttention",
    "RankAugmentedLinearAttention",
    "MagnitudeAwareLinearAttention",
    "AgentAttention",
    "LinearGlobalAttention",
    "LocalWindowAttention",
    "SpatialReductionAttention",
    "use_fused_attn",
    "set_fused_attn",
]
