"""The linear attention layer: a configuration of shared parts (STYLE.md).

    x → qkv(g) projection → feature map φ → linear-attention core → merge heads
      → [+ DWC(V)] → [LayerNorm] → [⊙ gate] → proj

Dimension letters: B batch, N tokens, C channels, H heads, D head dim, F feature dim.
Subclasses change one part: the feature map (MirrorLA), or the value path (:meth:`mix`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.feature_maps import ELUFeatureMap, FeatureMap, ReLUFeatureMap
from mirrorla.layers.base import AttentionBase
from mirrorla.layers.parts import DepthwiseConvBranch
from mirrorla.ops._checks import check_positive
from mirrorla.ops.linear_attention import NORMALIZERS, linear_attention

__all__ = ["LinearAttention", "FEATURE_MAPS", "GATES"]

FEATURE_MAPS: dict[str, Callable[[int, int], FeatureMap]] = {
    "relu": lambda num_heads, head_dim: ReLUFeatureMap(),
    "elu": lambda num_heads, head_dim: ELUFeatureMap(),
}
GATES = (None, "linear", "silu")


class LinearAttention(AttentionBase):
    """Normalised linear attention with optional depthwise-conv branch, output norm and gate.

    Args (beyond the common contract of :class:`AttentionBase`):
        feature_map: a name in :data:`FEATURE_MAPS` or a callable ``(num_heads, head_dim) -> FeatureMap``.
        normalizer, eps, min_denominator, core_dtype, chunk_size: passed to
            :func:`mirrorla.ops.linear_attention`; ``eps`` and ``min_denominator`` must be finite
            numbers > 0 (``eps`` is unused when ``min_denominator`` is set).
        dwc_kernel: 0 (off) or an odd kernel size: O ← O + DWC(V) over the token grid.
        dwc_shared: one D-channel kernel shared by the heads (FLatten/PolaFormer) or C kernels.
        out_norm: LayerNorm(C) after the DWC add, before the gate. With it, the value path's output
            stays fp32 up to and including the norm (autocast off), then takes v's dtype: that
            output is not bounded by the values (NaLaFormer's rotated numerator over an un-rotated
            denominator reaches 1e5 at ×100 inputs), and an fp16 cast before the norm gave inf → NaN.
        gate: ``None``, ``"linear"`` (O ⊙ g) or ``"silu"`` (O ⊙ SiLU(g)); g = W_g x + b comes from a
            fused qkvg projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_prefix_tokens: int = 0,
        *,
        feature_map: str | Callable[[int, int], FeatureMap] = "relu",
        normalizer: str = "mean",
        eps: float = 1e-6,
        min_denominator: float | None = None,
        dwc_kernel: int = 0,
        dwc_shared: bool = False,
        out_norm: bool = False,
        gate: str | None = None,
        core_dtype: str = "float32",
        chunk_size: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, num_prefix_tokens, **kwargs)
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if isinstance(feature_map, str):
            if feature_map not in FEATURE_MAPS:
                raise ValueError(f"unknown feature_map {feature_map!r}; valid: {sorted(FEATURE_MAPS)}")
            feature_map = FEATURE_MAPS[feature_map]
        self.feature_map = feature_map(num_heads, self.head_dim)
        if not isinstance(self.feature_map, FeatureMap):
            raise TypeError(f"feature_map must build a FeatureMap, got {type(self.feature_map).__name__}")
        eps = check_positive("eps", eps, "it keeps the denominator φq·z + eps away from 0; the default is 1e-6")
        if min_denominator is not None:
            min_denominator = check_positive(
                "min_denominator", min_denominator, "it bounds the denominator from below; L²ViT uses 100"
            )
        self.normalizer, self.eps, self.min_denominator = normalizer, eps, min_denominator
        self.core_dtype, self.chunk_size = core_dtype, chunk_size
        self.gate = gate
        n_proj = 4 if gate else 3
        self.qkv = self._input_linear(n_proj)
        self.dwc = DepthwiseConvBranch(num_heads, self.head_dim, dwc_kernel, dwc_shared) if dwc_kernel else None
        self.out_norm = nn.LayerNorm(dim, **self._factory) if out_norm else None
        self._init_linear(self.qkv, self.proj)

    def no_weight_decay(self) -> set[str]:
        fm = getattr(self.feature_map, "no_weight_decay", None)
        return {f"feature_map.{n}" for n in fm()} if fm else set()

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x (B, N, C) → q, k, v (B, H, N, D) and the gate g (B, N, C) or None."""
        return self._split_qkv(self.qkv(x))

    def _split_qkv(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        B, N, _ = t.shape
        # Explicit sizes (not -1): an empty batch or sequence has no size to infer.
        parts = t.view(B, N, 4 if self.gate else 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        g = parts[3].transpose(1, 2).reshape(B, N, self.dim) if self.gate else None
        return parts[0], parts[1], parts[2], g

    def _folded_projection(self, x: Tensor):
        """Fast path: q, k with the feature map's constant transform folded into the weights, or None.

        A feature map may offer ``fold_projection(W, b)`` (MirrorLA: the cross-head reflection and a
        sign flip, O(C²) per call) and ``prefolded_features(q, k, mask)``; then the per-token passes
        of those transforms disappear. Subclasses that override :meth:`project` keep their own path.
        """
        fold = getattr(self.feature_map, "fold_projection", None)
        if fold is None or type(self).project is not LinearAttention.project:
            return None
        folded = fold(self.qkv.weight, self.qkv.bias)
        if folded is None:
            return None
        return self._split_qkv(F.linear(x, *folded))

    def mix(self, phi_q: Tensor, phi_k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool) -> Tensor:
        """The value path: (B, H, N, F), (B, H, N, F), (B, H, N, D) → (B, H, N, D)."""
        return linear_attention(
            phi_q,
            phi_k,
            v,
            causal=causal,
            normalizer=self.normalizer,
            eps=self.eps,
            min_denominator=self.min_denominator,
            key_padding_mask=key_padding_mask,
            chunk_size=self.chunk_size,
            core_dtype=self.core_dtype,
        )

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """The attention core without projections: feature map, then :meth:`mix`.

        q, k, v (B, H, N, D) as :meth:`project` returns them → (B, H, N, D). Padded values must
        already be zeroed (``forward`` does it).
        """
        phi_q, phi_k = self.feature_map(q, k, key_padding_mask)
        return self.mix(phi_q, phi_k, v, key_padding_mask, causal)

    def forward(
        self,
        x: Tensor,
        hw: tuple[int, int] | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        self.check_input(x, key_padding_mask, hw)
        if attn_mask is not None:
            raise ValueError(
                f"{type(self).__name__} is a linear attention and cannot honour an arbitrary attn_mask in "
                "O(N); use key_padding_mask (B, N) for padding or is_causal=True for causal masking"
            )
        if is_causal:
            self._check_causal(key_padding_mask)
        N = x.shape[1]
        folded = self._folded_projection(x)
        q, k, v, g = folded if folded is not None else self.project(x)
        if key_padding_mask is not None:
            v = v * key_padding_mask[:, None, :, None].to(v.dtype)
        if folded is not None:
            phi_q, phi_k = self.feature_map.prefolded_features(q, k, key_padding_mask)
            o = self.merge_heads(self.mix(phi_q, phi_k, v, key_padding_mask, is_causal))
        else:
            o = self.merge_heads(self.attend(q, k, v, key_padding_mask, is_causal))
        if self.dwc is not None:
            o = o + self.dwc(v, self.grid(N, hw), self.num_prefix_tokens)
        if self.out_norm is not None:
            o = _layer_norm_fp32(self.out_norm, o)
        o = o.to(v.dtype)
        if g is not None:
            o = o * (F.silu(g) if self.gate == "silu" else g)
        return self.proj_drop(self.proj(o))

    def _check_causal(self, key_padding_mask: Tensor | None) -> None:
        if not self.feature_map.token_local:
            raise ValueError(
                f"{type(self.feature_map).__name__} uses a statistic over the whole sequence, which would "
                "leak future tokens under is_causal=True; disable it (e.g. variance_modulation=False)"
            )
        if self.dwc is not None:
            raise ValueError("the depthwise-conv branch mixes future tokens; use dwc_kernel=0 with is_causal=True")
        if key_padding_mask is not None:
            raise ValueError("key_padding_mask is not supported together with is_causal=True")
        if self.min_denominator is not None:
            raise ValueError("min_denominator is only defined for non-causal attention")


def _layer_norm_fp32(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """``norm(x)`` evaluated in fp32 (fp64 stays fp64) with autocast off, returned in that dtype."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    weight = None if norm.weight is None else norm.weight.to(dtype)
    bias = None if norm.bias is None else norm.bias.to(dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.layer_norm(x.to(dtype), norm.normalized_shape, weight, bias, norm.eps)
