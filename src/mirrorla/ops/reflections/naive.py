"""References of the MirrorLA reflections (tests and folding; never on a hot path).

Dimension letters: B batch, H heads, N tokens, D head dim, J = D/2 blocks per head, C = H·D.

* the dense matrices H_blk(Θ) (D×D per head) and H_c (C×C), references of
  :func:`~mirrorla.ops.reflections.block_reflect` and :func:`~mirrorla.ops.reflections.cross_head_reflect`;
* :func:`naive_block_variance` and :func:`naive_modulated_angle`, the definitions of σ² and Θ;
* :func:`naive_mirror_features`, the reference composition of φ = ReLU(H_blk(Θ)·H_c·x): one op per
  formula, which :func:`~mirrorla.ops.reflections.mirror_features` is tested against and which
  ``MirrorFeatureMap`` runs with ``fast_path`` off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mirrorla.ops.reflections.reflect import (
    block_reflect,
    block_variance,
    check_variance_axis,
    cross_head_reflect,
    modulated_angle,
)

__all__ = [
    "dense_block_reflection",
    "dense_cross_head_reflection",
    "naive_block_variance",
    "naive_modulated_angle",
    "naive_mirror_features",
]


def dense_block_reflection(angle: Tensor, head_dim: int) -> Tensor:
    """The block-diagonal D×D matrix H_blk(Θ) built from I − 2uuᵀ per block. angle (..., D/2)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    u = torch.stack((cos, sin), dim=-1)  # (..., J, 2)
    eye2 = torch.eye(2, dtype=angle.dtype, device=angle.device)
    blocks = eye2 - 2.0 * u.unsqueeze(-1) * u.unsqueeze(-2)  # (..., J, 2, 2)
    out = torch.zeros(*angle.shape[:-1], head_dim, head_dim, dtype=angle.dtype, device=angle.device)
    for j in range(head_dim // 2):
        out[..., 2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = blocks[..., j, :, :]
    return out


def dense_cross_head_reflection(u: Tensor) -> Tensor:
    """The C×C matrix I − 2uuᵀ/‖u‖²."""
    u = u.reshape(-1)
    return torch.eye(u.numel(), dtype=u.dtype, device=u.device) - 2.0 * torch.outer(u, u) / (u @ u)


def naive_block_variance(
    q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None, *, axis: str = "block"
) -> Tensor:
    """σ² of block j = ``torch.var`` (population) of {q_{n,2j}, q_{n,2j+1}} ∪ {k_{m,2j}, k_{m,2j+1}}.

    ``axis="head"``: every block of a head gets ``torch.var`` of all its entries {q_{n,d}} ∪ {k_{m,d}}.
    One sample at a time, kept tokens only (``key_padding_mask`` (B, N), True = keep, N = M); a sample
    with no tokens gets σ² = 0. Returns (B, H, J) in float64 for float64 inputs, else float32.
    """
    check_variance_axis(axis)
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, H, _, D = q.shape
    out = []
    for b in range(B):
        qb, kb = q[b].to(dt), k[b].to(dt)  # (H, N, D), (H, M, D)
        if key_padding_mask is not None:
            qb, kb = qb[:, key_padding_mask[b]], kb[:, key_padding_mask[b]]
        vals = torch.cat((qb, kb), dim=1)  # (H, T, D)
        if axis == "head":
            head = vals.flatten(1)  # (H, T·D): every entry of the head
            var = head.var(-1, correction=0) if head.shape[-1] else head.new_zeros(H)
            out.append(var[:, None].expand(H, D // 2))
            continue
        vals = vals.unflatten(-1, (D // 2, 2)).transpose(1, 2).flatten(2)  # (H, J, 2T): every entry of block j
        out.append(vals.var(-1, correction=0) if vals.shape[-1] else vals.new_zeros(H, D // 2))
    return torch.stack(out) if out else q.new_zeros(0, H, D // 2, dtype=dt)


def naive_modulated_angle(theta: Tensor, alpha: Tensor, variance: Tensor, eps: float = 1e-6) -> Tensor:
    """Θ = θ + α / (1 + exp(−1/(σ² + ε))), in the variance's dtype. theta, alpha (H, J); variance (B, H, J)."""
    dt = variance.dtype
    return theta.to(dt) + alpha.to(dt) / (1.0 + torch.exp(-1.0 / (variance + eps)))


def naive_mirror_features(
    q: Tensor,
    k: Tensor,
    u: Tensor | None = None,
    theta: Tensor | None = None,
    alpha: Tensor | None = None,
    *,
    variance_eps: float = 1e-6,
    detach_variance: bool = False,
    variance_axis: str = "block",
    key_padding_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """φq, φk = ReLU(H_blk(Θ)·H_c·q), ReLU(H_blk(Θ)·H_c·k), one op per formula of docs/methods.md §2.2–2.4.

    Arguments as :func:`~mirrorla.ops.reflections.mirror_features` (without ``odd_negated``):
    u (C,) or None skips H_c; theta (H, J) or None skips H_blk; alpha (H, J) or None gives Θ = θ,
    else Θ = θ + α·sigmoid(1/(σ² + ε)) with σ² over the (cross-head reflected) q and k, per block or,
    with ``variance_axis="head"``, per head.
    """
    check_variance_axis(variance_axis)
    if u is not None:
        q, k = cross_head_reflect(q, u), cross_head_reflect(k, u)
    if theta is not None:
        if alpha is None:
            angle = theta.unsqueeze(0)
        else:
            if detach_variance:
                with torch.no_grad():
                    var = block_variance(q, k, key_padding_mask, axis=variance_axis)
            else:
                var = block_variance(q, k, key_padding_mask, axis=variance_axis)
            angle = modulated_angle(theta, alpha, var, variance_eps)
        q, k = block_reflect(q, angle), block_reflect(k, angle)
    return F.relu(q), F.relu(k)
