"""Causal normalised linear attention with sum-normalised fp32 states, chunked or recurrent."""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_qkv
from mirrorla.ops.linear_attention.common import check_eps, check_state, core_dtype_of
from mirrorla.ops.linear_attention.recurrent import step

__all__ = ["causal_linear_attention"]


def causal_linear_attention(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    *,
    initial_state: tuple[Tensor, Tensor] | None = None,
    return_state: bool = False,
    chunk_size: int = 64,
    mode: str = "chunk",
    eps: float = 1e-6,
    normalize: bool = True,
    core_dtype: str = "float32",
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Causal linear attention ``O_t = φq_t·S_t / (φq_t·z_t + ε)`` with sum-normalised fp32 states.

    ``S_t = Σ_{j≤t} φk_j v_jᵀ`` (B, H, F, D) and ``z_t = Σ_{j≤t} φk_j`` (B, H, F).

    Args:
        phi_q, phi_k: (B, H, N, F). v: (B, H, N, D).
        initial_state: ``(S, z)`` carried over from an earlier call (prefill → decode).
        return_state: also return the final ``(S, z)``.
        chunk_size: chunk length L for ``mode="chunk"``; cost O(N·L·F + N·F·D).
        mode: ``"chunk"`` (default; a loop over chunks, intra-chunk masked matmul plus the state of
            earlier chunks) or ``"recurrent"`` (token by token, the decoding form). The quadratic
            reference lives in :mod:`mirrorla.ops.linear_attention.naive`.
        normalize: ``False`` returns the numerator only.

    Returns:
        O (B, H, N, D) in v's dtype, and ``(S, z)`` in the core dtype if ``return_state``.
    """
    check_qkv(phi_q, phi_k, v, same_length=True)
    check_eps(eps)
    if mode not in ("chunk", "recurrent"):
        raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, H, N, F = phi_q.shape
    D = v.shape[-1]
    out_dtype = v.dtype
    dtype = core_dtype_of(core_dtype, phi_q, phi_k, v)
    with torch.autocast(device_type=v.device.type, enabled=False):
        q, k, vv = phi_q.to(dtype), phi_k.to(dtype), v.to(dtype)
        if initial_state is None:
            S = q.new_zeros(B, H, F, D)
            z = q.new_zeros(B, H, F)
        else:
            S, z = check_state(initial_state, B, H, F, D)
            S, z = S.to(dtype), z.to(dtype)

        if mode == "recurrent":
            outs = []
            for t in range(N):
                o, (S, z) = step(S, z, q[:, :, t], k[:, :, t], vv[:, :, t], eps, normalize)
                outs.append(o)
            out = torch.stack(outs, dim=2) if outs else vv.new_zeros(B, H, 0, D)
        else:
            outs = []
            for start in range(0, N, chunk_size):
                qc = q[:, :, start : start + chunk_size]
                kc = k[:, :, start : start + chunk_size]
                vc = vv[:, :, start : start + chunk_size]
                # Intra-chunk scores, lower triangle including the diagonal.
                a = (qc @ kc.transpose(-2, -1)).tril()  # (B, H, L, L)
                num = qc @ S + a @ vc
                if normalize:
                    den = qc @ z.unsqueeze(-1) + a.sum(-1, keepdim=True) + eps
                    outs.append(num / den)
                else:
                    outs.append(num)
                S = S + kc.transpose(-2, -1) @ vc
                z = z + kc.sum(-2)
            out = torch.cat(outs, dim=2) if outs else vv.new_zeros(B, H, 0, D)
        out = out.to(out_dtype)
    if return_state:
        return out, (S, z)
    return out
