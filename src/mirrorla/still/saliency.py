"""Self-saliency score and per-chunk top-k selection of STILL (docs/methods.md §7.3, §7.4).

Dimension letters: B batch, H heads, N tokens, D head dim, L chunk size (= window length l), K top-k.

For token t with local window W_t = the min(t+1, L) most recent positions up to and including t:

    a   = softmax_{j∈W_t}(q_t·k_j/√D)                      (self included)
    a′  = the same softmax with the self logit at −∞         (0 everywhere when W_t = {t})
    ā   = (a + ε)/(1 + |W_t|ε),   ā′ = (a′ + ε)/(1 + |W_t|ε)
    Score_t = Σ_{j∈W_t} ā_j · log(ā_j / ā′_j)               = KL(ā ‖ ā′)

Padding never reaches these functions: :func:`~mirrorla.still.attention.still_attention` removes it
first, so windows count real tokens only. This is the ``compat="clean"`` definition (§7.8 Q2, Q3): the same
formula in prefill and decode, logits divided by √D in both, the self slot of ā′ equal to ε/(1+|W|ε)
and no 1/l terms. Scores only rank tokens (top-k is not differentiable), so they are computed without
gradient, in fp32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["saliency_scores", "saliency_step", "select_topk", "kl_saliency"]


def kl_saliency(logits: Tensor, valid: Tensor, is_self: Tensor, eps: float) -> Tensor:
    """Score from window logits.

    Args:
        logits: (..., W) scaled scores q·k/√D over window slots.
        valid: (..., W) bool, slot belongs to the window.
        is_self: (..., W) bool, at most one True per row: the query's own key.
        eps: smoothing ε.

    Returns:
        (...) KL(ā ‖ ā′).
    """
    neg = torch.finfo(logits.dtype).min
    a = logits.masked_fill(~valid, neg).softmax(-1) * valid
    others = valid & ~is_self
    has_others = others.any(-1, keepdim=True)
    a_nodiag = logits.masked_fill(~others, neg).softmax(-1) * others * has_others
    # (1 + |W|ε) cancels in the ratio; it stays in the weight ā.
    n = valid.sum(-1, keepdim=True).to(logits.dtype)
    a_bar = (a + eps) / (1 + n * eps)
    log_ratio = torch.log(a + eps) - torch.log(a_nodiag + eps)
    return (a_bar * log_ratio * valid).sum(-1)


@torch.no_grad()
def saliency_scores(q: Tensor, k: Tensor, chunk_size: int, eps: float = 1e-8) -> Tensor:
    """Self-saliency of every token, computed chunk by chunk over a (L, 2L) band (cost O(N·L·D)).

    Args:
        q, k: (B, H, N, D) post-RoPE queries and (GQA-expanded) keys.
        chunk_size: L, also the window length.

    Returns:
        (B, H, N) fp32 scores (float64 inputs stay float64).
    """
    B, H, N, D = q.shape
    L = chunk_size
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    n_chunks = max(1, math.ceil(N / L))
    pad = n_chunks * L - N
    with torch.autocast(device_type=q.device.type, enabled=False):
        qp = torch.nn.functional.pad(q.to(dtype), (0, 0, 0, pad)).view(B, H, n_chunks, L, D)
        kp = torch.nn.functional.pad(k.to(dtype), (0, 0, 0, pad)).view(B, H, n_chunks, L, D)
        k_prev = torch.cat([torch.zeros_like(kp[:, :, :1]), kp[:, :, :-1]], dim=2)
        keys = torch.cat([k_prev, kp], dim=3)  # (B, H, C, 2L, D)
        logits = (qp @ keys.transpose(-2, -1)) / math.sqrt(D)  # (B, H, C, L, 2L)
        device = q.device
        chunk = torch.arange(n_chunks, device=device)[:, None, None]
        q_pos = chunk * L + torch.arange(L, device=device)[None, :, None]  # (C, L, 1)
        k_pos = (chunk - 1) * L + torch.arange(2 * L, device=device)[None, None, :]  # (C, 1, 2L)
        valid = (k_pos <= q_pos) & (k_pos > q_pos - L) & (k_pos >= 0)
        is_self = k_pos == q_pos
        scores = kl_saliency(logits, valid, is_self, eps)  # (B, H, C, L)
    return scores.reshape(B, H, n_chunks * L)[:, :, :N]


@torch.no_grad()
def saliency_step(q_t: Tensor, k_window: Tensor, window: Tensor, is_self: Tensor, eps: float = 1e-8) -> Tensor:
    """Score of one new token per row from the keys of its window (decoding).

    Args:
        q_t: (B, H, D) the new query (a real token).
        k_window: (B, H, W, D) key slots, in any order.
        window: (B, H, W) bool (or broadcastable), the slots of the token's window: the last ≤ L
            positions up to and including the token.
        is_self: (B, H, W) bool (or broadcastable), exactly one True per row: the token's own key.

    Returns:
        (B, H) fp32 scores.
    """
    D = q_t.shape[-1]
    dtype = torch.float64 if q_t.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=q_t.device.type, enabled=False):
        logits = (k_window.to(dtype) @ q_t.to(dtype).unsqueeze(-1)).squeeze(-1) / math.sqrt(D)  # (B, H, W)
        return kl_saliency(logits, window.expand_as(logits), is_self.expand_as(logits), eps)


def select_topk(scores: Tensor, topk: int) -> Tensor:
    """Indices of the ``topk`` largest scores along the last axis, sorted by position.

    Args:
        scores: (..., L) scores of one or more complete chunks.

    Returns:
        (..., topk) int64 positions within the chunk, ascending (``torch.topk`` picks the largest, §7.4).
    """
    if topk == 0:
        return scores.new_zeros(*scores.shape[:-1], 0, dtype=torch.long)
    return scores.topk(topk, dim=-1).indices.sort(dim=-1).values
