"""Quadratic reference of normalised linear attention (tests only): builds the (N, M) score matrix.

Dimension letters: B batch, H heads, N queries, M keys, F feature dim, D value head dim.
Plain and obviously correct; evaluated in float64 when given float64, else float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_positive

__all__ = ["naive_linear_attention"]


def _dtype(*ts: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def naive_linear_attention(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    normalizer: str = "mean",
    eps: float = 1e-6,
    min_denominator: float | None = None,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """A = φQ φKᵀ (masked columns zeroed, lower triangle if causal); O = A V / (A·1 + ε_sum).

    ``normalizer="mean"`` uses ε_sum = M_b·ε with M_b the number of kept keys of each sample, which
    is the sum form of the mean-normalised attention (docs/methods.md §1.1). Causal uses the sum form.
    """
    check_positive("eps", eps, "it keeps the denominator A·1 + ε away from 0")
    dt = _dtype(phi_q, phi_k, v)
    q, k, vv = phi_q.to(dt), phi_k.to(dt), v.to(dt)
    a = q @ k.transpose(-2, -1)  # (B, H, N, M)
    M = k.shape[2]
    if key_padding_mask is not None:
        a = a * key_padding_mask[:, None, None, :].to(dt)
        n_keys = key_padding_mask.sum(-1).clamp_min(1).to(dt)[:, None, None, None]
    else:
        n_keys = torch.full((), float(M), dtype=dt)
    if causal:
        a = a.tril()
    num = a @ vv
    row = a.sum(-1, keepdim=True)
    if min_denominator is not None:
        return num / row.clamp_min(min_denominator)
    eps_sum = eps if (causal or normalizer == "sum") else eps * n_keys
    return num / (row + eps_sum)
