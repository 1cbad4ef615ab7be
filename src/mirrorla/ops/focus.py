"""FLatten's focusing function (docs/methods.md §3): a reference and a fast path with a hand-written backward.

Dimension letters: B batch, H heads, N tokens, D head dim.

    x = (ReLU(q) + ε) / σ                     σ = softplus(s) > 0, per channel, (1, H, 1, D)
    φ = f_p(x) = ‖x‖ · x^{∘p} / ‖x^{∘p}‖       norms over ``dims`` ((1, 3): all C = H·D channels of a token)

:func:`focus` is f_p as a composition of autograd ops (the reference); :func:`focused_features` is the
whole map, forward and backward in a few passes. tests/test_focus_op.py checks one against the other,
outputs and gradients (q and σ), in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["focus", "focused_features"]


def focus(x: Tensor, power: float, dims: tuple[int, ...]) -> Tensor:
    """f_p(x) = ‖x‖ · x^{∘p} / ‖x^{∘p}‖ for x > 0, norms over ``dims`` (the reference, autograd ops).

    Evaluated as ‖x‖ · (x/m)^{∘p} / ‖(x/m)^{∘p}‖ with m = max x over ``dims`` (detached). The
    result is identical in exact arithmetic (x^{∘p} is p-homogeneous) and the gradient w.r.t. m is
    zero, but (x/m)^{∘p} ≤ 1 with one entry equal to 1, so ‖(x/m)^{∘p}‖ ≥ 1 can neither underflow
    (the fp16 NaN of §3: (1e-6/ln 2)³ = 0) nor overflow; no clamp is needed. [Design]
    """
    norm = x.norm(dim=dims, keepdim=True)
    m = x.detach().amax(dim=dims, keepdim=True)
    xp = (x / m) ** power
    return xp * (norm / xp.norm(dim=dims, keepdim=True))


def focused_features(q: Tensor, sigma: Tensor, *, power: float, dims: tuple[int, ...], offset: float) -> Tensor:
    """φ = f_p((ReLU(q) + offset) / σ), the same values as :func:`focus` of that argument, faster.

    Args:
        q: (B, H, N, D), fp32 or fp64 (any strides; a head-split view of a projection is fine).
        sigma: (1, H, 1, D) positive channel scale in q's dtype (FLatten: softplus(s)).
        power: p > 0. dims: the norm dims, (1, 3) or (3,). offset: ε > 0.

    Returns:
        φ, q's shape and dtype, every entry > 0.

    Why: autograd of the reference saves and revisits every intermediate (the ReLU, the shift, the
    division by σ, the division by m, the power, two norms), about twenty passes over (B, H, N, D)
    forward and backward. Here the backward is the closed form below, eleven passes, from x and
    y = (x/m)^{∘p} saved by the forward. With a = ‖x‖, b = ‖y‖ and c = ⟨G, y⟩ per token (G = ∂L/∂φ):

        ∂L/∂x = p·(y/x) ⊙ ((a/b)·G − (a·c/b³)·y) + (c/(a·b))·x
        ∂L/∂q = [q > 0] · ∂L/∂x / σ,      ∂L/∂σ = −Σ_{B,N} (∂L/∂x ⊙ x) / σ

    (m drops out: φ does not depend on it). The backward is not itself differentiable (no double
    backward; it raises instead of returning a wrong second derivative).
    """
    if q.dim() != 4 or sigma.shape != (1, q.shape[1], 1, q.shape[3]):
        raise ValueError(
            f"focused_features expects q (B, H, N, D) and sigma (1, H, 1, D), got {tuple(q.shape)} and "
            f"{tuple(sigma.shape)}"
        )
    return _FocusedFeatures.apply(q, sigma, float(power), tuple(dims), float(offset))


class _FocusedFeatures(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, sigma: Tensor, power: float, dims: tuple[int, ...], offset: float) -> Tensor:
        inv_sigma = sigma.reciprocal()
        x = torch.addcmul(inv_sigma * offset, F.relu(q), inv_sigma)  # (ReLU(q) + ε)/σ in one pass
        a = torch.linalg.vector_norm(x, dim=dims, keepdim=True)
        m = x.amax(dim=dims, keepdim=True)  # see focus(): keeps ‖y‖ in [1, √C], no under- or overflow
        y = (x / m).pow_(power)
        b = torch.linalg.vector_norm(y, dim=dims, keepdim=True)
        ctx.save_for_backward(q, sigma, x, y, a, b)
        ctx.power, ctx.dims = power, dims
        return y * (a / b)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        q, sigma, x, y, a, b = ctx.saved_tensors
        p, dims = ctx.power, ctx.dims
        if grad.stride() != x.stride():  # e.g. the transposed gradient of φK from the state GEMM
            grad = torch.empty_like(x).copy_(grad)  # one copy; mixed layouts make every pass below slow
        c = (grad * y).sum(dim=dims, keepdim=True)
        ab = a / b
        t = torch.addcmul(grad * (p * ab), y, p * ab * c / (b * b), value=-1)
        grad_x = t.mul_(y / x).addcmul_(x, c / (a * b))
        grad_q = grad_sigma = None
        if ctx.needs_input_grad[0]:
            grad_q = torch.ops.aten.threshold_backward(grad_x / sigma, q, 0)  # the ReLU's mask, q > 0
        if ctx.needs_input_grad[1]:
            broadcast = tuple(d for d in range(x.dim()) if sigma.shape[d] == 1)  # (0, 2); never () (= all dims)
            grad_sigma = -(grad_x * x).sum(dim=broadcast, keepdim=True) / sigma
        return grad_q, grad_sigma, None, None, None
