"""FLatten's focused feature map (docs/methods.md §3).

Dimension letters: B batch, H heads, N tokens, D head dim, C = H·D.

Source: D. Han et al., "FLatten Transformer", ICCV 2023; official ``models/flatten_swin.py``,
class ``FocusedLinearAttention`` (the feature-map lines of ``forward``):

    x₁ = (ReLU(x) + 1e-6) / softplus(s)                    s ∈ R^C, init 0, shared by q and k
    φ(x) = ‖x₁‖ · x₁^{∘p} / ‖x₁^{∘p}‖                       p = 3, norms over all C channels
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.feature_maps.base import FeatureMap, fast_path_default
from mirrorla.feature_maps.registry import register_feature_map
from mirrorla.ops._checks import check_positive
from mirrorla.ops.focus import focus, focused_features

__all__ = ["FocusedFeatureMap", "focus"]

NORM_SCOPES = ("full", "head")
_HALF = (torch.float16, torch.bfloat16)


class FocusedFeatureMap(FeatureMap):
    """φ = f_p((ReLU(x) + 1e-6) / softplus(s)), FLatten's focused map, on (B, H, N, D).

    Args:
        num_heads: H. head_dim: D.
        focusing_factor: p (3, fixed, not learned).
        norm_scope: ``"full"`` (default, [Code]: norms over all C = H·D channels of a token) or
            ``"head"`` (over the D channels of each head; FLatten issue #30).
        offset: the 1e-6 added after the ReLU [Code]; keeps every entry > 0 so the norms are > 0.

    Parameters:
        ``scale`` (1, 1, C), init 0 → softplus(0) = ln 2; the official shape, channel c = head-major
        index (c // D, c % D). Not exempt from weight decay: the official Swin training code only
        exempts 1-D parameters and biases, and this one is 3-D.

    Evaluated in fp32 with autocast off (docs/methods.md §1.1, precision rule 2); float64 stays float64.
    The attribute ``fast_path`` (default on; ``mirrorla.feature_maps.base.set_fast_path`` or
    ``MIRRORLA_FAST_PATH=0``) selects :func:`mirrorla.ops.focus.focused_features`; off, the reference
    composition :func:`mirrorla.ops.focus.focus` (the same values, autograd's backward).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        *,
        focusing_factor: float = 3.0,
        norm_scope: str = "full",
        offset: float = 1e-6,
    ) -> None:
        super().__init__()
        if norm_scope not in NORM_SCOPES:
            raise ValueError(f"norm_scope must be one of {NORM_SCOPES}, got {norm_scope!r}")
        if not focusing_factor > 0:
            raise ValueError(f"focusing_factor must be > 0 (FLatten uses 3), got {focusing_factor}")
        offset = check_positive("offset", offset, "it keeps the norms positive; FLatten uses 1e-6")
        self.num_heads, self.head_dim = num_heads, head_dim
        self.focusing_factor, self.norm_scope, self.offset = float(focusing_factor), norm_scope, float(offset)
        self.scale = nn.Parameter(torch.zeros(1, 1, num_heads * head_dim))
        self.fast_path = fast_path_default()  # off: the reference composition of mirrorla.ops.focus.focus

    def channel_scale(self, dtype: torch.dtype | None = None) -> Tensor:
        """softplus(s) laid out as (1, H, 1, D) for head-split tensors, in ``dtype`` (default: s's)."""
        s = self.scale if dtype is None else self.scale.to(dtype)
        return F.softplus(s).view(1, self.num_heads, 1, self.head_dim)

    def forward(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_heads(q, k, self.num_heads, self.head_dim, type(self).__name__)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = _upcast(q), _upcast(k)
            s = self.channel_scale(q.dtype)  # fp32 even for an fp16 s: its gradient is formed in fp32
            dims = (1, 3) if self.norm_scope == "full" else (3,)
            if self.fast_path:  # focus((ReLU(·) + offset)/s) with a hand-written backward (ops/focus.py)
                phi_q = focused_features(q, s, power=self.focusing_factor, dims=dims, offset=self.offset)
                phi_k = focused_features(k, s, power=self.focusing_factor, dims=dims, offset=self.offset)
            else:
                phi_q = focus((F.relu(q) + self.offset) / s, self.focusing_factor, dims)
                phi_k = focus((F.relu(k) + self.offset) / s, self.focusing_factor, dims)
        return phi_q, phi_k

    def truncated_input(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return q, k  # the ReLU's argument; the positive scale and the focusing power keep signs

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, p={self.focusing_factor}, norm_scope={self.norm_scope}"
        )


register_feature_map("focused", FocusedFeatureMap)


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _HALF else x


def _check_heads(q: Tensor, k: Tensor, H: int, D: int, who: str) -> None:
    for name, t in (("q", q), ("k", k)):
        if t.dim() != 4 or t.shape[1] != H or t.shape[-1] != D:
            raise ValueError(
                f"{who}(num_heads={H}, head_dim={D}) expects {name} of shape (B, {H}, N, {D}), got {tuple(t.shape)}"
            )
