"""The per-formula reflection ops of MirrorLA (docs/methods.md §2.2–2.4), all O(N·C) elementwise work.

Dimension letters: B batch, H heads, N tokens, D head dim, J = D/2 blocks per head, C = H·D.
No D×D or C×C matrix is ever built here; the dense forms live in :mod:`mirrorla.ops.reflections.naive`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_positive

__all__ = ["cross_head_reflect", "block_reflect", "block_variance", "modulated_angle"]


def cross_head_reflect(x: Tensor, u: Tensor) -> Tensor:
    """``H_c x = x − 2 (x·û) û`` over the full width C = H·D, per token.

    Args:
        x: (B, H, N, D) head-split tokens; channel c = h·D + d, as in (B, N, C).view(B, N, H, D).
        u: (C,) or (H, D) reflecting vector; û = u / max(‖u‖, 1e-6).
    """
    B, H, N, D = x.shape
    u = u.reshape(H, D).to(x.dtype)  # normalised in x's (fp32) dtype, also for a half u
    u_hat = u / u.norm().clamp_min(1e-6)
    proj = torch.einsum("bhnd,hd->bn", x, u_hat)  # x·û per token, summed over all heads
    return x - 2.0 * proj[:, None, :, None] * u_hat[None, :, None, :]


def block_reflect(x: Tensor, angle: Tensor) -> Tensor:
    """Reflect every channel pair (2j, 2j+1) of each head by ``H(Θ) = I₂ − 2uuᵀ``, u = (cos Θ, sin Θ).

    Closed form (§2.3): y₀ = −cos2Θ·x₀ − sin2Θ·x₁,  y₁ = −sin2Θ·x₀ + cos2Θ·x₁.

    Args:
        x: (B, H, N, D) with D even.
        angle: Θ of shape (H, J) or (B or 1, H, J), J = D/2, broadcast over tokens.
    """
    if angle.dim() == 2:
        angle = angle.unsqueeze(0)
    two = (2.0 * angle).unsqueeze(2)  # (B|1, H, 1, J)
    c, s = torch.cos(two).to(x.dtype), torch.sin(two).to(x.dtype)
    pairs = x.unflatten(-1, (x.shape[-1] // 2, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    y0 = -(c * x0 + s * x1)
    y1 = c * x1 - s * x0
    return torch.stack((y0, y1), dim=-1).flatten(-2)


def block_variance(q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Population variance σ² per (sample, head, block) over the q and k entries of that block.

    The multiset for block j is {q_{n,2j}, q_{n,2j+1}} ∪ {k_{m,2j}, k_{m,2j+1}} over valid tokens
    (§2.4), so q and k share one σ² and hence one reflection. Two-pass in fp32 (not E[x²] − μ²,
    which cancels catastrophically). ``key_padding_mask`` (B, N) True = keep removes tokens from
    both sets (self-attention, N = M).

    Returns:
        (B, H, J) fp32 (float64 if the inputs are float64).
    """
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, H, N, D = q.shape
    qb = q.to(dt).unflatten(-1, (D // 2, 2))  # (B, H, N, J, 2)
    kb = k.to(dt).unflatten(-1, (D // 2, 2))
    if key_padding_mask is None:
        count = max(2.0 * (q.shape[2] + k.shape[2]), 1.0)  # no tokens: σ² = 0, not 0/0
        mean = (qb.sum((2, 4)) + kb.sum((2, 4))) / count  # (B, H, J)
        mu = mean[:, :, None, :, None]
        var = (((qb - mu) ** 2).sum((2, 4)) + ((kb - mu) ** 2).sum((2, 4))) / count
        return var
    w = key_padding_mask.to(dt)[:, None, :, None, None]  # (B, 1, N, 1, 1)
    count = (4.0 * key_padding_mask.sum(-1).clamp_min(1).to(dt))[:, None, None]  # (B, 1, 1)
    mean = ((qb * w).sum((2, 4)) + (kb * w).sum((2, 4))) / count
    mu = mean[:, :, None, :, None]
    var = ((((qb - mu) ** 2) * w).sum((2, 4)) + (((kb - mu) ** 2) * w).sum((2, 4))) / count
    return var


def modulated_angle(theta: Tensor, alpha: Tensor, variance: Tensor, eps: float = 1e-6) -> Tensor:
    """Θ = θ + α ⊙ sigmoid(1/(σ² + ε)) (Theorem 1 of the MirrorLA paper; ε is ours).

    Args:
        theta, alpha: (H, J). variance: (B, H, J), fp32.

    Returns:
        (B, H, J) in fp32 (1/(σ² + ε) reaches 1e6 and would overflow fp16).
    """
    check_positive("variance_eps", eps, "it keeps 1/(σ² + ε) finite when a block has zero variance")
    dt = variance.dtype
    return theta.to(dt) + alpha.to(dt) * torch.sigmoid(1.0 / (variance + eps))
