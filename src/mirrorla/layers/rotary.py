"""Linear attention with RoPE on the numerator: the template NaLaFormer, MLLA, RALA and MALA share.

Dimension letters: B batch, N tokens (P prefix + Hg·Wg spatial), C channels, H heads, D head dim,
F feature dim.

    num_i = φq_i R_i · mean_j (R_j φk_j)ᵀ v_j          (RoPE R on the numerator only)
    den_i = φq_i · mean_j φk_j                          (un-rotated)
    "mean" value path (MLLA, RALA):       O_i = num_i / (den_i + ε)
    "magnitude" value path (MALA):        O_i = s·num_i·(1 + 1/(s·den_i + ε)) − s·den_i·mean_j v_j,  s = D^−½

A configuration of :class:`LinearAttention` (feature map × this value path × the shared DWC branch
and gate); docs/methods.md §5 and §10–12. RALA and MALA are registry entries of subclasses here;
NaLaFormer (:mod:`mirrorla.layers.nala`) and MLLA (:mod:`mirrorla.layers.mlla`) subclass it too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mirrorla.layers.linear import LinearAttention, reject_fixed, reject_renamed
from mirrorla.ops.linear_attention import linear_attention
from mirrorla.registry import register_attention

__all__ = [
    "rotate_pairs",
    "AxialRoPE",
    "ChannelRoPE",
    "RotaryLinearAttention",
    "RankAugmentedLinearAttention",
    "MagnitudeAwareLinearAttention",
    "VALUE_PATHS",
]

VALUE_PATHS = ("mean", "magnitude")


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Channel pairs (2j, 2j+1) of x (…, D) turned by β_j: (a, b) ↦ (a cos β − b sin β, b cos β + a sin β).

    cos, sin broadcast against (…, D/2). fp32/fp64 inputs take one complex multiplication (z·e^{iβ}:
    a view of x, made contiguous, as complex numbers), whose forward and backward
    are one kernel each; interleaving the two halves with ``torch.stack`` (kept for the other dtypes) was
    the slower form on CPU (docs/peers.md, "Parity with the official modules and speed").
    """
    if x.dtype in (torch.float32, torch.float64):
        z = torch.view_as_complex(x.contiguous().unflatten(-1, (-1, 2)))  # the view needs even strides
        turn = torch.complex(cos.to(x.dtype), sin.to(x.dtype))
        return torch.view_as_real(z * turn).flatten(-2)
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)


class AxialRoPE(nn.Module):
    """2-D rotary position embedding over the token grid, NaLaFormer's ``RoPE`` + ``theta_shift``.

    Frequencies ω_i = base^{−i/(D/4 − 1)}, i = 0 … D/4 − 1 (``linspace(0, 1, D/4)`` exponents). Pair j
    (channels 2j, 2j+1) of a token at row r, column c rotates by β = r·ω_j for j < D/4 and by
    β = c·ω_{j−D/4} otherwise: (a, b) ↦ (a cos β − b sin β, b cos β + a sin β). A last dim that is a
    multiple of D (e.g. the 2D-wide feature maps) is rotated chunk by chunk. Prefix tokens: β = 0.

    Args: head_dim: D (a multiple of 4). base: 10000.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(
                f"2-D RoPE rotates D/4 row pairs and D/4 column pairs and needs head_dim % 4 == 0, got "
                f"head_dim={head_dim}; change dim/num_heads or pass rope=False"
            )
        self.head_dim = head_dim
        # [Code] NALA.py ``RoPE.__init__``: ``1.0 / (10000 ** torch.linspace(0, 1, D // 4))`` in float32.
        # The same float32 arithmetic gives the same bits (a float64 evaluation rounds differently
        # in the last bit for most D); a float64 layer uses these float32 values.
        freqs = 1.0 / (base ** torch.linspace(0, 1, head_dim // 4, dtype=torch.float32))
        self.register_buffer("freqs", freqs, persistent=False)

    def angles(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        """β (P + Hg·Wg, D/2), row-major tokens; prefix rows 0."""
        Hg, Wg = grid
        f = self.freqs
        rows = torch.arange(Hg, device=f.device, dtype=f.dtype).repeat_interleave(Wg)
        cols = torch.arange(Wg, device=f.device, dtype=f.dtype).repeat(Hg)
        beta = torch.cat([rows[:, None] * f, cols[:, None] * f], dim=-1)
        if num_prefix_tokens:
            beta = torch.cat([beta.new_zeros(num_prefix_tokens, beta.shape[-1]), beta])
        return beta

    def tables(self, grid: tuple[int, int], num_prefix_tokens: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos β and sin β, each (N, 1, D/2) in ``dtype``: built once per call and shared by q and k."""
        beta = self.angles(grid, num_prefix_tokens).to(dtype)
        return beta.cos()[:, None, :], beta.sin()[:, None, :]

    def rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, H, N, m·D) rotated by the tables of :meth:`tables`; same shape and dtype."""
        *lead, N, F = x.shape
        D = self.head_dim
        if F % D:
            raise ValueError(f"AxialRoPE(head_dim={D}) needs a last dim that is a multiple of {D}, got {F}")
        if cos.shape[0] != N:
            raise ValueError(f"the RoPE tables cover {cos.shape[0]} tokens (grid + prefix), but N={N}")
        return rotate_pairs(x.reshape(*lead, N, F // D, D), cos, sin).reshape(x.shape)

    def forward(self, x: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        """x (B, H, N, m·D) → rotated, same shape and dtype."""
        return self.rotate(x, *self.tables(grid, num_prefix_tokens, x.dtype))


class ChannelRoPE(nn.Module):
    """MLLA's 2-D RoPE over all C = H·D channels, applied before the head split.

    [Code] MLLA ``models/mlla.py`` ``RoPE(shape=(Hg, Wg, C))``: C/2 channel pairs (2i, 2i+1); pair
    p < C/4 turns by row·θ_p, pair p ≥ C/4 by col·θ_{p−C/4}, θ_k = base^(−k/(C/4)). A head sees only
    its own D/2 pairs, so with H ≥ 2 the first heads carry row phases and the last heads column phases
    (unlike :class:`AxialRoPE`, where every head carries both). The official table is float32 (built
    once at the construction grid); here it is built in float32 at the runtime grid and then cast, so
    float32 layers see the same values. Prefix tokens get angle 0.
    """

    def __init__(self, num_heads: int, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        C = num_heads * head_dim
        if C % 4 or head_dim % 2:
            raise ValueError(
                f"MLLA's RoPE turns C/4 row pairs and C/4 column pairs and needs dim % 4 == 0 and an even "
                f"head_dim, got dim={C}, head_dim={head_dim}; change dim/num_heads or pass rope=False"
            )
        self.num_heads, self.head_dim = num_heads, head_dim
        k_max = C // 4
        # [Code] ``1 / (base ** (torch.arange(k_max) / k_max))`` in float32.
        freqs = 1.0 / (base ** (torch.arange(k_max, dtype=torch.float32) / k_max))
        self.register_buffer("freqs", freqs, persistent=False)

    def tables(self, grid: tuple[int, int], num_prefix_tokens: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin, each (H, N, 1, D/2): head h holds pairs h·D/2 … (h+1)·D/2 − 1 of the C/2."""
        Hg, Wg = grid
        f = self.freqs.float()
        rows = torch.arange(Hg, device=f.device, dtype=f.dtype).repeat_interleave(Wg)
        cols = torch.arange(Wg, device=f.device, dtype=f.dtype).repeat(Hg)
        beta = torch.cat([rows[:, None] * f, cols[:, None] * f], dim=-1)  # (Hg·Wg, C/2)
        if num_prefix_tokens:
            beta = torch.cat([beta.new_zeros(num_prefix_tokens, beta.shape[-1]), beta])
        N = beta.shape[0]
        beta = beta.view(N, self.num_heads, 1, self.head_dim // 2).transpose(0, 1)  # (H, N, 1, D/2)
        return beta.cos().to(dtype), beta.sin().to(dtype)

    def rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, H, N, D) rotated pairwise by the tables of :meth:`tables`; same shape and dtype."""
        *lead, N, F = x.shape
        D = self.head_dim
        if F != D:
            raise ValueError(f"ChannelRoPE(head_dim={D}) needs features of width {D}, got {F}")
        if cos.shape[1] != N:
            raise ValueError(f"the RoPE tables cover {cos.shape[1]} tokens (grid + prefix), but N={N}")
        return rotate_pairs(x.reshape(*lead, N, 1, D), cos, sin).reshape(x.shape)

    def forward(self, x: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        return self.rotate(x, *self.tables(grid, num_prefix_tokens, x.dtype))


class RotaryLinearAttention(LinearAttention):
    """:class:`LinearAttention` whose value path rotates the numerator (module docstring).

    Args (beyond those of :class:`LinearAttention`):
        rope: RoPE on the numerator (default True); needs head_dim % 4 == 0 (per-head table).
        value_path: ``"mean"`` (default) or ``"magnitude"`` (MALA).

    The value path returns fp32 (fp64 for fp64 inputs) whatever v's dtype, as NaLaFormer's: the rotated
    numerator over the un-rotated denominator is not bounded by the values.
    """

    def __init__(self, dim: int, num_heads: int = 8, *args: Any, rope: bool = True, value_path: str = "mean", **kw):
        if value_path not in VALUE_PATHS:
            raise ValueError(f"value_path must be one of {VALUE_PATHS}, got {value_path!r}")
        super().__init__(dim, num_heads, *args, **kw)
        self.value_path = value_path
        self.rope = self._build_rope() if rope else None

    def _build_rope(self) -> nn.Module:
        return AxialRoPE(self.head_dim)

    @property
    def needs_grid(self) -> bool:
        return super().needs_grid or self.rope is not None

    def _check_causal(self, key_padding_mask: Tensor | None) -> None:
        super()._check_causal(key_padding_mask)
        if self.value_path == "magnitude":
            raise ValueError("the magnitude value path subtracts the mean of all values; it has no causal form")

    def mix(
        self,
        phi_q: Tensor,
        phi_k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None,
        causal: bool,
        grid: tuple[int, int] | None = None,
    ) -> Tensor:
        """(B, H, N, F)², (B, H, N, D) → (B, H, N, D) in fp32 (fp64 for fp64 inputs)."""
        v = v.to(phi_q.dtype)
        core = dict(
            causal=causal,
            normalize=False,
            normalizer="mean",
            key_padding_mask=key_padding_mask,
            chunk_size=self.chunk_size,
        )
        # [Code] MLLA/RALA ``z = 1 / (q @ k.mean(-2).T + 1e-6)`` and MALA ``z = q @ k.mean(-2).T · scale``:
        # the denominator from the un-rotated features.
        den = linear_attention(phi_q, phi_k, v.new_ones(*v.shape[:-1], 1), **core)
        if self.rope is not None:
            grid, P = self.grid(phi_q.shape[2], grid), self.num_prefix_tokens
            cos, sin = self.rope.tables(grid, P, phi_q.dtype)
            phi_q, phi_k = self.rope.rotate(phi_q, cos, sin), self.rope.rotate(phi_k, cos, sin)
        num = linear_attention(phi_q, phi_k, v, **core)
        if self.value_path == "mean":
            return num / (den + self.eps)
        # [Code] MALA ``res = q @ kv · (1 + 1/(z + 1e-6)) − z · v.mean(-2)`` with kv = scale/N·Σ kᵀv.
        scale = self.head_dim**-0.5
        z = den * scale
        return num * scale * (1 + 1 / (z + self.eps)) - z * _mean_values(v, key_padding_mask)

    def extra_repr(self) -> str:
        return f"value_path={self.value_path!r}"


def _mean_values(v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """mean_j v_j over the kept keys (v already zeroed at padded rows): (B, H, N, D) → (B, H, 1, D)."""
    if key_padding_mask is None:
        return v.mean(-2, keepdim=True)
    count = key_padding_mask.sum(-1).clamp_min(1).to(v.dtype)[:, None, None, None]
    return v.sum(-2, keepdim=True) / count


#: Parts RALA and MALA fix (the options that would change them raise a TypeError).
_FIXED = ("feature_map", "feature_map_kwargs", "normalizer", "dwc_shared", "gate", "out_norm", "key_pos_grid")


class RankAugmentedLinearAttention(RotaryLinearAttention):
    """RALA (RAVLT, CVPR 2025): rank-augmented ELU + 1 map, RoPE numerator, 5×5 LePE, linear gate.

    Source: official qhfan/RALA ``classfication/RALA.py`` ``GateLinearAttentionNoSilu``.

    Args (beyond the common contract of :class:`AttentionBase`):
        rank_augment: the key weights α of :class:`RankAugmentedFeatureMap` (default True).
        rope: RoPE on the numerator (default True). dwc_kernel: LePE kernel (5; 0 = off).

    Parameters (official names in brackets): ``qkv`` Linear(C, 4C) [qkvo, a 1×1 Conv2d: q, k, v, o
    blocks], ``proj`` Linear(C, C) [proj, 1×1 Conv2d]: trunc_normal(0.02), bias 0 ([Design]: the
    official 1×1 convs keep PyTorch's default, about 6× larger; with it ×100 inputs overflowed fp16 under
    autocast, and the official ``_init_weights`` gives every Linear this init); ``dwc.conv``
    Conv2d(C, C, k, groups C) [lepe], PyTorch default.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        rank_augment: bool = True,
        rope: bool = True,
        dwc_kernel: int = 5,
        **kwargs: Any,
    ) -> None:
        reject_renamed(type(self).__name__, kwargs)
        reject_fixed(type(self).__name__, kwargs, (*_FIXED, "value_path"))
        super().__init__(
            dim,
            num_heads,
            *args,
            feature_map="rank_augmented",
            feature_map_kwargs=dict(rank_augment=rank_augment),
            normalizer="mean",
            dwc_kernel=dwc_kernel,
            dwc_shared=False,
            gate="linear",
            rope=rope,
            value_path="mean",
            **kwargs,
        )


class MagnitudeAwareLinearAttention(RotaryLinearAttention):
    """MALA (MAViT, ICCV 2025): ELU + 1, magnitude-aware value path, RoPE numerator, 5×5 LePE, linear gate.

    Source: official qhfan/MALA ``classfication_release/model.py`` ``AddLinearAttention``.

    Args (beyond the common contract of :class:`AttentionBase`):
        rope: RoPE on the numerator (default True). dwc_kernel: LePE kernel (5; 0 = off).

    Parameters: as :class:`RankAugmentedLinearAttention` (official names qkvo, lepe, proj).

    Precision: [Design] under autocast the whole layer runs in fp32 (autocast off) and returns fp32. Its
    output z·v̄ − … grows like the cube of the input scale, times the gate: ×30 inputs gave 2e5 after
    the gate (beyond fp16) in the forward and NaN gradients through the fp16 projections. The official
    code has no such guard.
    """

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        device = x.device.type if isinstance(x, Tensor) else "cpu"
        if not torch.is_autocast_enabled(device):
            return super().forward(x, *args, **kwargs)
        with torch.autocast(device_type=device, enabled=False):
            return super().forward(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, *args, **kwargs)

    def __init__(self, dim: int, num_heads: int = 8, *args: Any, rope: bool = True, dwc_kernel: int = 5, **kwargs):
        reject_renamed(type(self).__name__, kwargs)
        reject_fixed(type(self).__name__, kwargs, (*_FIXED, "value_path"))
        super().__init__(
            dim,
            num_heads,
            *args,
            feature_map="elu",
            normalizer="mean",
            dwc_kernel=dwc_kernel,
            dwc_shared=False,
            gate="linear",
            rope=rope,
            value_path="magnitude",
            **kwargs,
        )


register_attention(
    "rala", RankAugmentedLinearAttention, "RALA (RAVLT): rank-augmented ELU+1, RoPE numerator, 5x5 LePE, linear gate"
)
register_attention(
    "mala", MagnitudeAwareLinearAttention, "MALA (MAViT): ELU+1, magnitude-aware values, RoPE numerator, LePE, gate"
)
