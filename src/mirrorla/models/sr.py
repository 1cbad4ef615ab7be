"""Single-image super-resolution with global attention over every low-resolution pixel.

Dimension letters: B batch, C channels, h×w the low-resolution (LR) grid, N = h·w tokens, s the scale.

The network is the residual-in-residual layout of the light transformer SR models (SwinIR-light,
MambaIRv2-light, the layout PolaFormer++ plugs its attention into): a 3×3 conv lifts the image to C
channels; residual groups of blocks follow, each group ending in a 3×3 conv and a skip; a conv after
the body and a long skip; a pixel-shuffle upsampler (one conv to 3·s² channels, then ``PixelShuffle(s)``)
makes the (3, s·h, s·w) output. Each block is

    x = x + attention(LN(x), hw=(h, w))            # any registered attention, over all N pixels
    x = x + ConvFFN(LN(x), hw=(h, w))              # fc → GELU → (+ depthwise 3×3 conv) → fc

The attention is global: no windows and no shifted windows, so its cost is the attention's own — N²
for softmax, N for the linear attentions. The block's ConvFFN (the local 3×3 mixing of SRFormer's and
SwinIR-light-style models) is the same for every attention; the 2-D parts of the peer methods
(depthwise conv on V, LCM, RoPE) get the real (h, w) grid through ``hw``.

``img_skip="bicubic"`` (default) adds the bicubic upsampling of the input to the output and zero-initialises
the upsampler's conv, so an untrained network returns bicubic exactly and training learns the residual
(as VDSR and many light SR networks do). This is a choice for short CPU budgets; ``img_skip=None`` gives
the plain SwinIR-light output path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mirrorla.models._timm import init_outside_attention
from mirrorla.registry import create_attention, get_attention_entry

__all__ = ["SuperResolutionNet", "SRBlock", "ConvFFN", "SR_SIZES", "SR_SCALES", "create_sr_model"]

#: Upscaling factors the pixel-shuffle upsampler supports here.
SR_SCALES = (2, 3, 4)


@dataclass(frozen=True)
class SRSize:
    embed_dim: int
    groups: int
    blocks: int
    num_heads: int
    mlp_ratio: float = 2.0


#: Presets. ``tiny``: seconds per step on a CPU; ``small``: a bigger CPU model; ``light``: the size of the
#: published light SR transformers (SwinIR-light: embed 60, 4 groups of 6 blocks, ~0.9 M parameters), with 5
#: heads of 12 channels instead of SwinIR's 6 of 10: NaLaFormer's 2-D RoPE needs a head dim divisible by 4.
SR_SIZES: dict[str, SRSize] = {
    "tiny": SRSize(embed_dim=32, groups=2, blocks=2, num_heads=2),
    "small": SRSize(embed_dim=48, groups=3, blocks=3, num_heads=3),
    "light": SRSize(embed_dim=60, groups=4, blocks=6, num_heads=5),
}


class ConvFFN(nn.Module):
    """fc (C → hidden) → GELU → h + depthwise 3×3 conv(h) on the (h, w) grid → fc (hidden → C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, _ = x.shape
        t = self.act(self.fc1(x))
        grid = t.transpose(1, 2).reshape(B, -1, *hw)
        t = t + self.dwconv(grid).flatten(2).transpose(1, 2)
        return self.fc2(t)


class SRBlock(nn.Module):
    """Pre-norm block: global attention over the N tokens, then a ConvFFN; both with residuals."""

    def __init__(self, dim: int, num_heads: int, attention: str, attn_kwargs: dict[str, Any], mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = create_attention(attention, dim, num_heads, **attn_kwargs)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw=hw)
        return x + self.ffn(self.norm2(x), hw)


class ResidualGroup(nn.Module):
    """Blocks, then a 3×3 conv on the image form, plus the group's input."""

    def __init__(self, depth: int, dim: int, **block: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([SRBlock(dim, **block) for _ in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, C = x.shape
        y = x
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                y = checkpoint(blk, y, hw, use_reentrant=False)
            else:
                y = blk(y, hw)
        y = self.conv(y.transpose(1, 2).reshape(B, C, *hw)).flatten(2).transpose(1, 2)
        return x + y


class SuperResolutionNet(nn.Module):
    """LR image (B, 3, h, w) in [0, 1] → SR image (B, 3, s·h, s·w); any h, w ≥ 1.

    Args:
        scale: 2, 3 or 4.
        attention: a name in :func:`mirrorla.list_attentions`; ``attn_kwargs`` its options.
        embed_dim, groups, blocks, num_heads, mlp_ratio: width, residual groups, blocks per group,
            heads and ConvFFN ratio (presets: :data:`SR_SIZES`).
        img_skip: ``"bicubic"`` (add the bicubic upsampling of the input; the untrained net returns it)
            or None.
        in_chans: image channels (3).
    """

    def __init__(
        self,
        scale: int = 2,
        attention: str = "mirror",
        attn_kwargs: dict[str, Any] | None = None,
        embed_dim: int = 32,
        groups: int = 2,
        blocks: int = 2,
        num_heads: int = 2,
        mlp_ratio: float = 2.0,
        img_skip: str | None = "bicubic",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if scale not in SR_SCALES:
            raise ValueError(f"scale must be one of {SR_SCALES}, got {scale!r}")
        if img_skip not in ("bicubic", None):
            raise ValueError(f"img_skip must be 'bicubic' or None, got {img_skip!r}")
        for name, value in (("embed_dim", embed_dim), ("groups", groups), ("blocks", blocks), ("num_heads", num_heads)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        get_attention_entry(attention)  # the one check of the name; lists the valid ones
        self.scale, self.attention, self.img_skip, self.in_chans = scale, attention, img_skip, in_chans
        self.embed_dim = embed_dim
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, padding=1)
        block = dict(num_heads=num_heads, attention=attention, attn_kwargs=dict(attn_kwargs or {}), mlp_ratio=mlp_ratio)
        self.groups = nn.ModuleList([ResidualGroup(blocks, embed_dim, **block) for _ in range(groups)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(embed_dim, in_chans * scale**2, 3, padding=1), nn.PixelShuffle(scale))
        self._init_weights()

    def _init_weights(self) -> None:
        # SwinIR's init for the non-attention parts.
        init_outside_attention(self, [blk.attn for g in self.groups for blk in g.blocks])
        if self.img_skip == "bicubic":
            nn.init.zeros_(self.upsample[0].weight)
            nn.init.zeros_(self.upsample[0].bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for g in self.groups:
            g.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        """LR image (B, 3, h, w) → features (B, C, h, w) after the body and its long skip."""
        B, _, h, w = x.shape
        shallow = self.conv_first(x - 0.5)
        t = shallow.flatten(2).transpose(1, 2)
        for group in self.groups:
            t = group(t, (h, w))
        t = self.norm(t).transpose(1, 2).reshape(B, self.embed_dim, h, w)
        return shallow + self.conv_after_body(t)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects LR images (B, {self.in_chans}, h, w), got {shape}")
        out = self.upsample(self.forward_features(x))
        if self.img_skip == "bicubic":
            out = out + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out


def create_sr_model(
    size: str, attention: str, attn_kwargs: dict[str, Any] | None = None, scale: int = 2, **kwargs: Any
) -> SuperResolutionNet:
    """The :class:`SuperResolutionNet` preset ``size`` (a key of :data:`SR_SIZES`) with ``attention``."""
    if size not in SR_SIZES:
        raise ValueError(f"unknown SR size {size!r}; valid sizes: {', '.join(SR_SIZES)}")
    preset = SR_SIZES[size]
    args = dict(
        embed_dim=preset.embed_dim,
        groups=preset.groups,
        blocks=preset.blocks,
        num_heads=preset.num_heads,
        mlp_ratio=preset.mlp_ratio,
    )
    return SuperResolutionNet(scale=scale, attention=attention, attn_kwargs=attn_kwargs, **{**args, **kwargs})
