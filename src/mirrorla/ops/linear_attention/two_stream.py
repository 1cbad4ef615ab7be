"""PolaFormer's two value streams in one kv-first pass (docs/methods.md §4).

Dimension letters: B batch, H heads, N query tokens, M key tokens, F feature dim (even: two polarity
halves), D value head dim, D¹ = ⌈D/2⌉ and D² = ⌊D/2⌋ the value halves (``chunk(2)``).

    O = [ LA(φq, φk, V¹) | LA(swap(φq), φk, V²) ]        swap([a ; b]) = [b ; a] along F

Since swap(φq)·φk = φq·swap(φk), the opposite stream reads the *same* queries against the state S
and z with the halves of their F rows swapped. One S = φKᵀV (F, D) GEMM and one φQ·[S¹ | swap(S²)]
GEMM replace two of each, and no swapped copy of φQ is made. The reference is two calls of
:func:`mirrorla.ops.linear_attention.naive.naive_linear_attention` (tests/test_two_stream.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_qkv
from mirrorla.ops.linear_attention.common import NORMALIZERS, check_eps, core_dtype_of, gemm_dtype_of
from mirrorla.ops.linear_attention.parallel import denominator, key_state

__all__ = ["two_stream_linear_attention", "swap_halves"]


def swap_halves(x: Tensor, dim: int = -1) -> Tensor:
    """[a ; b] → [b ; a] along ``dim`` (halves of ``chunk(2)``)."""
    first, second = x.chunk(2, dim=dim)
    return torch.cat([second, first], dim=dim)


def two_stream_linear_attention(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    *,
    normalizer: str = "mean",
    eps: float = 1e-6,
    key_padding_mask: Tensor | None = None,
    stream_scale: Tensor | None = None,
    core_dtype: str = "float32",
) -> Tensor:
    """Non-causal same-sign and opposite-sign streams of PolaFormer.

    Args:
        phi_q: (B, H, N, F) same-sign queries [q⁺ ; q⁻]. phi_k: (B, H, M, F) keys [k⁺ ; k⁻]; F even.
        v: (B, H, M, D); its first ⌈D/2⌉ channels feed the same-sign stream, the rest the opposite one.
        normalizer, eps, key_padding_mask, core_dtype: as in :func:`linear_attention` (non-causal).
        stream_scale: optional (H, D) factors of the output channels (PolaFormer's stream gates
            G^s | G^o), folded into S.

    Returns:
        (B, H, N, D) in v's dtype; each stream divided by its own denominator φq·z or φq·swap(z).
    """
    check_qkv(phi_q, phi_k, v, same_length=False)
    check_eps(eps)
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    B, H, N, F = phi_q.shape
    D = v.shape[-1]
    if F % 2:
        raise ValueError(f"the two streams swap the halves of the feature dim, which must be even; got F={F}")
    if stream_scale is not None and tuple(stream_scale.shape) != (H, D):
        raise ValueError(f"stream_scale must have shape (H, D) = {(H, D)}, got {tuple(stream_scale.shape)}")
    dtype = core_dtype_of(core_dtype, phi_q, phi_k, v)
    gemm = gemm_dtype_of(dtype, v)  # read before autocast is turned off below
    d1 = D - D // 2
    with torch.autocast(device_type=v.device.type, enabled=False):
        q = phi_q.to(dtype)
        kv, z = key_state(phi_k.to(dtype), v, normalizer, key_padding_mask, gemm)
        kv = torch.cat([kv[..., :d1], swap_halves(kv[..., d1:], dim=-2)], dim=-1)  # (B, H, F, D)
        if stream_scale is not None:
            kv = kv * stream_scale.to(kv.dtype)[None, :, None, :]
        num = (q.to(gemm) @ kv).to(dtype)  # (B, H, N, D)
        den = denominator(q, torch.cat([z, swap_halves(z)], dim=-2), eps)  # (B, H, N, 2)
        if D % 2 == 0:  # one product: the two halves as a (2, D/2) view
            out = (num.unflatten(-1, (2, D // 2)) * den.reciprocal().unsqueeze(-1)).flatten(-2)  # see parallel.py
        else:
            out = torch.cat([num[..., :d1] / den[..., :1], num[..., d1:] / den[..., 1:]], dim=-1)
    return out.to(v.dtype)
