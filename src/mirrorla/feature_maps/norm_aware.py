"""NaLaFormer's norm-aware feature maps (docs/methods.md §5).

Dimension letters: B batch, H heads, N tokens, D head dim, F = 2D feature dim.

Source: W. Meng et al., "Norm×Direction: Restoring the Missing Query Norm in Vision Linear
Attention" (NaLaFormer), arXiv 2506.21137; official ``NaLaformer/NALA.py``, class
``NormAwareLinearAttn``.

Two forms, selected by ``form``:

* ``"code"`` (default) — the released code [Code]:
  k₁ = ReLU(k)³, k₂ = ReLU(−k)³;  r = ‖q‖ over D;  p = 3·(0.5 + tanh r);
  q₁ = (ReLU(q)/r)^p, q₂ = (ReLU(−q)/r)^p;  φq = [q₁ ; q₂], φk = [k₁ ; k₂]  (same-sign scores only).
* ``"cosine"`` — the paper's cosine-inhibit form [Paper, unverified; see §5.2]:
  m_q = |q/r|^{p(r)}, m_k = |k|^λ, θ_x = (π/4)·tanh(a·x/‖x‖) elementwise;
  φq = [m_q cos θ_q ; m_q sin θ_q], φk = [m_k cos θ_k ; m_k sin θ_k];
  φq·φk = Σ_c m_q m_k cos(θ_q − θ_k) ≥ 0 because |θ| < π/4. Features can be negative; scores can't.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mirrorla.feature_maps.base import FeatureMap
from mirrorla.feature_maps.focused import _check_heads, _upcast
from mirrorla.feature_maps.registry import register_feature_map
from mirrorla.ops._checks import check_positive

__all__ = ["NormAwareFeatureMap", "NALA_FORMS", "norm_aware_power"]

NALA_FORMS = ("code", "cosine")


def norm_aware_power(r: Tensor, lam: float = 3.0) -> Tensor:
    """p(r) = λ·(0.5 + tanh r) ∈ [λ/2, 3λ/2): a larger query norm → a larger power → a spikier map."""
    return lam * (0.5 + torch.tanh(r))


class NormAwareFeatureMap(FeatureMap):
    """Query-norm-aware power on the query direction, fixed power λ on the key; no parameters.

    Args:
        num_heads: H. head_dim: D.
        form: ``"code"`` (released code, default) or ``"cosine"`` (paper form).
        lam: λ = 3, the key power and the scale of the query power (hard-coded in the sources).
        phase_scale: a = 20, the slope of the phase θ (cosine form only).
        norm_eps: r = max(‖q‖, norm_eps). [Design] The official code divides by ‖q‖ without ε, so
            q = 0 gives NaN; the clamp changes nothing when ‖q‖ ≥ 1e-6.

    ``feature_dim(D) = 2D``. Evaluated in fp32 with autocast off (the official layer casts q, k, v
    to fp32 too).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        *,
        form: str = "code",
        lam: float = 3.0,
        phase_scale: float = 20.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if form not in NALA_FORMS:
            raise ValueError(f"form must be one of {NALA_FORMS}, got {form!r}")
        lam = check_positive("lam", lam, "the key power and the scale of the query power; NaLaFormer uses 3")
        phase_scale = check_positive("phase_scale", phase_scale, "the slope of the cosine form's phase; 20")
        norm_eps = check_positive("norm_eps", norm_eps, "the floor of the query norm r that divides q; 1e-6")
        self.num_heads, self.head_dim = num_heads, head_dim
        self.form, self.lam, self.phase_scale, self.norm_eps = form, lam, phase_scale, norm_eps
        # The cosine form's features can be negative (its scores cannot: |θ| < π/4).
        self.non_negative = form == "code"

    def feature_dim(self, head_dim: int) -> int:
        return 2 * head_dim

    def forward(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_heads(q, k, self.num_heads, self.head_dim, type(self).__name__)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = _upcast(q), _upcast(k)
            r = q.norm(dim=-1, keepdim=True).clamp_min(self.norm_eps)  # (B, H, N, 1)
            p = norm_aware_power(r, self.lam)
            if self.form == "code":
                phi_q = torch.cat([(F.relu(q) / r) ** p, (F.relu(-q) / r) ** p], dim=-1)
                phi_k = torch.cat([F.relu(k) ** self.lam, F.relu(-k) ** self.lam], dim=-1)
                return phi_q, phi_k
            m_q = (q.abs() / r) ** p
            m_k = k.abs() ** self.lam
            theta_q = (math.pi / 4) * torch.tanh(self.phase_scale * q / r)
            r_k = k.norm(dim=-1, keepdim=True).clamp_min(self.norm_eps)
            theta_k = (math.pi / 4) * torch.tanh(self.phase_scale * k / r_k)
            phi_q = torch.cat([m_q * torch.cos(theta_q), m_q * torch.sin(theta_q)], dim=-1)
            phi_k = torch.cat([m_k * torch.cos(theta_k), m_k * torch.sin(theta_k)], dim=-1)
            return phi_q, phi_k

    def truncated_input(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[()]:
        return ()  # the positive and the negative half are both kept, as two feature blocks

    def extra_repr(self) -> str:
        extra = f", phase_scale={self.phase_scale}" if self.form == "cosine" else ""
        return f"heads={self.num_heads}, head_dim={self.head_dim}, form={self.form!r}, lam={self.lam}{extra}"


register_feature_map("norm_aware", NormAwareFeatureMap)
