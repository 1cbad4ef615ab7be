"""Householder reflections of MirrorLA (docs/methods.md §2.2–2.4), all O(N·C) elementwise work.

Dimension letters: B batch, H heads, N tokens, D head dim, J = D/2 blocks per head, C = H·D.

``reflect.py`` one op per formula (cross-head, block reflection, block variance, modulated angle);
``fused.py`` :func:`mirror_features`, the whole feature map in a few fused passes; ``naive.py`` the
dense reflection matrices, plain references of σ² and Θ, and the reference composition of φ.
"""

from mirrorla.ops.reflections.fused import mirror_features
from mirrorla.ops.reflections.reflect import (
    VARIANCE_AXES,
    block_reflect,
    block_variance,
    check_variance_axis,
    cross_head_reflect,
    modulated_angle,
)

__all__ = [
    "cross_head_reflect",
    "block_reflect",
    "block_variance",
    "modulated_angle",
    "mirror_features",
    "VARIANCE_AXES",
    "check_variance_axis",
]
