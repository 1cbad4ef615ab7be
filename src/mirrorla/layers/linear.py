"""The linear attention layer: a configuration of shared parts (STYLE.md).

    x → qkv(g) projection → [k ← k + P] → feature map φ → value path (:meth:`mix`) → merge heads
      → [+ DWC(V)] → [LayerNorm] → [⊙ gate] → proj

Dimension letters: B batch, N tokens (P prefix + Hg·Wg spatial), C channels, H heads, D head dim,
F feature dim.

A method is a feature map (by name, :mod:`mirrorla.feature_maps`) × a value path × optional parts:
the depthwise-conv branch on V, the learned key position table P, the output LayerNorm and the
gate. FLatten and MirrorLA are registry entries of this class; a subclass exists only where a
method changes how values are mixed (PolaFormer's two streams, NaLaFormer's RoPE numerator,
L²ViT's temperature).

The token grid (Hg, Wg) is resolved once per call and passed down as an argument
(``project(x, grid)``, ``mix(..., grid)``); nothing about a call is stored on the module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.feature_maps import FeatureMap, ReLUFeatureMap, create_feature_map, feature_map_options
from mirrorla.layers.base import AttentionBase
from mirrorla.layers.parts import DepthwiseConvBranch, LearnedPositionEmbedding
from mirrorla.ops._checks import check_positive
from mirrorla.ops.linear_attention import NORMALIZERS, linear_attention
from mirrorla.registry import register_attention

__all__ = ["LinearAttention", "GATES", "RENAMED_OPTIONS", "reject_fixed", "reject_renamed"]

GATES = (None, "linear", "silu")

#: Constructor options renamed in the layer refactor (old name → the one option that replaces it).
#: Passing an old name raises a TypeError that names the new one; nothing is silently dropped.
RENAMED_OPTIONS = {
    "kernel_size": "dwc_kernel (0 turns the depthwise-conv branch off)",
    "pe": "key_pos_grid (None turns the key position table off)",
    "pe_grid": "key_pos_grid",
}
#: Options removed because a benchmark showed them slower here (docs/efficiency.md, "MirrorLA backend").
REMOVED_OPTIONS = {
    "core_dtype": "the layer runs its core in fp32 (bf16 was 1.3x slower on CPU); the op "
    "mirrorla.ops.linear_attention still takes core_dtype",
    "compile": "torch.compile of the feature map was 1.27x slower on CPU; compile the whole model instead",
}


def reject_renamed(who: str, kwargs: dict[str, Any]) -> None:
    for old, new in RENAMED_OPTIONS.items():
        if old in kwargs:
            raise TypeError(f"{who}: option {old!r} was renamed; use {new}")
    for old, why in REMOVED_OPTIONS.items():
        if old in kwargs:
            raise TypeError(f"{who}: option {old!r} was removed: {why}")


def reject_fixed(who: str, kwargs: dict[str, Any], names: tuple[str, ...]) -> None:
    """Raise for options a method fixes (they would otherwise be silently overridden)."""
    for name in names:
        if name in kwargs:
            raise TypeError(
                f"{who} fixes {name!r} (it is part of the method's definition); use LinearAttention to "
                "combine parts differently"
            )


class LinearAttention(AttentionBase):
    """Normalised linear attention with optional key position table, DWC branch, output norm and gate.

    Args (beyond the common contract of :class:`AttentionBase`):
        feature_map: a name in :func:`mirrorla.feature_maps.list_feature_maps` (``"relu"``,
            ``"mirror"``, ``"focused"``, ...) or a callable ``(num_heads, head_dim) -> FeatureMap``.
        feature_map_kwargs: options of a named feature map. Options of the named map may also be
            given directly as keyword arguments (``variance_modulation=False`` for ``"mirror"``);
            any other unknown keyword raises a TypeError.
        normalizer, eps, min_denominator, chunk_size: passed to
            :func:`mirrorla.ops.linear_attention`; ``eps`` and ``min_denominator`` must be finite
            numbers > 0 (``eps`` is unused when ``min_denominator`` is set).
        dwc_kernel: 0 (off) or an odd kernel size: O ← O + DWC(V) over the token grid.
        dwc_shared: one D-channel kernel shared by the heads (FLatten/PolaFormer) or C kernels.
        key_pos_grid: ``None`` (off) or the construction grid (Hp, Wp) of a learned, zero-init table
            P (1, Hp·Wp, C) added to the keys after the projection, k ← k + P (FLatten, PolaFormer;
            resized bicubically at other grids, see :class:`LearnedPositionEmbedding`).
        out_norm: LayerNorm(C) after the DWC add, before the gate. With it, the value path's output
            stays fp32 up to and including the norm (autocast off), then takes v's dtype: that
            output is not bounded by the values (NaLaFormer's rotated numerator over an un-rotated
            denominator reaches 1e5 at ×100 inputs), and an fp16 cast before the norm gave inf → NaN.
        gate: ``None``, ``"linear"`` (O ⊙ g) or ``"silu"`` (O ⊙ SiLU(g)); g = W_g x + b comes from a
            fused qkvg projection.

    Parameters: ``qkv`` Linear(C, 3C or 4C), ``proj`` Linear(C, C): trunc_normal(0.02), bias 0;
    ``feature_map.*``; ``dwc.conv``; ``out_norm``; ``pos_embed.weight`` (1, Hp·Wp, C) init 0.
    """

    #: The constructor option that sizes a learned table by the token grid. A backbone that builds
    #: one layer per stage passes the stage's grid through it when the table is on, as the official
    #: PVT models do.
    build_grid_option = "key_pos_grid"

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        feature_map: str | Callable[[int, int], FeatureMap] = "relu",
        feature_map_kwargs: dict[str, Any] | None = None,
        normalizer: str = "mean",
        eps: float = 1e-6,
        min_denominator: float | None = None,
        dwc_kernel: int = 0,
        dwc_shared: bool = False,
        key_pos_grid: tuple[int, int] | None = None,
        out_norm: bool = False,
        gate: str | None = None,
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        reject_renamed(type(self).__name__, kwargs)
        fm_kwargs = dict(feature_map_kwargs or {})
        if isinstance(feature_map, str):
            for name in feature_map_options(feature_map) & set(kwargs):
                if name in fm_kwargs:
                    raise TypeError(f"{name!r} given both directly and in feature_map_kwargs")
                fm_kwargs[name] = kwargs.pop(name)
        elif fm_kwargs:
            raise TypeError("feature_map_kwargs needs a feature map name; a callable takes (num_heads, head_dim)")
        super().__init__(dim, num_heads, *args, **kwargs)
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if isinstance(feature_map, str):
            self.feature_map = create_feature_map(feature_map, num_heads, self.head_dim, **fm_kwargs)
        else:
            self.feature_map = feature_map(num_heads, self.head_dim)
        if not isinstance(self.feature_map, FeatureMap):
            raise TypeError(f"feature_map must build a FeatureMap, got {type(self.feature_map).__name__}")
        eps = check_positive("eps", eps, "it keeps the denominator φq·z + eps away from 0; the default is 1e-6")
        if min_denominator is not None:
            min_denominator = check_positive(
                "min_denominator", min_denominator, "it bounds the denominator from below; L²ViT uses 100"
            )
        self.normalizer, self.eps, self.min_denominator = normalizer, eps, min_denominator
        self.chunk_size = chunk_size
        self.gate = gate
        self.qkv = self._input_linear(4 if gate else 3)
        self.dwc = DepthwiseConvBranch(num_heads, self.head_dim, dwc_kernel, dwc_shared) if dwc_kernel else None
        self.out_norm = nn.LayerNorm(dim, **self._factory) if out_norm else None
        self.pos_embed = LearnedPositionEmbedding(dim, tuple(key_pos_grid)) if key_pos_grid is not None else None
        self._init_linear(self.qkv, self.proj)

    @property
    def needs_grid(self) -> bool:
        """Whether a part works on the token grid (then ``forward`` resolves it and passes it down)."""
        return self.dwc is not None or self.pos_embed is not None

    def no_weight_decay(self) -> set[str]:
        fm = getattr(self.feature_map, "no_weight_decay", None)
        return {f"feature_map.{n}" for n in fm()} if fm else set()

    def project(
        self, x: Tensor, grid: tuple[int, int] | None = None, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x (B, N, C) → q, k, v (B, H, N, D) and the gate g (B, N, C) or None.

        With the key position table, ``grid`` is the (Hg, Wg) of the N − P spatial tokens (default:
        a square of N − P, which raises for a non-square count). ``key_padding_mask`` is unused here
        (``forward`` zeroes the padded values afterwards); a projection that mixes tokens before the
        values exist (MLLA's input convolution) zeroes the padded rows with it.
        """
        q, k, v, g = self._split_qkv(self.qkv(x))
        if self.pos_embed is not None:
            N = x.shape[1]
            # [Code] FLatten/PolaFormer: k = k + positional_encoding, on all C channels, before the map.
            pe = self.pos_embed(self.grid(N, grid), self.num_prefix_tokens)  # (1, N, C)
            k = k + self.split_heads(pe).to(k.dtype)
        return q, k, v, g

    def _split_qkv(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        B, N, _ = t.shape
        # Channel blocks of the fused projection as views; their backward is one concatenation (indexing a
        # permuted (3, B, H, N, D) view instead zero-fills and copies the whole gradient).
        # Explicit sizes (not -1): an empty batch or sequence has no size to infer.
        parts = t.split(self.dim, dim=-1)
        q, k, v = (p.view(B, N, self.num_heads, self.head_dim).transpose(1, 2) for p in parts[:3])
        return q, k, v, parts[3] if self.gate else None

    def mix(
        self,
        phi_q: Tensor,
        phi_k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None,
        causal: bool,
        grid: tuple[int, int] | None = None,
    ) -> Tensor:
        """The value path: (B, H, N, F), (B, H, N, F), (B, H, N, D) → (B, H, N, D). Grid unused here."""
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
            state_scale=self.state_scale(),
        )

    def state_scale(self) -> Tensor | None:
        """A factor of the state S = φKᵀV (not of z), per head (H, 1, 1) or value channel; None here (L²ViT: τ)."""
        return None

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        grid: tuple[int, int] | None = None,
    ) -> Tensor:
        """The attention core without projections: feature map, then :meth:`mix`.

        q, k, v (B, H, N, D) as :meth:`project` returns them → (B, H, N, D). Padded values must
        already be zeroed (``forward`` does it). ``grid``: as in :meth:`project`.
        """
        phi_q, phi_k = self.feature_map(q, k, key_padding_mask)
        return self.mix(phi_q, phi_k, v, key_padding_mask, causal, grid)

    def forward(
        self,
        x: Tensor,
        hw: tuple[int, int] | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        self.check_input(x, key_padding_mask, hw)  # a given hw must fit N even when no part needs the grid
        if attn_mask is not None:
            raise ValueError(
                f"{type(self).__name__} is a linear attention and cannot honour an arbitrary attn_mask in "
                "O(N); use key_padding_mask (B, N) for padding or is_causal=True for causal masking"
            )
        if is_causal:
            self._check_causal(key_padding_mask)
        grid = self.grid(x.shape[1], hw) if self.needs_grid else None
        # Fast path (docs/efficiency.md, "MirrorLA backend"): a map with a constant linear part (MirrorLA's
        # H_c and sign flip) folds it into the q, k rows of the projection, O(C²) per call instead of a
        # per-token pass. Not with the key table: P is added before the map, so it cannot be folded.
        folded = (
            None if self.pos_embed is not None else self.feature_map.fold_projection(self.qkv.weight, self.qkv.bias)
        )
        if folded is not None:
            q, k, v, g = self._split_qkv(F.linear(x, *folded))
        else:
            q, k, v, g = self.project(x, grid, key_padding_mask)
        if key_padding_mask is not None:
            v = v * key_padding_mask[:, None, :, None].to(v.dtype)
        if folded is not None:
            phi_q, phi_k = self.feature_map.prefolded_features(q, k, key_padding_mask)
            o = self.merge_heads(self.mix(phi_q, phi_k, v, key_padding_mask, is_causal, grid))
        else:
            o = self.merge_heads(self.attend(q, k, v, key_padding_mask, is_causal, grid))
        if self.dwc is not None:
            o = o + self.dwc(v, grid, self.num_prefix_tokens)
        if self.out_norm is not None:
            o = _layer_norm_fp32(self.out_norm, o)
        o = o.to(v.dtype)
        if g is not None:
            o = o * (F.silu(g) if self.gate == "silu" else g)
        return self.proj_drop(self.proj(o))

    @torch.no_grad()
    def fold_reflections(self) -> LinearAttention:
        """Multiply the feature map's constant reflection R (MirrorLA: R = H_blk(θ)·H_c) into the q
        and k rows of ``qkv`` (inference); the map becomes a plain ReLU and outputs are unchanged.

        Only possible without variance modulation (then R does not depend on the input). Returns self.
        """
        matrix = getattr(self.feature_map, "reflection_matrix", None)
        if matrix is None:
            raise ValueError(
                f"{type(self.feature_map).__name__} has no constant reflection to fold (already folded, "
                "or not a MirrorLA feature map)"
            )
        R = matrix().to(self.qkv.weight.dtype)
        C = self.dim
        w = self.qkv.weight
        w[:C] = R @ w[:C]
        w[C : 2 * C] = R @ w[C : 2 * C]
        if self.qkv.bias is not None:
            b = self.qkv.bias
            b[:C] = R @ b[:C]
            b[C : 2 * C] = R @ b[C : 2 * C]
        self.feature_map = ReLUFeatureMap()
        return self

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


register_attention("linear_relu", LinearAttention, "linear attention, φ = ReLU", feature_map="relu")
register_attention("linear_elu", LinearAttention, "linear attention, φ = ELU + 1", feature_map="elu")


def _layer_norm_fp32(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """``norm(x)`` evaluated in fp32 (fp64 stays fp64) with autocast off, returned in that dtype."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    weight = None if norm.weight is None else norm.weight.to(dtype)
    bias = None if norm.bias is None else norm.bias.to(dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.layer_norm(x.to(dtype), norm.normalized_shape, weight, bias, norm.eps)
