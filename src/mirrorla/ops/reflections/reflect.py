"""The per-formula reflection ops of MirrorLA (docs/methods.md §2.2–2.4), all O(N·C) elementwise work.

Dimension letters: B batch, H heads, N tokens, D head dim, J = D/2 blocks per head, C = H·D.
No D×D or C×C matrix is ever built here; the dense forms live in :mod:`mirrorla.ops.reflections.naive`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mirrorla.ops._checks import check_positive

__all__ = [
    "cross_head_reflect",
    "block_reflect",
    "block_variance",
    "modulated_angle",
    "VARIANCE_AXES",
    "check_variance_axis",
]

#: What σ² pools over: ``"block"`` one σ² per (sample, head, channel pair) (§2.4, the default);
#: ``"head"`` one σ² per (sample, head) over all D channels, shared by the head's blocks (our option).
VARIANCE_AXES = ("block", "head")


def check_variance_axis(axis: str) -> str:
    """``axis`` if it is one of :data:`VARIANCE_AXES`, else a ``ValueError`` naming them."""
    if axis not in VARIANCE_AXES:
        raise ValueError(f"variance_axis must be one of {', '.join(map(repr, VARIANCE_AXES))}, got {axis!r}")
    return axis


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


def block_variance(q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None, *, axis: str = "block") -> Tensor:
    """Population variance σ² per (sample, head, block) over the q and k entries of that block.

    The multiset for block j is {q_{n,2j}, q_{n,2j+1}} ∪ {k_{m,2j}, k_{m,2j+1}} over valid tokens
    (§2.4), so q and k share one σ² and hence one reflection. With ``axis="head"`` the multiset is
    every channel of the head, {q_{n,d}} ∪ {k_{m,d}}, and its σ² is repeated for each block j.
    Two-pass in fp32 (not E[x²] − μ², which cancels catastrophically). ``key_padding_mask`` (B, N)
    True = keep removes tokens from both sets (self-attention, N = M).

    Returns:
        (B, H, J) fp32 (float64 if the inputs are float64); under ``axis="head"`` a broadcast view
        of (B, H, 1).
    """
    check_variance_axis(axis)
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, H, N, D = q.shape
    width = 2 if axis == "block" else D  # channels per σ² group: a pair, or the whole head
    qb = q.to(dt).unflatten(-1, (D // width, width))  # (B, H, N, G, width), G groups
    kb = k.to(dt).unflatten(-1, (D // width, width))
    if key_padding_mask is None:
        count = max(float(width) * (q.shape[2] + k.shape[2]), 1.0)  # no tokens: σ² = 0, not 0/0
        mean = (qb.sum((2, 4)) + kb.sum((2, 4))) / count  # (B, H, G)
        mu = mean[:, :, None, :, None]
        var = (((qb - mu) ** 2).sum((2, 4)) + ((kb - mu) ** 2).sum((2, 4))) / count
        return var.expand(B, H, D // 2)
    w = key_padding_mask.to(dt)[:, None, :, None, None]  # (B, 1, N, 1, 1)
    count = (2.0 * width * key_padding_mask.sum(-1).clamp_min(1).to(dt))[:, None, None]  # (B, 1, 1)
    mean = ((qb * w).sum((2, 4)) + (kb * w).sum((2, 4))) / count
    mu = mean[:, :, None, :, None]
    var = ((((qb - mu) ** 2) * w).sum((2, 4)) + (((kb - mu) ** 2) * w).sum((2, 4))) / count
    return var.expand(B, H, D // 2)


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
