"""Quadratic STILL reference with explicit (N, N) masks (tests only; docs/methods.md §7.3-§7.5).

Dimension letters: B batch, H heads, N tokens, D head dim, F feature dim, L chunk size, K top-k.
Plain and obviously correct; float64 when given float64, else float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["naive_saliency", "naive_selection", "naive_still_attention"]


def _dtype(*ts: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def naive_saliency(q: Tensor, k: Tensor, chunk_size: int, eps: float = 1e-8) -> Tensor:
    """KL(ā ‖ ā′) over the window {j : t − L < j ≤ t}, from the full (N, N) logits. Returns (B, H, N)."""
    dt = _dtype(q, k)
    q, k = q.to(dt), k.to(dt)
    N, D = q.shape[2], q.shape[3]
    t = torch.arange(N)[:, None]
    j = torch.arange(N)[None, :]
    window = (j <= t) & (j > t - chunk_size)
    eye = j == t
    logits = q @ k.transpose(-2, -1) / math.sqrt(D)
    a = torch.softmax(logits.masked_fill(~window, float("-inf")), -1)
    a_nodiag = torch.softmax(logits.masked_fill(~window | eye, float("-inf")), -1).nan_to_num(0.0)  # t=0: all 0
    n = window.sum(-1, keepdim=True).to(dt)
    a_bar = (a + eps) / (1 + n * eps)
    a_bar_nodiag = (a_nodiag + eps) / (1 + n * eps)
    terms = a_bar * torch.log(a_bar / a_bar_nodiag)
    return torch.where(window, terms, torch.zeros_like(terms)).sum(-1)


def naive_selection(scores: Tensor, chunk_size: int, topk: int) -> Tensor:
    """(B, H, N) bool: token is among the top-K scores of its chunk; only complete chunks select."""
    B, H, N = scores.shape
    selected = torch.zeros(B, H, N, dtype=torch.bool)
    for c in range(N // chunk_size):
        part = scores[:, :, c * chunk_size : (c + 1) * chunk_size]
        idx = part.topk(topk, dim=-1).indices + c * chunk_size if topk else part.new_zeros(B, H, 0, dtype=torch.long)
        selected.scatter_(2, idx, True)
    return selected


def naive_still_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    phi_q: Tensor | None,
    phi_k: Tensor | None,
    gate: Tensor | None = None,
    *,
    chunk_size: int = 64,
    topk: int = 4,
    eps: float = 1e-6,
    saliency_eps: float = 1e-8,
    key_padding_mask: Tensor | None = None,
    return_masks: bool = False,
):
    """STILL output from explicit masks.

    exact[t, j]  = j ≤ t and (chunk(j) ≥ chunk(t) − 1 or (selected j and chunk(j) ≤ chunk(t) − 2))
    linear[t, j] = chunk(j) ≤ chunk(t) − 2 and j not selected
    y = [P V + g ⊙ (A_lin V)] / [P 1 + A_lin 1 + ε],  P = exp(s − max s) on exact, A_lin = φq φkᵀ on linear.

    ``key_padding_mask`` (B, N) True = real token: each row is computed on its real tokens alone (chunk
    positions count real tokens only) and written back to their positions; padded positions give 0 and
    belong to no mask.

    Returns (B, H, N, D) in v's dtype, plus ``(exact, linear, selected)`` masks if ``return_masks``.
    """
    kw = dict(chunk_size=chunk_size, topk=topk, eps=eps, saliency_eps=saliency_eps)
    if key_padding_mask is not None:
        return _rows_without_padding(q, k, v, phi_q, phi_k, gate, key_padding_mask, return_masks, **kw)
    dt = _dtype(q, k, v, phi_q, phi_k, gate)
    out_dtype = v.dtype
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    N, D = q.shape[2], q.shape[3]
    scores = naive_saliency(q, k, chunk_size, saliency_eps)
    selected = naive_selection(scores, chunk_size, topk)  # (B, H, N)
    pos = torch.arange(N)
    chunk = pos // chunk_size
    causal = pos[None, :] <= pos[:, None]
    local = chunk[None, :] >= chunk[:, None] - 1
    old = chunk[None, :] <= chunk[:, None] - 2
    exact = causal & (local | (old & selected[:, :, None, :]))  # (B, H, N, N)
    linear = old & ~selected[:, :, None, :]

    logits = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~exact, float("-inf"))
    p = torch.exp(logits - logits.amax(-1, keepdim=True))
    num = p @ v
    den = p.sum(-1, keepdim=True)
    if phi_q is not None:
        a_lin = (phi_q.to(dt) @ phi_k.to(dt).transpose(-2, -1)) * linear
        lin = a_lin @ v
        num = num + (lin if gate is None else gate.to(dt) * lin)
        den = den + a_lin.sum(-1, keepdim=True)
    out = (num / (den + eps)).to(out_dtype)
    if return_masks:
        return out, (exact, linear, selected)
    return out


def _rows_without_padding(q, k, v, phi_q, phi_k, gate, key_padding_mask, return_masks, **kw):
    B, H, N, D = q.shape
    out = torch.zeros_like(v)
    exact = torch.zeros(B, H, N, N, dtype=torch.bool)
    linear = torch.zeros(B, H, N, N, dtype=torch.bool)
    selected = torch.zeros(B, H, N, dtype=torch.bool)
    for b in range(B):
        real = key_padding_mask[b].nonzero().flatten()
        if real.numel() == 0:
            continue
        row = [None if t is None else t[b : b + 1, :, real] for t in (q, k, v, phi_q, phi_k, gate)]
        out_b, (exact_b, linear_b, selected_b) = naive_still_attention(*row, return_masks=True, **kw)
        out[b][:, real] = out_b[0]
        grid = (slice(None), real[:, None], real[None, :])
        exact[b][grid] = exact_b[0]
        linear[b][grid] = linear_b[0]
        selected[b][:, real] = selected_b[0]
    if return_masks:
        return out, (exact, linear, selected)
    return out
