"""Quadratic reference of softmax attention (tests only): the explicit (N, M) matrix.

Dimension letters: B batch, H heads, N queries, M keys, D head dim.
Plain and obviously correct; evaluated in float64 when given float64, else float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["naive_softmax_attention"]


def _dtype(*ts: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def naive_softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, causal: bool = False
) -> Tensor:
    """softmax(q kᵀ·scale) v with an explicit matrix."""
    dt = _dtype(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.to(dt) @ k.to(dt).transpose(-2, -1)) * scale
    if causal:
        N, M = s.shape[-2:]
        s = s.masked_fill(~torch.ones(N, M, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    return s.softmax(-1) @ v.to(dt)
