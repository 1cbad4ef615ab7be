"""L²ViT's token mixers and local parts (docs/methods.md §6).

Dimension letters: B batch, N tokens, C channels, H heads, D head dim, Hg×Wg the token grid,
w the window side, nW the number of windows per image.

Source: C. Zheng, "The Linear Attention Resurrection in Vision Transformer", arXiv 2501.16182;
official code github.com/ChuanyangZheng/L2ViT, ``classification/models/l2vit.py`` (classes
``LinearAttention``, ``WindowAttention``, ``LWABlock``, ``LCM``, ``CPE``).

* :class:`LinearGlobalAttention` (LGA, registered ``l2vit_lga``): ReLU linear attention, sum
  normaliser clamped from below at 100, per-head scale τ on the key-value state. A pure token
  mixer (no grid needed), so it fits timm's ``attn_layer=`` hook.
* :class:`LocalWindowAttention` (LWA, registered ``window_softmax``): softmax inside
  non-overlapping w×w windows, no shift, no relative position bias, grid zero-padded to a
  multiple of w. Padded keys are masked by default; ``l2vit_compat=True`` lets them take part as
  the official code does.
* :class:`LocalConcentrationModule` (LCM) and :class:`ConvPositionEncoding` (CPE) are block-level
  parts: a block adds them as residual branches around the attention (§6.3); they are not inside
  the attention op.

Both block-level parts accept tokens (B, N, C) with the grid ``hw=(Hg, Wg)`` (the official
calling convention; a square grid is inferred when ``hw`` is omitted) *or* a feature map
(B, C, Hg, Wg), and return the same layout they were given.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.layers.base import AttentionBase
from mirrorla.layers.fused import use_fused_attn
from mirrorla.layers.linear import LinearAttention
from mirrorla.layers.parts import resolve_grid
from mirrorla.ops.softmax import softmax_attention
from mirrorla.registry import register_attention

__all__ = [
    "LinearGlobalAttention",
    "LocalWindowAttention",
    "LocalConcentrationModule",
    "ConvPositionEncoding",
    "L2VIT_MIN_DENOMINATOR",
]

#: The clamp of the LGA denominator, ``torch.clamp(q·Σk, 1e2)`` in the official ``LinearAttention``.
L2VIT_MIN_DENOMINATOR = 100.0


class LinearGlobalAttention(LinearAttention):
    """L²ViT linear global attention (LGA), docs/methods.md §6.1.

    ``O_i = τ_h · φq_iᵀ (Σ_j φk_j v_jᵀ) / max(φq_iᵀ Σ_j φk_j, 100)`` with φ = ReLU, then ``proj``.

    Args (beyond the common contract of :class:`AttentionBase`):
        min_denominator: the clamp of the denominator (official 100; [Code] credits it with
            stability and accuracy, and below 100 it also shrinks the output, see §6.1).
        temperature_init: initial τ; ``None`` = D^-1/2 as in the official code.

    Parameters:
        ``qkv`` Linear(C, 3C, bias=qkv_bias), ``proj`` Linear(C, C): trunc_normal(0.02), bias 0.
        ``temperature`` (H, 1, 1): τ per head, init D^-1/2. The shape is the official one so that
        official state dicts load unchanged.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        min_denominator: float = L2VIT_MIN_DENOMINATOR,
        temperature_init: float | None = None,
        **kwargs,
    ) -> None:
        for fixed in ("feature_map", "feature_map_kwargs", "normalizer", "eps", "gate", "dwc_kernel", "out_norm"):
            if fixed in kwargs:
                raise TypeError(
                    f"LinearGlobalAttention fixes {fixed!r} (ReLU map, clamped sum normaliser, no DWC/gate/"
                    "norm); use LinearAttention to combine other parts"
                )
        super().__init__(
            dim,
            num_heads,
            *args,
            feature_map="relu",
            normalizer="sum",
            min_denominator=float(min_denominator),
            **kwargs,
        )
        tau = self.head_dim**-0.5 if temperature_init is None else float(temperature_init)
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), tau, **self._factory))

    def state_scale(self) -> Tensor:
        # τ multiplies the state S = φKᵀV only (not the denominator); [Code] comment: "add scale on
        # attn out is better than add scale on k". A per-head scalar on S equals one on the output; the
        # shared value path applies it to the (F, D) state, not to the (N, D) output.
        return self.temperature


register_attention(
    "l2vit_lga", LinearGlobalAttention, "L²ViT linear global attention: ReLU, τ on the kv state, denominator ≥ 100"
)


class LocalWindowAttention(AttentionBase):
    """Softmax attention inside non-overlapping w×w windows (L²ViT's LWA), docs/methods.md §6.3.

    qkv Linear(C, 3C, bias=qkv_bias), scale D^-1/2, no shift, no relative position bias. When
    Hg or Wg is not a multiple of w, the grid is zero-padded at the bottom/right (in a block this
    happens after LN₁, as in the official code) and cropped back afterwards.

    Args (beyond :class:`AttentionBase`):
        window_size: w (7; the official 384 model uses 12).
        l2vit_compat: ``False`` (default) masks the padded keys, so each real token attends to
            real tokens only [Design]. ``True`` lets the padded zero tokens act as keys (their
            keys/values are the qkv bias), reproducing the official ``LWABlock`` exactly.

    ``key_padding_mask`` (B, N) is honoured inside every window. ``attn_mask`` and ``is_causal``
    raise (an N×N mask does not map onto windows). Prefix tokens are not supported.
    The ``fused`` attribute selects SDPA or the explicit matrix, as in :class:`SoftmaxAttention`.
    """

    is_linear = False
    #: Windows tile the spatial grid; a cls token has no window (the constructor rejects P > 0).
    supports_prefix_tokens = False

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        window_size: int = 7,
        l2vit_compat: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, *args, **kwargs)
        if not isinstance(window_size, int) or window_size <= 0:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
        if self.num_prefix_tokens:
            raise ValueError(
                "LocalWindowAttention partitions the spatial grid into windows and has no place for prefix "
                f"(cls) tokens; got num_prefix_tokens={self.num_prefix_tokens}, use 0"
            )
        self.window_size = window_size
        self.l2vit_compat = bool(l2vit_compat)
        self.qkv = self._input_linear(3)
        self.fused = use_fused_attn()
        self._init_linear(self.qkv, self.proj)

    def forward(
        self,
        x: Tensor,
        hw: tuple[int, int] | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """x (B, N, C) with N = Hg·Wg → (B, N, C)."""
        self.check_input(x, key_padding_mask, hw)
        if attn_mask is not None:
            raise ValueError(
                "LocalWindowAttention cannot honour an arbitrary (N, N) attn_mask; use key_padding_mask (B, N)"
            )
        if is_causal:
            raise ValueError("LocalWindowAttention is bidirectional inside each window; is_causal=True is undefined")
        B, N, C = x.shape
        Hg, Wg = self.grid(N, hw)
        w = self.window_size
        pad_b, pad_r = (-Hg) % w, (-Wg) % w
        Hp, Wp = Hg + pad_b, Wg + pad_r
        img = F.pad(x.view(B, Hg, Wg, C), (0, 0, 0, pad_r, 0, pad_b))  # zeros after the LN, as official

        # keep (B, Hp, Wp): which keys may be attended to; None when every key may.
        keep = None
        if key_padding_mask is not None:
            keep = F.pad(key_padding_mask.view(B, Hg, Wg), (0, pad_r, 0, pad_b), value=self.l2vit_compat)
        elif (pad_b or pad_r) and not self.l2vit_compat:
            keep = F.pad(x.new_ones(B, Hg, Wg, dtype=torch.bool), (0, pad_r, 0, pad_b), value=False)

        windows = _window_partition(img, w)  # (B·nW, w², C)
        Bw, L, _ = windows.shape
        q, k, v = self.qkv(windows).view(Bw, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None
        if keep is not None:
            mask = _window_partition(keep.unsqueeze(-1), w).view(Bw, 1, 1, L)
            # A window whose keys are all masked holds only masked or padded queries (every window
            # contains a real token), whose outputs are discarded; let them attend everywhere so
            # that softmax stays finite instead of 0/0.
            mask = mask | ~mask.any(-1, keepdim=True)
        o = softmax_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop_p if self.training else 0.0, fused=self.fused
        )
        o = _window_reverse(self.merge_heads(o), w, B, Hp, Wp)[:, :Hg, :Wg]
        return self.proj_drop(self.proj(o.reshape(B, N, C)))


register_attention(
    "window_softmax", LocalWindowAttention, "softmax in non-overlapping 7x7 windows, padded keys masked (L²ViT LWA)"
)


class LocalConcentrationModule(nn.Module):
    """LCM(x) = DW7(BN(GELU(DW7(x)))), docs/methods.md §6.2: the branch only, the block adds the residual.

    Official block: ``x = x + DropPath(LCM(LN₃(x)))`` after the LGA residual. GELU comes before BN;
    no pointwise conv, no expansion.

    Args:
        dim: C. kernel_size: depthwise kernel (7).

    Parameters: ``conv1``/``conv2`` depthwise Conv2d(C, C, k, pad k//2, groups C, bias),
    trunc_normal(0.02) weights and zero bias (the official model's ``_init_weights`` reaches every
    Conv2d); ``bn`` BatchNorm2d(C) with the PyTorch default (1, 0).

    Forward: x (B, N, C) with ``hw=(Hg, Wg)`` → (B, N, C), or x (B, C, Hg, Wg) → (B, C, Hg, Wg).
    """

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        _check_dw_args(dim, kernel_size)
        self.dim = dim
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        _init_conv(self.conv1, self.conv2)

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        img, restore = _to_image(x, hw, self.dim, type(self).__name__)
        return restore(self.conv2(self.bn(self.act(self.conv1(img)))))


class ConvPositionEncoding(nn.Module):
    """CPE: x + DW3(x) (L²ViT's conditional position encoding, docs/methods.md §6.3), residual included.

    Args:
        dim: C. kernel_size: 3. act: apply GELU to the conv output (official ``cpe_act``, off).

    Parameters: ``proj`` depthwise Conv2d(C, C, k, pad k//2, groups C, bias), trunc_normal(0.02)
    weight and zero bias as in the official model init.

    Forward: x (B, N, C) with ``hw`` → (B, N, C), or x (B, C, Hg, Wg) → (B, C, Hg, Wg).
    """

    def __init__(self, dim: int, kernel_size: int = 3, act: bool = False) -> None:
        super().__init__()
        _check_dw_args(dim, kernel_size)
        self.dim = dim
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU() if act else nn.Identity()
        _init_conv(self.proj)

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        img, restore = _to_image(x, hw, self.dim, type(self).__name__)
        return x + restore(self.act(self.proj(img)))


# -- helpers -------------------------------------------------------------------------------------


def _window_partition(x: Tensor, w: int) -> Tensor:
    """(B, Hp, Wp, C) → (B·nW, w², C), windows in row-major order, tokens row-major inside."""
    B, Hp, Wp, C = x.shape
    x = x.view(B, Hp // w, w, Wp // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def _window_reverse(windows: Tensor, w: int, B: int, Hp: int, Wp: int) -> Tensor:
    """(B·nW, w², C) → (B, Hp, Wp, C), the inverse of :func:`_window_partition`."""
    C = windows.shape[-1]
    x = windows.view(B, Hp // w, Wp // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, Hp, Wp, C)


def _check_dw_args(dim: int, kernel_size: int) -> None:
    if not isinstance(dim, int) or dim <= 0:
        raise TypeError(f"dim must be a positive int, got {dim!r}")
    if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int (same padding), got {kernel_size!r}")


def _init_conv(*convs: nn.Conv2d) -> None:
    # Official L2ViT._init_weights: trunc_normal_(std=.02) on every Conv2d/Linear weight, bias 0.
    for conv in convs:
        nn.init.trunc_normal_(conv.weight, std=0.02)
        nn.init.zeros_(conv.bias)


def _to_image(x: Tensor, hw: tuple[int, int] | None, dim: int, who: str):
    """Tokens (B, N, C) + grid, or (B, C, Hg, Wg) → (image (B, C, Hg, Wg), function back to x's layout)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4:
        if x.shape[1] != dim:
            raise ValueError(f"{who}(dim={dim}) expects a feature map (B, {dim}, H, W), got {tuple(x.shape)}")
        if hw is not None and tuple(hw) != tuple(x.shape[2:]):
            raise ValueError(f"{who}: hw={tuple(hw)} disagrees with the feature map's grid {tuple(x.shape[2:])}")
        return x, lambda y: y
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(
            f"{who}(dim={dim}) expects tokens (B, N, {dim}) with hw=(H, W), or a feature map (B, {dim}, H, W); "
            f"got {tuple(x.shape)}"
        )
    B, N, C = x.shape
    Hg, Wg = resolve_grid(N, 0, hw)
    img = x.transpose(1, 2).reshape(B, C, Hg, Wg)
    return img, lambda y: y.flatten(2).transpose(1, 2)
