"""Functional ops: tensors in, tensors out, no parameters. Layout (B, H, N, D)."""

from mirrorla.ops.linear_attention import causal_linear_attention, linear_attention, recurrent_step
from mirrorla.ops.reflections import block_reflect, block_variance, cross_head_reflect, modulated_angle
from mirrorla.ops.softmax import softmax_attention

__all__ = [
    "linear_attention",
    "causal_linear_attention",
    "recurrent_step",
    "softmax_attention",
    "cross_head_reflect",
    "block_reflect",
    "block_variance",
    "modulated_angle",
]
