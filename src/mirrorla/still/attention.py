"""STILL hybrid attention: chunk-parallel form (training/prefill) and decoding step (METHODS.md §7.5, §7.6).

Dimension letters: B batch, H heads, N tokens, D head dim, F feature dim of φ (= 2·D_f),
L chunk size, K top-k tokens per chunk, S selected tokens in the cache.

For query t in chunk i (0-based):

    E_t = {selected tokens of chunks 0…i−2} ∪ {chunk i−1} ∪ {tokens of chunk i at positions ≤ t}
    L_i = {non-selected tokens of chunks 0…i−2}
    y_t = [Σ_{j∈E_t} e^{s_tj − m_t} v_j + g_t ⊙ φq_tᵀ KV_i] / [Σ_{j∈E_t} e^{s_tj − m_t} + φq_tᵀ z_i + ε]

with s_tj = q_t·k_j/√D, m_t = max_{j∈E_t} s_tj, KV_i = Σ_{j∈L_i} φk_j v_jᵀ, z_i = Σ_{j∈L_i} φk_j.
Selection (top-K self-saliency per chunk and head) is decided for a chunk only once it has left the
two-chunk local window ("delayed selection"), which makes prefill and decoding compute the same thing:
the chunk form's outputs and the decode loop's outputs agree (compat="clean", §7.8; the official code's
prefill/decode differences Q1-Q4 are not reproduced). A key-padding mask (Q5) removes padded tokens
from the windows, the selection, the exact branch and the linear state. Everything runs in fp32 with autocast off; the
output is cast back to v's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mirrorla.still.saliency import saliency_scores, saliency_step, select_topk

__all__ = ["StillState", "still_attention", "still_decode_step"]


@dataclass
class StillState:
    """Per-layer decoding state (§7.6). Memory: O(N·K/L) selected tokens + ≤ 2L raw tokens + O(F·D).

    Attributes:
        n_seen: tokens consumed so far.
        sel_k, sel_v: (B, H, S, D) selected tokens of chunks that left the local window.
        prev_k, prev_v, prev_phi_k, prev_score: the previous chunk, L tokens (or 0 before the second chunk).
        cur_k, cur_v, cur_phi_k, cur_score: the current chunk, 1…L tokens.
        kv, z: (B, H, F, D) and (B, H, F) linear state of non-selected old tokens; ``None`` without linear.
        sel_keep, prev_keep, cur_keep: (B, H, ·) bool, False for padded tokens.
    """

    n_seen: int
    sel_k: Tensor
    sel_v: Tensor
    prev_k: Tensor
    prev_v: Tensor
    prev_phi_k: Tensor
    prev_score: Tensor
    cur_k: Tensor
    cur_v: Tensor
    cur_phi_k: Tensor
    cur_score: Tensor
    kv: Tensor | None
    z: Tensor | None
    sel_keep: Tensor
    prev_keep: Tensor
    cur_keep: Tensor

    def tensors(self) -> list[Tensor]:
        return [t for t in vars(self).values() if isinstance(t, Tensor)]

    def nbytes(self) -> int:
        """Bytes held by the state (what a decoder keeps per layer)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def index_select(self, batch_index: Tensor) -> StillState:
        """Reorder/select batch rows (beam search)."""
        new = {}
        for name, value in vars(self).items():
            new[name] = value.index_select(0, batch_index.to(value.device)) if isinstance(value, Tensor) else value
        return StillState(**new)

    @classmethod
    def empty(cls, B: int, H: int, D: int, F: int, use_linear: bool, device, dtype) -> StillState:
        def tokens(width: int) -> Tensor:
            return torch.zeros(B, H, 0, width, device=device, dtype=dtype)

        score = torch.zeros(B, H, 0, device=device, dtype=dtype)
        keep = torch.zeros(B, H, 0, device=device, dtype=torch.bool)
        return cls(
            n_seen=0,
            sel_k=tokens(D),
            sel_v=tokens(D),
            prev_k=tokens(D),
            prev_v=tokens(D),
            prev_phi_k=tokens(F),
            prev_score=score,
            cur_k=tokens(D),
            cur_v=tokens(D),
            cur_phi_k=tokens(F),
            cur_score=score.clone(),
            kv=torch.zeros(B, H, F, D, device=device, dtype=dtype) if use_linear else None,
            z=torch.zeros(B, H, F, device=device, dtype=dtype) if use_linear else None,
            sel_keep=keep,
            prev_keep=keep.clone(),
            cur_keep=keep.clone(),
        )


def _core_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check(q: Tensor, k: Tensor, v: Tensor, phi_q: Tensor | None, phi_k: Tensor | None, gate: Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a (B, H, N, D) tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} disagree; expand GQA key/value heads to "
            "the query heads first"
        )
    if (phi_q is None) != (phi_k is None):
        raise ValueError("pass both phi_q and phi_k, or neither (no linear branch)")
    if phi_q is not None and (phi_q.shape[:3] != q.shape[:3] or phi_k.shape != phi_q.shape):
        raise ValueError(f"phi_q {tuple(phi_q.shape)} and phi_k {tuple(phi_k.shape)} must be (B, H, N, F) like q")
    if gate is not None and gate.shape != v.shape:
        raise ValueError(f"gate must have v's shape {tuple(v.shape)}, got {tuple(gate.shape)}")


def _exact_part(
    q: Tensor, keys: Tensor, values: Tensor, n_causal: int, key_keep: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Unnormalised softmax numerator and denominator with the row max subtracted.

    The last ``n_causal`` keys are the query block itself (causal mask); all earlier keys are visible
    unless ``key_keep`` (B, H, m) is False for them. A row with no visible key gives 0 and 0.
    Returns (B, H, n, D) and (B, H, n, 1).
    """
    logits = (q @ keys.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, n, m)
    n, m = logits.shape[-2:]
    hidden = None
    if n_causal > 1:
        future = torch.ones(n, n_causal, dtype=torch.bool, device=q.device).triu(1)
        hidden = torch.cat([future.new_zeros(n, m - n_causal), future], dim=1)
    if key_keep is not None:
        padded = ~key_keep[:, :, None, :]
        hidden = padded if hidden is None else hidden | padded
    if hidden is None:
        weights = torch.exp(logits - logits.amax(-1, keepdim=True))
    else:
        # finfo.min, not −inf: a fully hidden row (a padded query) stays finite and ends up 0.
        logits = logits.masked_fill(hidden, torch.finfo(logits.dtype).min)
        weights = torch.exp(logits - logits.amax(-1, keepdim=True)).masked_fill(hidden, 0.0)
    return weights @ values, weights.sum(-1, keepdim=True)


def _combine(num: Tensor, den: Tensor, phi_q: Tensor | None, kv, z, gate: Tensor | None, eps: float) -> Tensor:
    if phi_q is not None and kv is not None:
        linear = phi_q @ kv
        num = num + (linear if gate is None else gate * linear)
        den = den + phi_q @ z.unsqueeze(-1)
    return num / (den + eps)


def still_attention(
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
    return_state: bool = False,
) -> Tensor | tuple[Tensor, StillState]:
    """Chunk-parallel STILL attention (training and prefill).

    Args:
        q, k, v: (B, H, N, D) post-RoPE queries, GQA-expanded keys and values.
        phi_q, phi_k: (B, H, N, F) NP-Map features, or both ``None`` to drop the linear branch.
        gate: (B, H, N, D) output gate g = sigmoid(W_g x) on the linear numerator, or ``None`` (g = 1).
        chunk_size: L. topk: K selected tokens per old chunk and head (0 disables the sparse exact part).
        eps: added to the shared denominator. saliency_eps: smoothing of the self-saliency score.
        key_padding_mask: (B, N) bool, True = real token. Padded tokens are never attended to, selected
            or added to the linear state; outputs at padded positions are finite and meaningless.
        return_state: also return the :class:`StillState` to continue decoding from.

    Returns:
        (B, H, N, D) in v's dtype, and the state if ``return_state``. Cost O(N·(2L + N·K/L)·D + N·F·D).
    """
    _check(q, k, v, phi_q, phi_k, gate)
    if chunk_size <= 0 or not 0 <= topk <= chunk_size:
        raise ValueError(f"need chunk_size > 0 and 0 <= topk <= chunk_size, got {chunk_size}, {topk}")
    B, H, N, D = q.shape
    if N == 0:
        raise ValueError("still_attention needs at least one token")
    L = chunk_size
    out_dtype = v.dtype
    dtype = _core_dtype(q, k, v, phi_q, phi_k, gate)
    use_linear = phi_q is not None
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, N):
            raise ValueError(
                f"key_padding_mask must be a bool (B, N) = {(B, N)} tensor with True = keep, got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        keep = key_padding_mask[:, None, :].expand(B, H, N)
    else:
        keep = torch.ones(B, H, N, dtype=torch.bool, device=q.device)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if use_linear:
            phi_q, phi_k = phi_q.to(dtype), phi_k.to(dtype)
        if gate is not None:
            gate = gate.to(dtype)
        scores = saliency_scores(q, k, L, saliency_eps, key_padding_mask).to(dtype)  # (B, H, N)

        n_full = N // L
        full_scores = scores[:, :, : n_full * L].reshape(B, H, n_full, L)
        sel_idx = select_topk(full_scores, topk)  # (B, H, n_full, K), positions within each chunk

        def chunk(t: Tensor, c: int) -> Tensor:
            return t[:, :, c * L : (c + 1) * L]

        def gather_selected(t: Tensor, c: int) -> Tensor:
            idx = sel_idx[:, :, c, :, None].expand(-1, -1, -1, t.shape[-1])
            return chunk(t, c).gather(2, idx)

        selected_k: list[Tensor] = []
        selected_v: list[Tensor] = []
        selected_keep: list[Tensor] = []
        kv = q.new_zeros(B, H, phi_q.shape[-1], D) if use_linear else None
        z = q.new_zeros(B, H, phi_q.shape[-1]) if use_linear else None
        outs = []
        n_chunks = math.ceil(N / L)
        for i in range(n_chunks):
            if i >= 2:  # chunk i−2 leaves the local window: K tokens to the exact cache, the rest to the state
                old = i - 2
                selected_k.append(gather_selected(k, old))
                selected_v.append(gather_selected(v, old))
                selected_keep.append(chunk(keep, old).gather(2, sel_idx[:, :, old]))
                if use_linear:
                    linear_keep = chunk(keep, old).to(dtype).scatter(2, sel_idx[:, :, old], 0.0)
                    phi_old = chunk(phi_k, old) * linear_keep.unsqueeze(-1)
                    kv = kv + phi_old.transpose(-2, -1) @ chunk(v, old)
                    z = z + phi_old.sum(2)
            qi = chunk(q, i)
            keys = torch.cat([*selected_k, k[:, :, max(0, i - 1) * L : (i + 1) * L]], dim=2)
            values = torch.cat([*selected_v, v[:, :, max(0, i - 1) * L : (i + 1) * L]], dim=2)
            key_keep = None
            if key_padding_mask is not None:
                key_keep = torch.cat([*selected_keep, keep[:, :, max(0, i - 1) * L : (i + 1) * L]], dim=2)
            num, den = _exact_part(qi, keys, values, n_causal=qi.shape[2], key_keep=key_keep)
            phi_qi = chunk(phi_q, i) if use_linear else None
            gate_i = None if gate is None else chunk(gate, i)
            outs.append(_combine(num, den, phi_qi, kv, z, gate_i, eps))
        out = torch.cat(outs, dim=2).to(out_dtype)
        if not return_state:
            return out

        last = n_chunks - 1
        cur = slice(last * L, N)
        prev = slice(max(0, last - 1) * L, last * L)
        F = phi_q.shape[-1] if use_linear else 0
        empty_phi = q.new_zeros(B, H, 0, F)
        state = StillState(
            n_seen=N,
            sel_k=torch.cat([q.new_zeros(B, H, 0, D), *selected_k], dim=2).detach(),
            sel_v=torch.cat([q.new_zeros(B, H, 0, D), *selected_v], dim=2).detach(),
            prev_k=k[:, :, prev].detach(),
            prev_v=v[:, :, prev].detach(),
            prev_phi_k=phi_k[:, :, prev].detach() if use_linear else empty_phi,
            prev_score=scores[:, :, prev],
            cur_k=k[:, :, cur].detach(),
            cur_v=v[:, :, cur].detach(),
            cur_phi_k=phi_k[:, :, cur].detach() if use_linear else empty_phi,
            cur_score=scores[:, :, cur],
            kv=kv.detach() if use_linear else None,
            z=z.detach() if use_linear else None,
            sel_keep=torch.cat([keep.new_zeros(B, H, 0), *selected_keep], dim=2),
            prev_keep=keep[:, :, prev],
            cur_keep=keep[:, :, cur],
        )
    return out, state


def still_decode_step(
    state: StillState | None,
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    phi_q_t: Tensor | None,
    phi_k_t: Tensor | None,
    gate_t: Tensor | None = None,
    *,
    chunk_size: int = 64,
    topk: int = 4,
    eps: float = 1e-6,
    saliency_eps: float = 1e-8,
) -> tuple[Tensor, StillState]:
    """One decoding step with delayed selection (§7.6).

    Args:
        state: from :func:`still_attention` (``return_state=True``) or an earlier step; ``None`` = empty.
        q_t, k_t, v_t: (B, H, D) the new token (a real token; padding comes only from a prefill).
        phi_q_t, phi_k_t: (B, H, F) or both ``None`` (no linear).
        gate_t: (B, H, D) or ``None``.

    Returns:
        (o_t (B, H, D) in v_t's dtype, new state). The state is updated functionally (new tensors).
    """
    if q_t.dim() != 3 or k_t.shape != q_t.shape or v_t.shape[:2] != q_t.shape[:2]:
        raise ValueError(
            f"decode step expects q_t, k_t (B, H, D) and v_t (B, H, D); got {tuple(q_t.shape)}, "
            f"{tuple(k_t.shape)}, {tuple(v_t.shape)}"
        )
    use_linear = phi_q_t is not None
    if (phi_k_t is None) == use_linear:
        raise ValueError("pass both phi_q_t and phi_k_t, or neither (no linear branch)")
    L = chunk_size
    B, H, D = q_t.shape
    out_dtype = v_t.dtype
    dtype = _core_dtype(q_t, k_t, v_t, phi_q_t, phi_k_t, gate_t)
    with torch.autocast(device_type=q_t.device.type, enabled=False):
        if state is None:
            F = phi_q_t.shape[-1] if use_linear else 0
            state = StillState.empty(B, H, D, F, use_linear, q_t.device, dtype)
        if use_linear != (state.kv is not None):
            raise ValueError("the state was built with a different use_linear setting than this step")
        s = StillState(**vars(state))

        if s.cur_k.shape[2] == L:  # the current chunk is full: roll; the previous chunk leaves the window
            if s.prev_k.shape[2] == L:
                idx = select_topk(s.prev_score, topk)  # (B, H, K)
                s.sel_k = torch.cat([s.sel_k, s.prev_k.gather(2, idx[..., None].expand(-1, -1, -1, D))], dim=2)
                s.sel_v = torch.cat([s.sel_v, s.prev_v.gather(2, idx[..., None].expand(-1, -1, -1, D))], dim=2)
                s.sel_keep = torch.cat([s.sel_keep, s.prev_keep.gather(2, idx)], dim=2)
                if use_linear:
                    linear_keep = s.prev_keep.to(dtype).scatter(2, idx, 0.0)
                    phi_old = s.prev_phi_k * linear_keep.unsqueeze(-1)
                    s.kv = s.kv + phi_old.transpose(-2, -1) @ s.prev_v
                    s.z = s.z + phi_old.sum(2)
            s.prev_k, s.prev_v, s.prev_phi_k, s.prev_score = s.cur_k, s.cur_v, s.cur_phi_k, s.cur_score
            s.prev_keep = s.cur_keep
            s.cur_k, s.cur_v = s.cur_k[:, :, :0], s.cur_v[:, :, :0]
            s.cur_phi_k, s.cur_score, s.cur_keep = s.cur_phi_k[:, :, :0], s.cur_score[:, :, :0], s.cur_keep[:, :, :0]

        q, k, v = q_t.to(dtype), k_t.to(dtype), v_t.to(dtype)
        s.cur_k = torch.cat([s.cur_k, k.unsqueeze(2)], dim=2)
        s.cur_v = torch.cat([s.cur_v, v.unsqueeze(2)], dim=2)
        if use_linear:
            s.cur_phi_k = torch.cat([s.cur_phi_k, phi_k_t.to(dtype).unsqueeze(2)], dim=2)
        s.cur_keep = torch.cat([s.cur_keep, s.cur_keep.new_ones(B, H, 1)], dim=2)
        window = torch.cat([s.prev_k, s.cur_k], dim=2)[:, :, -L:]
        key_keep = torch.cat([s.sel_keep, s.prev_keep, s.cur_keep], dim=2)
        has_padding = not bool(key_keep.all())  # padded tokens come only from a padded prefill
        window_keep = key_keep[:, :, -window.shape[2] :] if has_padding else None
        score = saliency_step(q, window, saliency_eps, window_keep).to(dtype)
        s.cur_score = torch.cat([s.cur_score, score.unsqueeze(2)], dim=2)
        s.n_seen = state.n_seen + 1

        keys = torch.cat([s.sel_k, s.prev_k, s.cur_k], dim=2)
        values = torch.cat([s.sel_v, s.prev_v, s.cur_v], dim=2)
        num, den = _exact_part(q.unsqueeze(2), keys, values, n_causal=1, key_keep=key_keep if has_padding else None)
        o = _combine(
            num,
            den,
            phi_q_t.to(dtype).unsqueeze(2) if use_linear else None,
            s.kv,
            s.z,
            None if gate_t is None else gate_t.to(dtype).unsqueeze(2),
            eps,
        )
    return o.squeeze(2).to(out_dtype), s
