"""Measures of an attention map and of a feature map: pure functions on tensors.

Dimension letters: S sampled query rows, M keys, N tokens, F feature dim, D head dim.

An attention *row* is a distribution over the M keys (non-negative, sums to 1). For a linear
attention the row is the one its feature map implies, ``a_ij = φq_i·φk_j / Σ_j φq_i·φk_j``; for
softmax it is ``softmax(q_i·k_j / √D)``. Rows are built for a sample of queries only
(:func:`feature_rows`, :func:`softmax_rows`), so nothing of size N×N exists for large N; the
effective rank of a linear attention is exact at any N through its low-rank factors
(:func:`low_rank_singular_values`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "feature_rows",
    "softmax_rows",
    "row_entropy",
    "topk_mass",
    "attention_distance",
    "effective_rank",
    "low_rank_singular_values",
    "sampled_singular_values",
    "discarded_energy",
    "feature_max",
    "dead_fraction",
    "average_ranks",
    "spearman",
    "pca_2d",
]


def feature_rows(phi_q: Tensor, phi_k: Tensor) -> tuple[Tensor, Tensor]:
    """The rows a linear attention implies: φq (S, F), φk (M, F) → (rows (S, M), empty (S,) bool).

    A query whose scores are all zero (φq = 0, e.g. every entry of a ReLU map negative) has no
    distribution: its row is returned as zeros and flagged in ``empty``; the layer outputs 0 there.
    """
    scores = phi_q @ phi_k.T
    total = scores.sum(-1, keepdim=True)
    empty = total[:, 0] <= 0
    rows = torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), torch.zeros_like(scores))
    return rows, empty


def softmax_rows(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """softmax(q kᵀ · scale) rows: q (S, D), k (M, D) → (S, M)."""
    return torch.softmax((q @ k.T) * scale, dim=-1)


def row_entropy(rows: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row (..., M) → (...); 0·log 0 = 0. Uniform rows give log M."""
    logs = torch.log(rows.clamp_min(torch.finfo(rows.dtype).tiny))
    return -(rows * logs).sum(-1)


def topk_mass(rows: Tensor, k: int) -> Tensor:
    """The attention mass on the k largest keys of each row (..., M) → (...)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return rows.topk(min(k, rows.shape[-1]), dim=-1).values.sum(-1)


def attention_distance(rows: Tensor, query_pos: Tensor, key_pos: Tensor) -> Tensor:
    """Mean distance (in tokens of the grid) from each query to the keys it attends to.

    rows (S, M) over M keys at ``key_pos`` (M, 2); queries at ``query_pos`` (S, 2). Rows need not
    sum to one (prefix keys left out): the distance is the mean under the row renormalised over
    these keys; a row with no mass there gives NaN.
    """
    dist = torch.cdist(query_pos.to(rows.dtype), key_pos.to(rows.dtype))
    mass = rows.sum(-1)
    return (rows * dist).sum(-1) / mass.where(mass > 0, torch.full_like(mass, float("nan")))


def effective_rank(singular_values: Tensor) -> float:
    """exp of the entropy of the normalised singular values (Roy & Vetterli, 2007): 1 for a rank-1
    matrix, r for r equal singular values; 0 for the zero matrix."""
    s = singular_values.double().clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def low_rank_singular_values(left: Tensor, right: Tensor) -> Tensor:
    """Singular values of ``left @ right.T`` without forming it: left (N, F), right (M, F).

    With reduced QR left = Q₁R₁, right = Q₂R₂, the product is Q₁(R₁R₂ᵀ)Q₂ᵀ and Q₁, Q₂ have
    orthonormal columns, so its singular values are those of the small R₁R₂ᵀ. O((N + M)·F²).
    """
    r1 = torch.linalg.qr(left.double(), mode="r").R
    r2 = torch.linalg.qr(right.double(), mode="r").R
    return torch.linalg.svdvals(r1 @ r2.T)


def sampled_singular_values(rows: Tensor, num_queries: int) -> Tensor:
    """Estimated singular values of an N×M attention matrix from S uniformly sampled rows (S, M).

    Row sampling without replacement gives E[(N/S)·A_Sᵀ A_S] = AᵀA, so the singular values of
    √(N/S)·A_S estimate the top S of A's (the rest are not seen: an estimate of the effective rank
    is biased low when A has more than S significant directions).
    """
    return torch.linalg.svdvals(rows.double()) * math.sqrt(num_queries / rows.shape[0])


def discarded_energy(pre: Tensor, valid: Tensor | None = None) -> tuple[float, float]:
    """(discarded, total) energy of the input to a truncating feature map: Σ min(x, 0)² and Σ x²
    over the valid tokens. ``pre`` (..., N, D); ``valid`` (N,) bool or None (all). The share is
    discarded / total; the two sums are returned so that callers can pool them over images."""
    if valid is not None:
        pre = pre[..., valid, :]
    pre = pre.detach().double()
    return float(pre.clamp_max(0).square().sum()), float(pre.square().sum())


def feature_max(phi: Tensor, valid: Tensor | None = None) -> Tensor:
    """Largest value of each feature over the valid tokens: φ (..., N, F) → (..., F); pooled over
    images with ``torch.maximum`` and turned into a dead-dimension share by :func:`dead_fraction`."""
    if valid is not None:
        phi = phi[..., valid, :]
    if phi.shape[-2] == 0:
        return torch.full(phi.shape[:-2] + phi.shape[-1:], float("-inf"), dtype=phi.dtype, device=phi.device)
    return phi.amax(-2)


def dead_fraction(max_per_feature: Tensor, rel_tol: float = 1e-6) -> Tensor:
    """Share of features that are never positive on the sample: (..., F) maxima → (...).

    A feature counts as dead when its largest value is ≤ ``rel_tol`` × the largest value of any
    feature of the same head (FLatten's map adds 1e-6 before its power, so exact zeros are rare).
    """
    scale = max_per_feature.amax(-1, keepdim=True).clamp_min(0)
    return (max_per_feature <= rel_tol * scale).double().mean(-1)


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 0..M−1 along the last dim with ties given their average rank (as scipy's rankdata − 1)."""
    values, order = x.sort(dim=-1)
    M = x.shape[-1]
    index = torch.arange(M, device=x.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[..., 1:] = values[..., 1:] != values[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(-1).values
    last = torch.where(ends, index, torch.full_like(index, M - 1)).flip(-1).cummin(-1).values.flip(-1)
    average = (first + last).double() / 2
    return torch.empty_like(average).scatter_(-1, order, average)


def spearman(x: Tensor, y: Tensor) -> Tensor:
    """Spearman rank correlation of x and y along the last dim, ties averaged: (..., M) → (...).

    NaN where either row is constant (no ranking to compare).
    """
    rx, ry = average_ranks(x), average_ranks(y)
    rx = rx - rx.mean(-1, keepdim=True)
    ry = ry - ry.mean(-1, keepdim=True)
    denom = (rx.square().sum(-1) * ry.square().sum(-1)).sqrt()
    return (rx * ry).sum(-1) / denom.where(denom > 0, torch.full_like(denom, float("nan")))


def pca_2d(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Project the rows (S, M) onto their first two principal components: → (S, 2) coordinates and
    the share of the variance each of the two explains (2,)."""
    centred = rows.double() - rows.double().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, vh.shape[0])
    coords = centred @ vh[:k].T
    total = s.square().sum()
    share = s[:k].square() / total if total > 0 else torch.zeros(k, dtype=s.dtype, device=s.device)
    if k < 2:  # one row or one column: pad the missing axis with zeros
        coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 2 - k)], 1)
        share = torch.cat([share, share.new_zeros(2 - k)])
    return coords, share
