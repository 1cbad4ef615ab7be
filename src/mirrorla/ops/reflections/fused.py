"""``mirror_features``: φ = ReLU(H_blk(Θ)·H_c·x) for q and k with fewer passes over the tensors.

Same maths as the reference composition :func:`mirrorla.ops.reflections.naive.naive_mirror_features`
(one op per formula of docs/methods.md §2.2–2.4); tests/test_fast_path.py and tests/test_ops_reflections.py
check it against that reference, output and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mirrorla.ops.reflections.reflect import block_variance, check_variance_axis, modulated_angle

__all__ = ["mirror_features"]


def mirror_features(
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
    odd_negated: bool = False,
) -> tuple[Tensor, Tensor]:
    """φq, φk = ReLU(H_blk(Θ)·H_c·q), ReLU(H_blk(Θ)·H_c·k) in a few fused elementwise ops.

    Args:
        q: (B, H, N, D), k: (B, H, M, D), floating point (fp32 or fp64; half is upcast by the caller).
        u: (C,) cross-head vector, or None to skip the cross-head reflection.
        theta: (H, J) block angles, or None to skip the block reflection.
        alpha: (H, J) modulation amplitudes, or None for Θ = θ (no variance modulation).
        variance_eps, detach_variance, variance_axis, key_padding_mask: as in :class:`MirrorFeatureMap`.
        odd_negated: q and k arrive as S·x, x the tensors entering the block reflection and S the
            sign flip of every odd channel (2j+1); a layer folds S (and H_c) into its projection
            weights, see :meth:`MirrorFeatureMap.fold_projection`. Needs ``u=None``. φ is unchanged.

    How (same maths as the reference, fewer memory passes):
        * cross-head: one matrix-vector product x·û over the (B, N, C) view of the heads and one
          ``addcmul`` x − 2(x·û)û, instead of an einsum plus broadcast temporaries;
        * σ²: two passes (channel sums, then Σ(x − μ_block)²) reduced over tokens, where the
          reference builds (B, H, N, J, 2) temporaries (``variance_axis="head"``: μ and σ² over
          the head's D channels); a key-padding mask uses the reference;
        * block reflection: each channel pair is a complex number z = x₂ⱼ + i·x₂ⱼ₊₁, and
          H(Θ)z = w·conj(z) = conj(w̄·z) with w = −e^{2iΘ}, so the reflection is one complex
          multiply of a strided view (no stack/interleave copy). conj(z) is exactly the pair with
          its odd channel negated: given S·x it is free, otherwise the sign flip is applied to the
          product, together with the ReLU.

    Returns:
        (φq, φk) with q's and k's shapes, non-negative, in the input dtype.
    """
    check_variance_axis(variance_axis)
    if u is not None:
        if odd_negated:
            raise ValueError("odd_negated=True describes inputs after the cross-head reflection; pass u=None")
        u = u.reshape(-1).to(q.dtype)  # normalised in q's (fp32) dtype, also for a half u
        u_hat = u / u.norm().clamp_min(1e-6)
        q, k = _cross_head_fast(q, u_hat), _cross_head_fast(k, u_hat)
    if theta is None:
        return torch.relu(q), torch.relu(k)
    odd_sign = _odd_sign(q.shape[-1], q.dtype, q.device)  # (D,) = (1, −1, 1, −1, …)
    if alpha is None:
        angle = theta.unsqueeze(0)
    else:
        if key_padding_mask is not None:
            qx, kx = (q * odd_sign, k * odd_sign) if odd_negated else (q, k)
            stats = lambda: block_variance(qx, kx, key_padding_mask, axis=variance_axis)  # noqa: E731
        else:
            stats = lambda: _block_variance_fast(q, k, odd_sign if odd_negated else None, variance_axis)  # noqa: E731
        if detach_variance:
            with torch.no_grad():
                var = stats()
        else:
            var = stats()
        angle = modulated_angle(theta, alpha, var, variance_eps)
    two = (2.0 * angle).unsqueeze(2).to(q.dtype)  # (B|1, H, 1, J)
    cos, sin = torch.cos(two), torch.sin(two)
    if odd_negated:  # H z = w·conj(z) with w = −cos − i·sin, and conj(z) is the input pair
        return _reflect_relu(q, -cos, -sin, None), _reflect_relu(k, -cos, -sin, None)
    sign = odd_sign[:2]  # H z = conj(w̄·z) with w̄ = −cos + i·sin
    return _reflect_relu(q, -cos, sin, sign), _reflect_relu(k, -cos, sin, sign)


def _odd_sign(D: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor([1.0, -1.0], dtype=dtype, device=device).repeat(D // 2)


def _cross_head_fast(x: Tensor, u_hat: Tensor) -> Tensor:
    """x − 2(x·û)û on (B, H, N, D) via the (B, N, C) view (a view for qkv-projection layouts)."""
    B, H, N, D = x.shape
    xc = x.transpose(1, 2).reshape(B, N, H * D)
    proj = (xc @ u_hat).unsqueeze(-1)  # (B, N, 1)
    return torch.addcmul(xc, proj, u_hat, value=-2.0).view(B, N, H, D).transpose(1, 2)


def _block_variance_fast(q: Tensor, k: Tensor, odd_sign: Tensor | None = None, axis: str = "block") -> Tensor:
    """σ² per (B, H, J) over the q and k entries of each block: two passes, reductions over tokens.

    ``axis="head"`` pools all D channels of a head into one σ² per (B, H), repeated over the J blocks.
    With ``odd_sign`` the inputs are S·x (odd channels negated); the first pass un-flips the channel
    sums, so μ is the mean of x (for a whole head the flipped sums would not cancel to it), and since
    (S·x − S·μ)² = (x − μ)², the second pass subtracts S·μ and the statistics are those of x.
    """
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = q.to(dt), k.to(dt)
    B, H, _, D = q.shape
    width = 2 if axis == "block" else D  # channels per σ² group: a pair, or the whole head
    count = max(float(width) * (q.shape[2] + k.shape[2]), 1.0)  # no tokens: σ² = 0, not 0/0
    sums = q.sum(2) + k.sum(2)  # (B, H, D)
    if odd_sign is not None:
        sums = sums * odd_sign.to(dt)
    mu = sums.unflatten(-1, (-1, width)).sum(-1) / count  # (B, H, G), G = D / width groups
    mu_d = mu.repeat_interleave(width, dim=-1)  # (B, H, D)
    if odd_sign is not None:
        mu_d = mu_d * odd_sign.to(dt)
    mu_d = mu_d.unsqueeze(2)
    sq = (q - mu_d).square().sum(2) + (k - mu_d).square().sum(2)  # (B, H, D)
    return (sq.unflatten(-1, (-1, width)).sum(-1) / count).expand(B, H, D // 2)


def _reflect_relu(x: Tensor, w_re: Tensor, w_im: Tensor, sign: Tensor | None) -> Tensor:
    """ReLU of the channel pairs of x, as complex numbers, times w = w_re + i·w_im (then times ``sign`` per
    pair slot)."""
    pairs = x.unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():
        # Under torch.compile: the same product in real arithmetic, which the compilers fuse (inductor has no
        # complex code generation; complex views and storage offsets do not trace):
        # (a + ib)(x₀ + ix₁) = (a·x₀ − b·x₁) + i(a·x₁ + b·x₀).
        x0, x1 = pairs[..., 0], pairs[..., 1]
        y = torch.stack((w_re * x0 - w_im * x1, w_re * x1 + w_im * x0), dim=-1)
        if sign is not None:
            y = y * sign
        return torch.relu(y).flatten(-2)
    return _ReflectReLU.apply(x, w_re, w_im, sign)


def _complex_view(pairs: Tensor) -> Tensor:
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
        pairs = pairs.contiguous()  # view_as_complex needs (re, im) adjacent and even strides/offset
    return torch.view_as_complex(pairs)


class _ReflectReLU(torch.autograd.Function):
    """ReLU(sign ⊙ (w·z)) on the channel pairs z of x, with the backward written out (eager path).

    With G = ∂L/∂φ masked by φ > 0 and times ``sign``, read as complex g per pair: ∂L/∂z = conj(w)·g and
    ∂L/∂w = Σ conj(z)·g over the dims w broadcasts (tokens, and the batch for a shared w). Autograd of the
    composition pays extra passes for the ReLU's and the sign's backward, a contiguous copy in
    ``view_as_real``'s backward and a clone in the complex product's. Not differentiable twice.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w_re: Tensor, w_im: Tensor, sign: Tensor | None) -> Tensor:
        z = _complex_view(x.unflatten(-1, (-1, 2)))
        w = torch.complex(w_re, w_im)
        y = torch.view_as_real(w * z)
        if sign is not None:
            y = y.mul_(sign)
        out = torch.relu_(y).flatten(-2)
        ctx.save_for_backward(z, w, out, sign)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        z, w, out, sign = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad, out, 0).unflatten(-1, (-1, 2))
        if sign is not None:
            g = g.mul_(sign)
        g = _complex_view(g)
        grad_x = grad_re = grad_im = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.view_as_real(g * w.conj()).flatten(-2)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            broadcast = tuple(d for d in range(z.dim()) if w.shape[d] == 1 and z.shape[d] != 1)
            grad_w = g * z.conj()
            grad_w = grad_w.sum(dim=broadcast, keepdim=True) if broadcast else grad_w
            grad_re, grad_im = grad_w.real, grad_w.imag
        return grad_x, grad_re, grad_im, None
