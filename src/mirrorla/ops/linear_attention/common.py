"""Shared pieces of the linear-attention forms: normalisers, core dtype, ε and state checks."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from mirrorla.ops._checks import check_positive

NORMALIZERS = ("mean", "sum")
_CORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
_EPS_WHY = "it keeps the denominator φq·z + eps away from 0; the default is 1e-6"


def check_eps(eps: float) -> float:
    return check_positive("eps", eps, _EPS_WHY)


#: Device types on which the non-causal core runs its two GEMMs in bf16 under bf16 autocast or for bf16
#: values (mixed-precision policy, docs/efficiency.md). Default: CUDA only; on this project's CPUs
#: (no bf16 GEMM units) bf16 GEMMs were slower than fp32. Set with ``MIRRORLA_BF16_GEMMS=cuda,cpu``
#: (``""``: never) or :func:`set_bf16_gemm_devices`.
_BF16_GEMM_DEVICES = {d.strip() for d in os.environ.get("MIRRORLA_BF16_GEMMS", "cuda").split(",") if d.strip()}


def set_bf16_gemm_devices(devices) -> None:
    """Device types (``"cuda"``, ``"cpu"``, ...) whose non-causal linear-attention GEMMs may run in bf16."""
    _BF16_GEMM_DEVICES.clear()
    _BF16_GEMM_DEVICES.update(devices)


def bf16_gemm_devices() -> frozenset[str]:
    return frozenset(_BF16_GEMM_DEVICES)


def gemm_dtype_of(dtype: torch.dtype, v: Tensor) -> torch.dtype:
    """The dtype of the φKᵀV and φQ·S GEMMs for a core that runs in ``dtype``: bf16 when the policy
    allows it on v's device and the values are bf16 or autocast asks for bf16; else ``dtype``.

    fp16 is never used for them: φ of ×100 inputs exceeds the fp16 range (PolaFormer's |q|^5, the
    focusing power). The normaliser φq·z is always formed in ``dtype`` (fp32).
    """
    device = v.device.type
    if dtype != torch.float32 or device not in _BF16_GEMM_DEVICES:
        return dtype
    if v.dtype == torch.bfloat16:
        return torch.bfloat16
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
        return torch.bfloat16
    return dtype


def core_dtype_of(core_dtype: str, *tensors: Tensor) -> torch.dtype:
    if core_dtype not in _CORE_DTYPES:
        raise ValueError(f"core_dtype must be one of {sorted(_CORE_DTYPES)}, got {core_dtype!r}")
    # float64 inputs stay float64 (gradcheck); everything else runs in the requested core dtype.
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return _CORE_DTYPES[core_dtype]


def check_state(state, B, H, F, D):
    if not (isinstance(state, (tuple, list)) and len(state) == 2):
        raise ValueError("state must be a tuple (S, z) as returned with return_state=True")
    S, z = state
    if tuple(S.shape) != (B, H, F, D) or tuple(z.shape) != (B, H, F):
        raise ValueError(
            f"state shapes {tuple(S.shape)}, {tuple(z.shape)} do not match the inputs; expected "
            f"S {(B, H, F, D)} and z {(B, H, F)}"
        )
    return S, z


def shape_str(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
