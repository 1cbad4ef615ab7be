"""The one backend switch of every softmax layer: fused SDPA or the explicit matrix.

A global default, like timm's ``TIMM_FUSED_ATTN`` / ``use_fused_attn()``: fused unless the
environment sets ``MIRRORLA_FUSED_ATTN=0`` or :func:`set_fused_attn` changes it. Each softmax layer
(:class:`SoftmaxAttention`, :class:`LocalWindowAttention`, :class:`SpatialReductionAttention`)
copies it into its ``fused`` attribute at construction; set that attribute to switch one layer
(FLOP counters need the explicit matrix, which the fused kernel hides).
"""

from __future__ import annotations

import os

__all__ = ["use_fused_attn", "set_fused_attn"]

_FUSED_ATTN = os.environ.get("MIRRORLA_FUSED_ATTN", "1") != "0"


def use_fused_attn() -> bool:
    """The ``fused`` default of softmax layers built from now on."""
    return _FUSED_ATTN


def set_fused_attn(enable: bool) -> None:
    """Default backend of softmax layers built from now on (existing layers: set ``.fused``)."""
    global _FUSED_ATTN
    _FUSED_ATTN = bool(enable)
