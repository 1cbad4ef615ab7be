"""Softmax attention baseline (docs/methods.md §1.3).

Dimension letters: B batch, H heads, N queries, M keys, D head dim.

``parallel.py`` the op (fused SDPA or explicit matrix), ``naive.py`` the quadratic fp32 reference.
"""

from mirrorla.ops.softmax.parallel import softmax_attention

__all__ = ["softmax_attention"]
