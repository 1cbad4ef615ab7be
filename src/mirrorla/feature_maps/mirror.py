"""MirrorLA feature map: φ(x) = ReLU(H_blk(Θ) · H_c · x) (docs/methods.md §2).

Dimension letters: B batch, H heads, N tokens, D head dim, J = D/2 blocks per head, C = H·D.

Three switches give the ablation rows of §2.8: ``block_reflection`` (R1), ``variance_modulation``
(R2, needs the block reflection) and ``cross_head`` (R3 = all on = MirrorLA). q and k always get the
same reflections — under modulation the same Θ per sample — so ⟨Hq, Hk⟩ = ⟨q, k⟩ before the ReLU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.feature_maps.base import FeatureMap, fast_path_default, set_fast_path
from mirrorla.feature_maps.registry import register_feature_map
from mirrorla.ops._checks import check_positive
from mirrorla.ops.reflections import (
    block_reflect,
    block_variance,
    check_variance_axis,
    cross_head_reflect,
    mirror_features,
    modulated_angle,
)
from mirrorla.ops.reflections.naive import dense_block_reflection, dense_cross_head_reflection, naive_mirror_features

__all__ = ["MirrorFeatureMap", "set_fast_path"]

# The fast-path switch (feature_maps.base.set_fast_path, MIRRORLA_FAST_PATH): on, the fused op
# :func:`mirrorla.ops.reflections.mirror_features`, and in a layer the constant reflections folded into the
# projection; off, the reference composition :func:`mirrorla.ops.reflections.naive.naive_mirror_features`
# (one op per formula, then a ReLU). A ``torch.compile`` switch and a bfloat16 core were measured slower
# on CPU and removed (docs/efficiency.md, "MirrorLA backend").


_HALF = (torch.float16, torch.bfloat16)


class MirrorFeatureMap(FeatureMap):
    """Learnable Householder reflections before the ReLU.

    Args:
        num_heads: H. head_dim: D (must be even when ``block_reflection``).
        block_reflection: one 2-D reflection per (head, channel pair), angle θ (H, D/2).
        variance_modulation: Θ = θ + α·sigmoid(1/(σ² + ε)), σ² per (sample, head, block) over q and k
            (per (sample, head) with ``variance_axis="head"``).
        cross_head: one reflection I − 2ûûᵀ over the full width C = H·D, applied first.
        theta_init: ``"uniform"`` (U[0, π), default), ``"zeros"`` or a float.
        alpha_init: initial value of every α entry (default 0.1·π).
        variance_eps: ε in 1/(σ² + ε).
        detach_variance: compute σ² without gradient.
        variance_axis: what σ² pools over: ``"block"`` (default) one σ² per (sample, head, block);
            ``"head"`` one σ² per (sample, head) over all D channels of q and k, used by every block
            of the head (our option; the paper's figure speaks of a block variance). q and k still
            share Θ. Only read under ``variance_modulation``.

    The attribute ``fast_path`` (default on; :func:`set_fast_path` or ``MIRRORLA_FAST_PATH=0``)
    selects the fused op or the reference composition. Both compute the same φ.

    Parameters (all exempt from weight decay, see :meth:`no_weight_decay`):
        ``u_c`` (C,) ~ N(0, 1); ``theta`` (H, D/2); ``alpha`` (H, D/2).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        *,
        block_reflection: bool = True,
        variance_modulation: bool = True,
        cross_head: bool = True,
        theta_init: str | float = "uniform",
        alpha_init: float = 0.1 * math.pi,
        variance_eps: float = 1e-6,
        detach_variance: bool = False,
        variance_axis: str = "block",
    ) -> None:
        super().__init__()
        if variance_modulation and not block_reflection:
            raise ValueError(
                "variance_modulation=True modulates the block-reflection angle and needs "
                "block_reflection=True; enable block_reflection or disable variance_modulation"
            )
        if block_reflection and head_dim % 2:
            raise ValueError(
                f"MirrorLA's block reflection pairs channels (2j, 2j+1) and needs an even head dim, got "
                f"head_dim={head_dim}; choose dim and num_heads so that dim // num_heads is even"
            )
        variance_eps = check_positive(
            "variance_eps", variance_eps, "it keeps 1/(σ² + ε) finite when a block has zero variance"
        )
        check_variance_axis(variance_axis)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.block_reflection = block_reflection
        self.variance_modulation = variance_modulation
        self.cross_head = cross_head
        self.variance_eps = variance_eps
        self.detach_variance = detach_variance
        self.variance_axis = variance_axis
        self.token_local = not variance_modulation
        self.fast_path = fast_path_default()
        J = head_dim // 2
        if cross_head:
            self.u_c = nn.Parameter(torch.randn(num_heads * head_dim))
        if block_reflection:
            self.theta = nn.Parameter(_init_theta(theta_init, num_heads, J))
        if variance_modulation:
            self.alpha = nn.Parameter(torch.full((num_heads, J), float(alpha_init)))

    def no_weight_decay(self) -> set[str]:
        return {n for n in ("u_c", "theta", "alpha") if hasattr(self, n)}

    def angles(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Θ of the block reflection: (B, H, D/2) under modulation, else θ as (1, H, D/2).

        q and k are the tensors entering the block reflection (after the cross-head reflection).
        """
        if not self.variance_modulation:
            return self.theta.unsqueeze(0)
        if self.detach_variance:
            with torch.no_grad():
                var = block_variance(q, k, key_padding_mask, axis=self.variance_axis)
        else:
            var = block_variance(q, k, key_padding_mask, axis=self.variance_axis)
        return modulated_angle(self.theta, self.alpha, var, self.variance_eps)

    def reflect(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The reflected q and k *before* the ReLU (for invariant tests and analysis)."""
        if self.cross_head:
            q, k = cross_head_reflect(q, self.u_c), cross_head_reflect(k, self.u_c)
        if self.block_reflection:
            angle = self.angles(q, k, key_padding_mask)
            q, k = block_reflect(q, angle), block_reflect(k, angle)
        return q, k

    def truncated_input(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The reflected q and k: the ReLU's argument (``mirrorla analyze`` measures what it discards)."""
        if q.dtype in _HALF:
            q, k = q.float(), k.float()
        return self.reflect(q, k, key_padding_mask)

    def forward(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_heads(q, self.num_heads, self.head_dim)
        if q.dtype in _HALF:
            # Precision policy §1.1: the variance and 1/(σ² + ε) are evaluated in fp32.
            with torch.autocast(device_type=q.device.type, enabled=False):
                return self._features(q.float(), k.float(), key_padding_mask)
        return self._features(q, k, key_padding_mask)

    def _features(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if not self.fast_path:
            return self.reference_features(q, k, key_padding_mask)
        return self._call_op(mirror_features, q, k, key_padding_mask)

    def fold_projection(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None] | None:
        """Fold the constant part of φ into a fused qkv(g) projection, for the fast layer path.

        Returns ``(W', b')`` whose q and k row blocks (rows 0…C−1 and C…2C−1) are multiplied by
        P = S·H_c (H_c the cross-head reflection, S the odd-channel sign flip when the block
        reflection is on), so that ``F.linear(x, W', b')`` yields S·H_c·q and S·H_c·k directly;
        :meth:`prefolded_features` finishes φ from them. Costs O(C²) per call instead of
        O(N·C) per token pass. Returns None when ``fast_path`` is off.
        """
        if not self.fast_path or not (self.cross_head or self.block_reflection):
            return None
        C = self.num_heads * self.head_dim
        # Folded in fp32 (fp64 stays fp64) and rounded once: with fp16 weights the fold's backward
        # sums weight gradients (~N·|x|) over C rows in fp16 and overflowed for u_c at N = 16384 with
        # ×100 inputs, although u_c's own gradient is ~1e3.
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        u_hat = None
        if self.cross_head:
            u = self.u_c.to(dtype)
            u_hat = u / u.norm().clamp_min(1e-6)
        sign = _odd_sign_full(C, weight.to(dtype)) if self.block_reflection else None

        def fold(rows: Tensor) -> Tensor:  # rows: (C, C_in) or (C,)
            rows = rows.to(dtype)
            if u_hat is not None:
                rows = rows - 2.0 * (
                    u_hat[:, None] * (u_hat @ rows)[None] if rows.dim() == 2 else u_hat * (u_hat @ rows)
                )
            if sign is not None:
                rows = rows * (sign[:, None] if rows.dim() == 2 else sign)
            return rows.to(weight.dtype)

        w = torch.cat((fold(weight[:C]), fold(weight[C : 2 * C]), weight[2 * C :]))
        b = None if bias is None else torch.cat((fold(bias[:C]), fold(bias[C : 2 * C]), bias[2 * C :]))
        return w, b

    def prefolded_features(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """φ from q, k produced by a projection folded with :meth:`fold_projection` (same φ as forward)."""
        _check_heads(q, self.num_heads, self.head_dim)
        if not self.block_reflection:
            return F.relu(q), F.relu(k)
        if q.dtype in _HALF:
            with torch.autocast(device_type=q.device.type, enabled=False):
                return self._prefolded(q.float(), k.float(), key_padding_mask)
        return self._prefolded(q, k, key_padding_mask)

    def _prefolded(self, q, k, key_padding_mask):
        # H_c is folded into the projection: only the block reflection is left to apply.
        return self._call_op(mirror_features, q, k, key_padding_mask, cross_head=False, odd_negated=True)

    def _call_op(
        self, op, q: Tensor, k: Tensor, key_padding_mask: Tensor | None, cross_head: bool | None = None, **extra
    ):
        """``op`` (the fused :func:`mirror_features` or its naive reference) with this map's switches and parameters."""
        cross = self.cross_head if cross_head is None else cross_head
        return op(
            q,
            k,
            self.u_c if cross else None,
            self.theta if self.block_reflection else None,
            self.alpha if self.variance_modulation else None,
            variance_eps=self.variance_eps,
            detach_variance=self.detach_variance,
            variance_axis=self.variance_axis,
            key_padding_mask=key_padding_mask,
            **extra,
        )

    def reference_features(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """φ by the reference composition (one op per formula); the fast path is tested against it."""
        return self._call_op(naive_mirror_features, q, k, key_padding_mask)

    def reflection_matrix(self) -> Tensor:
        """The constant C×C matrix R = blockdiag(H_blk(θ)) · H_c (only without modulation).

        Used by :meth:`LinearAttention.fold_reflections`.
        """
        if self.variance_modulation:
            raise ValueError("the reflection depends on the input under variance_modulation; nothing to fold")
        C = self.num_heads * self.head_dim
        device, dtype = _param_device_dtype(self)
        R = torch.eye(C, device=device, dtype=dtype)
        if self.cross_head:
            R = dense_cross_head_reflection(self.u_c.detach().to(dtype)) @ R
        if self.block_reflection:
            blk = dense_block_reflection(self.theta.detach().to(dtype), self.head_dim)  # (H, D, D)
            R = torch.block_diag(*blk.unbind(0)) @ R
        return R

    def extra_repr(self) -> str:
        text = (
            f"heads={self.num_heads}, head_dim={self.head_dim}, block_reflection={self.block_reflection}, "
            f"variance_modulation={self.variance_modulation}, cross_head={self.cross_head}"
        )
        return text if self.variance_axis == "block" else f"{text}, variance_axis={self.variance_axis!r}"


register_feature_map("mirror", MirrorFeatureMap)


def _odd_sign_full(C: int, like: Tensor) -> Tensor:
    return torch.tensor([1.0, -1.0], dtype=like.dtype, device=like.device).repeat(C // 2)


def _init_theta(theta_init: str | float, H: int, J: int) -> Tensor:
    if theta_init == "uniform":
        # U[0, π) covers every 2-D reflection exactly once (H(Θ) is π-periodic).
        return torch.rand(H, J) * math.pi
    if theta_init == "zeros":
        return torch.zeros(H, J)
    if isinstance(theta_init, (int, float)) and not isinstance(theta_init, bool):
        return torch.full((H, J), float(theta_init))
    raise ValueError(f"theta_init must be 'uniform', 'zeros' or a float, got {theta_init!r}")


def _param_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters(), None)
    if p is None:
        return torch.device("cpu"), torch.float32
    return p.device, (torch.float64 if p.dtype == torch.float64 else torch.float32)


def _check_heads(x: Tensor, H: int, D: int) -> None:
    if x.dim() != 4 or x.shape[1] != H or x.shape[-1] != D:
        raise ValueError(
            f"MirrorFeatureMap(num_heads={H}, head_dim={D}) expects (B, {H}, N, {D}) tensors, got {tuple(x.shape)}"
        )
