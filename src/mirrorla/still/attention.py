"""STILL hybrid attention: chunk-parallel form (training/prefill) and decoding step (docs/methods.md §7.5, §7.6).

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
prefill/decode differences Q1-Q4 are not reproduced).

Padding (Q5) is removed, not masked: a row's real tokens are the sequence, and its chunk grid and
saliency windows start at its first real token. So a padded row gives, at its real positions, what the
row gives alone, for any amount of padding; rows of one batch may sit at different chunk phases, and
the decoding state keeps a per-row length. Everything runs in fp32 with autocast off; the output is
cast back to v's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mirrorla.still.saliency import saliency_scores, saliency_step, select_topk

__all__ = ["StillState", "still_attention", "still_decode_step"]


def routed_chunks(length: Tensor, chunk_size: int) -> Tensor:
    """Chunks that have left the two-chunk local window after ``length`` real tokens: max(0, ⌈n/L⌉ − 2)."""
    return (torch.div(length + chunk_size - 1, chunk_size, rounding_mode="floor") - 2).clamp_min(0)


def window_valid(length: Tensor, chunk_size: int) -> Tensor:
    """(B, 2L) bool: which window slots of :class:`StillState` hold a token after ``length`` (B,) real tokens.

    Slots [0, L) are the previous chunk (all filled once there is one), slots [L, 2L) the current chunk
    (its first (n − 1) mod L + 1 slots).
    """
    L = chunk_size
    slot = torch.arange(2 * L, device=length.device)
    current_chunk = torch.div((length - 1).clamp_min(0), L, rounding_mode="floor")
    fill = length - current_chunk * L  # 0 for an empty row, else 1…L
    previous = (length > L)[:, None] & (slot < L)
    current = (slot >= L) & (slot - L < fill[:, None])
    return previous | current


@dataclass
class StillState:
    """Per-layer decoding state (§7.6). Memory: O(N·K/L) selected tokens + 2L raw tokens + O(F·D) per row.

    Rows may have consumed different numbers of real tokens (a left-padded batch): row b's chunk grid
    starts at its first real token, and which slots are filled follows from ``length[b]`` alone, so
    rows at different chunk phases share one set of tensors.

    Attributes:
        n_seen: tokens consumed per row, padding included (the cache length a model sees).
        length: (B,) int64 real tokens consumed per row.
        sel_k, sel_v: (B, H, S, D) selected tokens of the chunks that left the window; row b's first
            ``topk · routed_chunks(length[b])`` slots are filled.
        win_k, win_v, win_phi_k, win_score: (B, H, 2L, ·) the local window by position within the chunk:
            slots [0, L) the previous chunk, slots [L, 2L) the current one (see :func:`window_valid`).
            ``win_phi_k`` has F = 0 features without the linear branch.
        kv, z: (B, H, F, D) and (B, H, F) linear state of the non-selected routed tokens; ``None``
            without the linear branch.
    """

    n_seen: int
    length: Tensor
    sel_k: Tensor
    sel_v: Tensor
    win_k: Tensor
    win_v: Tensor
    win_phi_k: Tensor
    win_score: Tensor
    kv: Tensor | None
    z: Tensor | None

    @property
    def chunk_size(self) -> int:
        return self.win_k.shape[2] // 2

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
    def empty(cls, B: int, H: int, D: int, F: int, L: int, use_linear: bool, device, dtype) -> StillState:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, device=device, dtype=dtype)

        return cls(
            n_seen=0,
            length=torch.zeros(B, dtype=torch.long, device=device),
            sel_k=zeros(B, H, 0, D),
            sel_v=zeros(B, H, 0, D),
            win_k=zeros(B, H, 2 * L, D),
            win_v=zeros(B, H, 2 * L, D),
            win_phi_k=zeros(B, H, 2 * L, F if use_linear else 0),
            win_score=zeros(B, H, 2 * L),
            kv=zeros(B, H, F, D) if use_linear else None,
            z=zeros(B, H, F) if use_linear else None,
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
        # finfo.min, not −inf: a fully hidden row stays finite and ends up 0.
        logits = logits.masked_fill(hidden, torch.finfo(logits.dtype).min)
        weights = torch.exp(logits - logits.amax(-1, keepdim=True)).masked_fill(hidden, 0.0)
    return weights @ values, weights.sum(-1, keepdim=True)


def _combine(num: Tensor, den: Tensor, phi_q: Tensor | None, kv, z, gate: Tensor | None, eps: float) -> Tensor:
    if phi_q is not None and kv is not None:
        linear = phi_q @ kv
        num = num + (linear if gate is None else gate * linear)
        den = den + phi_q @ z.unsqueeze(-1)
    return num / (den + eps)


def _gather_tokens(t: Tensor, index: Tensor) -> Tensor:
    """t (B, H, N, C) at token positions ``index`` (B, M) of each row → (B, H, M, C)."""
    return t.gather(2, index[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[-1]))


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
        key_padding_mask: (B, N) bool, True = real token. Padded tokens are removed from the row (any
            pattern: left, right, holes): the real tokens keep their order and form the row's sequence,
            with the chunk grid starting at the first of them, so every real output equals that of the
            row without its padding. Outputs at padded positions are 0.
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
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, N):
            raise ValueError(
                f"key_padding_mask must be a bool (B, N) = {(B, N)} tensor with True = keep, got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        if bool(key_padding_mask.all()):
            key_padding_mask = None
    kw = dict(chunk_size=chunk_size, topk=topk, eps=eps, saliency_eps=saliency_eps, return_state=return_state)
    if key_padding_mask is None:
        return _chunk_form(q, k, v, phi_q, phi_k, gate, lengths=None, **kw)

    # Move each row's real tokens to the front, in order. The padding then trails every real token,
    # and causality keeps trailing tokens out of every real output: routing only uses chunks that lie
    # wholly before the query's chunk.
    order = torch.sort((~key_padding_mask).to(torch.uint8), dim=1, stable=True).indices  # (B, N), real first
    lengths = key_padding_mask.sum(1)
    tensors = [None if t is None else _gather_tokens(t, order) for t in (q, k, v, phi_q, phi_k, gate)]
    result = _chunk_form(*tensors, lengths=lengths, **kw)
    out_front, state = result if return_state else (result, None)
    out = torch.zeros_like(out_front).scatter(2, order[:, None, :, None].expand_as(out_front), out_front)
    out = out * key_padding_mask[:, None, :, None].to(out.dtype)
    return (out, state) if return_state else out


def _chunk_form(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    phi_q: Tensor | None,
    phi_k: Tensor | None,
    gate: Tensor | None,
    *,
    lengths: Tensor | None,
    chunk_size: int,
    topk: int,
    eps: float,
    saliency_eps: float,
    return_state: bool,
) -> Tensor | tuple[Tensor, StillState]:
    """The chunk loop on rows whose real tokens are a prefix: the first ``lengths[b]`` (all if ``None``).

    Tokens after a row's prefix only change outputs at their own positions; the state is that of each
    row's prefix.
    """
    B, H, N, D = q.shape
    L = chunk_size
    out_dtype = v.dtype
    dtype = _core_dtype(q, k, v, phi_q, phi_k, gate)
    use_linear = phi_q is not None
    n_chunks = math.ceil(N / L)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if use_linear:
            phi_q, phi_k = phi_q.to(dtype), phi_k.to(dtype)
        if gate is not None:
            gate = gate.to(dtype)
        scores = saliency_scores(q, k, L, saliency_eps).to(dtype)  # (B, H, N)

        n_full = N // L
        full_scores = scores[:, :, : n_full * L].reshape(B, H, n_full, L)
        sel_idx = select_topk(full_scores, topk)  # (B, H, n_full, K), positions within each chunk

        def chunk(t: Tensor, c: int) -> Tensor:
            return t[:, :, c * L : (c + 1) * L]

        def gather_selected(t: Tensor, c: int) -> Tensor:
            idx = sel_idx[:, :, c, :, None].expand(-1, -1, -1, t.shape[-1])
            return chunk(t, c).gather(2, idx)

        # Rows of different lengths have routed different numbers of chunks when their prefix ends.
        row_routed = None if lengths is None or not return_state else routed_chunks(lengths, L)
        selected_k: list[Tensor] = []
        selected_v: list[Tensor] = []
        kv = q.new_zeros(B, H, phi_q.shape[-1], D) if use_linear else None
        z = q.new_zeros(B, H, phi_q.shape[-1]) if use_linear else None
        row_kv, row_z = kv, z
        outs = []
        for i in range(n_chunks):
            if i >= 2:  # chunk i−2 leaves the local window: K tokens to the exact cache, the rest to the state
                old = i - 2
                selected_k.append(gather_selected(k, old))
                selected_v.append(gather_selected(v, old))
                if use_linear:
                    linear_keep = torch.ones_like(chunk(scores, old)).scatter(2, sel_idx[:, :, old], 0.0)
                    phi_old = chunk(phi_k, old) * linear_keep.unsqueeze(-1)
                    kv_old, z_old = phi_old.transpose(-2, -1) @ chunk(v, old), phi_old.sum(2)
                    kv, z = kv + kv_old, z + z_old
                    if row_routed is not None:
                        in_row = (old < row_routed).to(dtype)[:, None, None]
                        row_kv, row_z = row_kv + kv_old * in_row[..., None], row_z + z_old * in_row
            qi = chunk(q, i)
            keys = torch.cat([*selected_k, k[:, :, max(0, i - 1) * L : (i + 1) * L]], dim=2)
            values = torch.cat([*selected_v, v[:, :, max(0, i - 1) * L : (i + 1) * L]], dim=2)
            num, den = _exact_part(qi, keys, values, n_causal=qi.shape[2])
            phi_qi = chunk(phi_q, i) if use_linear else None
            gate_i = None if gate is None else chunk(gate, i)
            outs.append(_combine(num, den, phi_qi, kv, z, gate_i, eps))
        out = torch.cat(outs, dim=2).to(out_dtype)
        if not return_state:
            return out

        if row_routed is None:
            lengths = torch.full((B,), N, dtype=torch.long, device=q.device)
            row_kv, row_z = kv, z
        n_selected = topk * int(routed_chunks(lengths, L).max())
        # Window slots: the previous and the current chunk of each row's prefix, by position in the chunk.
        current_chunk = torch.div((lengths - 1).clamp_min(0), L, rounding_mode="floor")
        slots = torch.arange(2 * L, device=q.device)
        positions = ((current_chunk - 1) * L)[:, None] + slots  # (B, 2L); unfilled slots are never read
        positions = positions.clamp(0, N - 1)
        F = phi_q.shape[-1] if use_linear else 0
        state = StillState(
            n_seen=N,
            length=lengths.to(torch.long),
            sel_k=torch.cat([q.new_zeros(B, H, 0, D), *selected_k], dim=2)[:, :, :n_selected].detach(),
            sel_v=torch.cat([q.new_zeros(B, H, 0, D), *selected_v], dim=2)[:, :, :n_selected].detach(),
            win_k=_gather_tokens(k, positions).detach(),
            win_v=_gather_tokens(v, positions).detach(),
            win_phi_k=_gather_tokens(phi_k, positions).detach() if use_linear else q.new_zeros(B, H, 2 * L, F),
            win_score=scores.gather(2, positions[:, None, :].expand(B, H, -1)),
            kv=row_kv.detach() if use_linear else None,
            z=row_z.detach() if use_linear else None,
        )
    return out, state


def _append_selected(sel: Tensor, new: Tensor, offset: Tensor, write: Tensor) -> Tensor:
    """Write ``new`` (B, H, K, C) at slots [offset_b, offset_b + K) of the rows where ``write`` (B,) is True.

    ``sel`` (B, H, S, C) grows to the largest filled count; rows that do not write keep their slots.
    """
    K = new.shape[2]
    needed = int((offset + K * write.long()).max())
    if needed > sel.shape[2]:
        sel = torch.nn.functional.pad(sel, (0, 0, 0, needed - sel.shape[2]))
    relative = torch.arange(sel.shape[2], device=sel.device)[None, :] - offset[:, None]  # (B, S)
    target = write[:, None] & (relative >= 0) & (relative < K)
    moved = _gather_tokens(new, relative.clamp(0, K - 1))  # (B, H, S, C)
    return torch.where(target[:, None, :, None], moved, sel)


def _roll_window(s: StillState, roll: Tensor, topk: int, use_linear: bool) -> None:
    """Rows whose current chunk is full: route the previous chunk (if any) and make the current one previous."""
    L = s.chunk_size
    B, H, _, D = s.win_k.shape
    route = roll & (s.length >= 2 * L)  # the previous chunk exists and leaves the window
    if topk > 0 and bool(route.any()):
        idx = select_topk(s.win_score[:, :, :L], topk)  # (B, H, K)
        at_idx = idx[..., None].expand(-1, -1, -1, D)
        offset = topk * routed_chunks(s.length, L)
        s.sel_k = _append_selected(s.sel_k, s.win_k[:, :, :L].gather(2, at_idx), offset, route)
        s.sel_v = _append_selected(s.sel_v, s.win_v[:, :, :L].gather(2, at_idx), offset, route)
    else:
        idx = None
    if use_linear and bool(route.any()):
        linear_keep = route[:, None, None].to(s.kv.dtype).expand(B, H, L)
        if idx is not None:
            linear_keep = linear_keep.scatter(2, idx, 0.0)
        phi_old = s.win_phi_k[:, :, :L] * linear_keep.unsqueeze(-1)
        s.kv = s.kv + phi_old.transpose(-2, -1) @ s.win_v[:, :, :L]
        s.z = s.z + phi_old.sum(2)
    # Rolling a 2L buffer by L swaps its halves: the current chunk becomes the previous one; the old
    # previous chunk lands in the current half, where no slot counts as filled until it is overwritten.
    shift = roll[:, None, None, None]
    s.win_k = torch.where(shift, s.win_k.roll(-L, dims=2), s.win_k)
    s.win_v = torch.where(shift, s.win_v.roll(-L, dims=2), s.win_v)
    s.win_phi_k = torch.where(shift, s.win_phi_k.roll(-L, dims=2), s.win_phi_k)
    s.win_score = torch.where(roll[:, None, None], s.win_score.roll(-L, dims=2), s.win_score)


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
    """One decoding step with delayed selection (§7.6); rows may be at different chunk phases.

    Args:
        state: from :func:`still_attention` (``return_state=True``) or an earlier step; ``None`` = empty.
        q_t, k_t, v_t: (B, H, D) the new token of every row (a real token; padding comes only from a prefill).
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
            state = StillState.empty(B, H, D, F, L, use_linear, q_t.device, dtype)
        if use_linear != (state.kv is not None):
            raise ValueError("the state was built with a different use_linear setting than this step")
        if state.chunk_size != L:
            raise ValueError(f"the state was built with chunk_size={state.chunk_size}; this step has chunk_size={L}")
        s = StillState(**vars(state))

        position = s.length  # (B,) of the new token, counted in real tokens
        in_chunk = position % L
        roll = (position > 0) & (in_chunk == 0)  # the current chunk is full: the window moves on
        if bool(roll.any()):
            _roll_window(s, roll, topk, use_linear)

        slot = L + in_chunk  # (B,)
        q, k, v = q_t.to(dtype), k_t.to(dtype), v_t.to(dtype)
        at_slot = slot[:, None, None, None].expand(B, H, 1, D)
        s.win_k = s.win_k.scatter(2, at_slot, k.unsqueeze(2))
        s.win_v = s.win_v.scatter(2, at_slot, v.unsqueeze(2))
        if use_linear:
            at_slot_f = slot[:, None, None, None].expand(B, H, 1, phi_k_t.shape[-1])
            s.win_phi_k = s.win_phi_k.scatter(2, at_slot_f, phi_k_t.to(dtype).unsqueeze(2))
        s.length = position + 1
        s.n_seen = state.n_seen + 1

        filled = window_valid(s.length, L)  # (B, 2L)
        slots = torch.arange(2 * L, device=q.device)
        # Saliency window: the last L positions up to the new token, i.e. the current chunk so far plus
        # the previous chunk's slots after the new token's position in the chunk.
        saliency_window = filled & ((slots >= L) | (slots > in_chunk[:, None]))
        is_self = slots == slot[:, None]
        score = saliency_step(q, s.win_k, saliency_window[:, None], is_self[:, None], saliency_eps).to(dtype)
        s.win_score = s.win_score.scatter(2, slot[:, None, None].expand(B, H, 1), score.unsqueeze(2))

        sel_filled = torch.arange(s.sel_k.shape[2], device=q.device) < (topk * routed_chunks(s.length, L))[:, None]
        keys = torch.cat([s.sel_k, s.win_k], dim=2)
        values = torch.cat([s.sel_v, s.win_v], dim=2)
        key_keep = torch.cat([sel_filled, filled], dim=1)[:, None, :].expand(B, H, -1)
        num, den = _exact_part(q.unsqueeze(2), keys, values, n_causal=1, key_keep=key_keep)
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
