"""Shared pieces of the linear-attention forms: normalisers, core dtype, ε and state checks."""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_positive

NORMALIZERS = ("mean", "sum")
_CORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
_EPS_WHY = "it keeps the denominator φq·z + eps away from 0; the default is 1e-6"


def check_eps(eps: float) -> float:
    return check_positive("eps", eps, _EPS_WHY)


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
