"""Every naive reference in one place (tests and docs import from here).

Each op package keeps its own reference beside its fast forms (``ops/<op>/naive.py``, as in
flash-linear-attention); this module only re-exports them.
"""

from mirrorla.ops.linear_attention.naive import naive_linear_attention
from mirrorla.ops.reflections.naive import (
    dense_block_reflection,
    dense_cross_head_reflection,
    naive_block_variance,
    naive_mirror_features,
    naive_modulated_angle,
)
from mirrorla.ops.softmax.naive import naive_softmax_attention

__all__ = [
    "naive_linear_attention",
    "naive_softmax_attention",
    "dense_block_reflection",
    "dense_cross_head_reflection",
    "naive_block_variance",
    "naive_modulated_angle",
    "naive_mirror_features",
]
