"""One decoding step of causal linear attention (the recurrent form), O(F·D) per token."""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops.linear_attention.common import check_eps, check_state, core_dtype_of, shape_str

__all__ = ["recurrent_step"]


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
    check_eps(eps)
    for name, t in (("phi_q_t", phi_q_t), ("phi_k_t", phi_k_t), ("v_t", v_t)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a (B, H, features) tensor of one token, got {shape_str(t)}")
    B, H, F = phi_q_t.shape
    D = v_t.shape[-1]
    if phi_k_t.shape != (B, H, F) or v_t.shape[:2] != (B, H):
        raise ValueError(
            f"recurrent_step shapes disagree: phi_q_t {tuple(phi_q_t.shape)}, phi_k_t "
            f"{tuple(phi_k_t.shape)}, v_t {tuple(v_t.shape)}; expected (B, H, F), (B, H, F), (B, H, D)"
        )
    dtype = core_dtype_of("float32", phi_q_t, phi_k_t, v_t)
    with torch.autocast(device_type=v_t.device.type, enabled=False):
        if state is None:
            S = phi_q_t.new_zeros(B, H, F, D, dtype=dtype)
            z = phi_q_t.new_zeros(B, H, F, dtype=dtype)
        else:
            S, z = check_state(state, B, H, F, D)
        o, new_state = step(
            S.to(dtype), z.to(dtype), phi_q_t.to(dtype), phi_k_t.to(dtype), v_t.to(dtype), eps, normalize
        )
    return o.to(v_t.dtype), new_state


def step(S, z, q, k, v, eps, normalize):
    S = S + k.unsqueeze(-1) * v.unsqueeze(-2)
    z = z + k
    num = (q.unsqueeze(-2) @ S).squeeze(-2)
    if not normalize:
        return num, (S, z)
    den = (q * z).sum(-1, keepdim=True) + eps
    return num / den, (S, z)
