"""Normalised linear attention: non-causal (kv-first) and causal (chunked / recurrent).

Dimension letters: B batch, H heads, N query tokens, M key tokens, F feature dim of the feature
map (m in the spec), D value head dim.

Every function here takes *already mapped* features φq (B, H, N, F) and φk (B, H, M, F) whose
pairwise scores φq·φk are non-negative, and values v (B, H, M, D). See METHODS.md §1.

Precision policy (METHODS.md §1.1): autocast is disabled inside, φq, φk and v are upcast to fp32
(``core_dtype``), states and the denominator are fp32, and the output is cast back to v's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_key_padding_mask, check_positive, check_qkv

__all__ = [
    "linear_attention",
    "causal_linear_attention",
    "recurrent_step",
    "NORMALIZERS",
]

NORMALIZERS = ("mean", "sum")
_CORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
_EPS_WHY = "it keeps the denominator φq·z + eps away from 0; the default is 1e-6"


def _check_eps(eps: float) -> float:
    return check_positive("eps", eps, _EPS_WHY)


def _core_dtype(core_dtype: str, *tensors: Tensor) -> torch.dtype:
    if core_dtype not in _CORE_DTYPES:
        raise ValueError(f"core_dtype must be one of {sorted(_CORE_DTYPES)}, got {core_dtype!r}")
    # float64 inputs stay float64 (gradcheck); everything else runs in the requested core dtype.
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return _CORE_DTYPES[core_dtype]


def linear_attention(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    normalize: bool = True,
    normalizer: str = "mean",
    eps: float = 1e-6,
    min_denominator: float | None = None,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = 64,
    core_dtype: str = "float32",
) -> Tensor:
    """Normalised linear attention ``O_i = φq_i·S / (φq_i·z + ε)``, computed kv-first.

    Args:
        phi_q: (B, H, N, F) mapped queries. phi_k: (B, H, M, F) mapped keys. v: (B, H, M, D).
        causal: use the causal form (:func:`causal_linear_attention`, chunked, sum normaliser).
        normalize: divide by the denominator; ``False`` returns the numerator ``φq·S̄`` alone.
        normalizer: ``"mean"`` (default; S and z divided by the number of keys, so fp16/bf16 inputs
            cannot overflow the state) or ``"sum"``. Algebraically ``mean`` with ε equals ``sum``
            with ε·M.
        eps: added to the denominator; a finite number > 0.
        min_denominator: if set (a finite number > 0), ``O = φq·S / max(φq·z, min_denominator)``
            with the sum normaliser and no ε (L²ViT uses 100).
        key_padding_mask: (B, M) bool, ``True`` = keep. Masked keys contribute nothing; the mean
            form divides by each sample's number of kept keys.
        chunk_size: chunk length of the causal form.
        core_dtype: ``"float32"`` (default) or ``"bfloat16"``; float64 inputs stay float64.

    Returns:
        (B, H, N, D) in v's dtype. Cost O(B·H·(N+M)·F·D); no (N, M) tensor is ever built.
        Empty inputs are fine: B = 0 or N = 0 give an empty output, and M = 0 (no keys) gives 0.
    """
    check_qkv(phi_q, phi_k, v, same_length=causal)
    _check_eps(eps)
    if min_denominator is not None:
        check_positive("min_denominator", min_denominator, "it bounds the denominator from below; L²ViT uses 100")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    if causal:
        if key_padding_mask is not None:
            raise ValueError(
                "key_padding_mask is not supported with causal=True; left-pad the batch and drop "
                "padded rows yourself, or run samples separately"
            )
        if min_denominator is not None:
            raise ValueError("min_denominator is only defined for the non-causal form")
        return causal_linear_attention(
            phi_q, phi_k, v, chunk_size=chunk_size, eps=eps, normalize=normalize, core_dtype=core_dtype
        )

    B, H, M, _ = phi_k.shape
    out_dtype = v.dtype
    dtype = _core_dtype(core_dtype, phi_q, phi_k, v)
    with torch.autocast(device_type=v.device.type, enabled=False):
        q = phi_q.to(dtype)
        k = phi_k.to(dtype)
        vv = v.to(dtype)
        if key_padding_mask is not None:
            check_key_padding_mask(key_padding_mask, B, M)
            keep = key_padding_mask.to(dtype)[:, None, :, None]  # (B, 1, M, 1)
            k = k * keep
            n_keys = key_padding_mask.sum(-1).clamp_min(1).to(dtype)[:, None, None, None]  # (B,1,1,1)
        else:
            n_keys = max(M, 1)  # no keys: S = z = 0 (not 0/0), so the output is 0

        if min_denominator is not None:
            kv = k.transpose(-2, -1) @ vv  # (B, H, F, D)
            num = q @ kv
            if not normalize:
                return num.to(out_dtype)
            den = (q * k.sum(-2, keepdim=True)).sum(-1, keepdim=True)
            return (num / den.clamp_min(min_denominator)).to(out_dtype)

        if normalizer == "mean":
            # S̄ = φKᵀV / M and z̄ = mean φK: bounded by max|φk|·max|v|, whatever M is.
            kv = (k.transpose(-2, -1) @ vv) / n_keys
            z = k.sum(-2, keepdim=True) / n_keys  # (B, H, 1, F)
        else:
            kv = k.transpose(-2, -1) @ vv
            z = k.sum(-2, keepdim=True)
        num = q @ kv  # (B, H, N, D)
        if not normalize:
            return num.to(out_dtype)
        den = (q * z).sum(-1, keepdim=True) + eps  # (B, H, N, 1)
        return (num / den).to(out_dtype)


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
            reference lives in :mod:`mirrorla.ops.naive`.
        normalize: ``False`` returns the numerator only.

    Returns:
        O (B, H, N, D) in v's dtype, and ``(S, z)`` in the core dtype if ``return_state``.
    """
    check_qkv(phi_q, phi_k, v, same_length=True)
    _check_eps(eps)
    if mode not in ("chunk", "recurrent"):
        raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, H, N, F = phi_q.shape
    D = v.shape[-1]
    out_dtype = v.dtype
    dtype = _core_dtype(core_dtype, phi_q, phi_k, v)
    with torch.autocast(device_type=v.device.type, enabled=False):
        q, k, vv = phi_q.to(dtype), phi_k.to(dtype), v.to(dtype)
        if initial_state is None:
            S = q.new_zeros(B, H, F, D)
            z = q.new_zeros(B, H, F)
        else:
            S, z = _check_state(initial_state, B, H, F, D)
            S, z = S.to(dtype), z.to(dtype)

        if mode == "recurrent":
            outs = []
            for t in range(N):
                o, (S, z) = _step(S, z, q[:, :, t], k[:, :, t], vv[:, :, t], eps, normalize)
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


def recurrent_step(
    state: tuple[Tensor, Tensor] | None,
    phi_q_t: Tensor,
    phi_k_t: Tensor,
    v_t: Tensor,
    *,
    eps: float = 1e-6,
    normalize: bool = True,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One decoding step: ``S ← S + φk_t v_tᵀ``, ``z ← z + φk_t``, ``o_t = φq_t·S / (φq_t·z + ε)``.

    Args:
        state: ``(S, z)`` with S (B, H, F, D) and z (B, H, F), or ``None`` for an empty state.
        phi_q_t, phi_k_t: (B, H, F) features of the new token. v_t: (B, H, D).

    Returns:
        ``(o_t, (S, z))`` with o_t (B, H, D) in v_t's dtype and the state in fp32 (float64 stays).
    """
    _check_eps(eps)
    for name, t in (("phi_q_t", phi_q_t), ("phi_k_t", phi_k_t), ("v_t", v_t)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a (B, H, features) tensor of one token, got {_shape(t)}")
    B, H, F = phi_q_t.shape
    D = v_t.shape[-1]
    if phi_k_t.shape != (B, H, F) or v_t.shape[:2] != (B, H):
        raise ValueError(
            f"recurrent_step shapes disagree: phi_q_t {tuple(phi_q_t.shape)}, phi_k_t "
            f"{tuple(phi_k_t.shape)}, v_t {tuple(v_t.shape)}; expected (B, H, F), (B, H, F), (B, H, D)"
        )
    dtype = _core_dtype("float32", phi_q_t, phi_k_t, v_t)
    with torch.autocast(device_type=v_t.device.type, enabled=False):
        if state is None:
            S = phi_q_t.new_zeros(B, H, F, D, dtype=dtype)
            z = phi_q_t.new_zeros(B, H, F, dtype=dtype)
        else:
            S, z = _check_state(state, B, H, F, D)
        o, new_state = _step(
            S.to(dtype), z.to(dtype), phi_q_t.to(dtype), phi_k_t.to(dtype), v_t.to(dtype), eps, normalize
        )
    return o.to(v_t.dtype), new_state


def _step(S, z, q, k, v, eps, normalize):
    S = S + k.unsqueeze(-1) * v.unsqueeze(-2)
    z = z + k
    num = (q.unsqueeze(-2) @ S).squeeze(-2)
    if not normalize:
        return num, (S, z)
    den = (q * z).sum(-1, keepdim=True) + eps
    return num / den, (S, z)


def _check_state(state, B, H, F, D):
    if not (isinstance(state, (tuple, list)) and len(state) == 2):
        raise ValueError("state must be a tuple (S, z) as returned with return_state=True")
    S, z = state
    if tuple(S.shape) != (B, H, F, D) or tuple(z.shape) != (B, H, F):
        raise ValueError(
            f"state shapes {tuple(S.shape)}, {tuple(z.shape)} do not match the inputs; expected "
            f"S {(B, H, F, D)} and z {(B, H, F)}"
        )
    return S, z


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
