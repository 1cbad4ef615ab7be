"""Non-causal normalised linear attention, kv-first: O(B·H·(N+M)·F·D), no (N, M) tensor."""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_key_padding_mask, check_positive, check_qkv
from mirrorla.ops.linear_attention.chunk import causal_linear_attention
from mirrorla.ops.linear_attention.common import NORMALIZERS, check_eps, core_dtype_of, gemm_dtype_of

__all__ = ["linear_attention", "key_state", "denominator", "state_product"]


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
    state_scale: Tensor | None = None,
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
        state_scale: optional factor of the state S only (not of z), per head or value channel: broadcastable
            to (B, H, 1, D), e.g. L²ViT's τ (H, 1, 1). Equals scaling the numerator; the non-causal form
            scales the (F, D) state, the causal form its output.

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
        out = causal_linear_attention(
            phi_q, phi_k, v, chunk_size=chunk_size, eps=eps, normalize=normalize, core_dtype=core_dtype
        )
        return out if state_scale is None else out * state_scale.to(out.dtype)

    out_dtype = v.dtype
    dtype = core_dtype_of(core_dtype, phi_q, phi_k, v)
    gemm = gemm_dtype_of(dtype, v)  # read before autocast is turned off below
    with torch.autocast(device_type=v.device.type, enabled=False):
        q = phi_q.to(dtype)
        # min_denominator bounds the sum-normalised denominator: S and z are plain sums there.
        kv, z = key_state(
            phi_k.to(dtype), v, "sum" if min_denominator is not None else normalizer, key_padding_mask, gemm
        )
        if state_scale is not None:
            kv = kv * state_scale.to(kv.dtype)
        num = (q.to(gemm) @ kv).to(dtype)  # (B, H, N, D)
        if not normalize:
            return num.to(out_dtype)
        # × 1/den, not ÷ den: the same value to an ulp, and its backward makes two passes over (B, H, N, D)
        # fewer (∂/∂den is Σ_d G·num times a per-row factor, not −G·num/den² formed in full)
        return (num * denominator(q, z, eps, min_denominator).reciprocal()).to(out_dtype)


def key_state(
    k: Tensor, v: Tensor, normalizer: str, key_padding_mask: Tensor | None, gemm_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """The non-causal state of the keys: S = φKᵀV (B, H, F, D) and z = Σ φK (B, H, 1, F), both divided by
    the number of kept keys for ``normalizer="mean"`` (so fp16/bf16 inputs cannot overflow the state).

    Masked keys (``key_padding_mask`` False) contribute nothing; no keys give S = z = 0 (not 0/0).
    z is formed in k's dtype; S in ``gemm_dtype`` (default k's dtype; bf16 under the mixed-precision
    policy, :func:`gemm_dtype_of`). The caller turns autocast off.
    """
    gemm_dtype = k.dtype if gemm_dtype is None else gemm_dtype
    B, H, M, _ = k.shape
    if key_padding_mask is not None:
        check_key_padding_mask(key_padding_mask, B, M)
        k = k * key_padding_mask.to(k.dtype)[:, None, :, None]  # (B, 1, M, 1)
    kv = state_product(k.to(gemm_dtype), v.to(gemm_dtype))
    z = k.sum(-2, keepdim=True)
    if normalizer == "mean":
        if key_padding_mask is not None:
            n_keys = key_padding_mask.sum(-1).clamp_min(1).to(k.dtype)[:, None, None, None]  # (B, 1, 1, 1)
        else:
            n_keys = max(M, 1)
        kv, z = kv / n_keys, z / n_keys
    return kv, z


def state_product(k: Tensor, v: Tensor) -> Tensor:
    """S = φKᵀV, (B, H, M, F) × (B, H, M, D) → (B, H, F, D), with both gradients in (M, ·) row order.

    Autograd of ``k.transpose(-2, -1) @ v`` returns one of ∂L/∂φK, ∂L/∂V as the transpose of an (·, M)
    matrix (column order); the element-wise passes that consume it (the feature map's backward, the qkv
    gradient's concatenation) then mix layouts and run several times slower. Here ∂L/∂φK = V·Gᵀ and
    ∂L/∂V = φK·G are plain row-major products.
    """
    return _StateProduct.apply(k, v)


class _StateProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor) -> Tensor:
        ctx.save_for_backward(k, v)
        return k.transpose(-2, -1) @ v

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        k, v = ctx.saved_tensors
        grad_k = v @ grad.transpose(-2, -1) if ctx.needs_input_grad[0] else None
        grad_v = k @ grad if ctx.needs_input_grad[1] else None
        return grad_k, grad_v


def denominator(q: Tensor, z: Tensor, eps: float, min_denominator: float | None = None) -> Tensor:
    """φq·z (B, H, N, Z) for Z stacked states z (B, H, Z, F): + ε, or clamped below by ``min_denominator``.

    A matrix-vector product, not ``(q * z).sum(-1)``: no (N, F) temporary forward or backward.
    """
    den = q @ z.transpose(-2, -1)
    return den.clamp_min(min_denominator) if min_denominator is not None else den + eps
