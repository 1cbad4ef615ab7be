"""Non-causal normalised linear attention, kv-first: O(B·H·(N+M)·F·D), no (N, M) tensor."""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_key_padding_mask, check_positive, check_qkv
from mirrorla.ops.linear_attention.chunk import causal_linear_attention
from mirrorla.ops.linear_attention.common import NORMALIZERS, check_eps, core_dtype_of

__all__ = ["linear_attention"]


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
    check_eps(eps)
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
    dtype = core_dtype_of(core_dtype, phi_q, phi_k, v)
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
