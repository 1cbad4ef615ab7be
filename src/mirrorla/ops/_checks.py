"""Input validation shared by the ops: clear errors instead of deep torch stack traces."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_qkv(q: Tensor, k: Tensor, v: Tensor, *, same_length: bool = False) -> None:
    """Check (B, H, N, F), (B, H, M, F), (B, H, M, D) layouts; raise ValueError/TypeError."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dims (B, H, N, D) (batch, heads, tokens, head dim), got shape "
                f"{_shape(t)}; split heads first, e.g. x.view(B, N, H, D).transpose(1, 2)"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"shapes disagree: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}; expected q (B, H, N, F), "
            "k (B, H, M, F), v (B, H, M, D)"
        )
    if same_length and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs as many queries as keys, got N={q.shape[2]}, M={k.shape[2]}")


def check_key_padding_mask(mask: Tensor, B: int, M: int) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"key_padding_mask must be a bool tensor (B, M) with True = keep, got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}"
        )
    if tuple(mask.shape) != (B, M):
        raise ValueError(f"key_padding_mask must have shape (B, M) = {(B, M)}, got {_shape(mask)}")


def check_positive(name: str, value: float, why: str) -> float:
    """``value`` as a float if it is a finite number > 0, else a ValueError that says ``why`` it must be.

    Used for every ε, clamp and minimum that keeps a division or a norm away from 0: ε = 0 turns an
    all-zero row (e.g. ReLU features of an all-negative q) into 0/0 = NaN.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0 ({why}), got {value!r}")
    return number
