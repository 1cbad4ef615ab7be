"""Shared parts of attention layers: grid resolution and the depthwise-conv branch on V.

Dimension letters: B batch, H heads, N tokens (P prefix + Hg·Wg spatial), D head dim, C = H·D.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["check_hw", "resolve_grid", "DepthwiseConvBranch", "LearnedPositionEmbedding"]


def check_hw(num_tokens: int, num_prefix_tokens: int, hw) -> tuple[int, int]:
    """``hw`` as ints (H, W) if it describes the N − P spatial tokens, else a ValueError.

    Every attention checks a given ``hw``, whether or not it uses the grid, so that a wrong grid is
    never silently ignored. H·W = 0 is allowed here (an empty sequence); layers that work on the
    grid also need H, W ≥ 1 (:func:`resolve_grid`).
    """
    spatial = num_tokens - num_prefix_tokens
    try:
        H, W = (operator.index(side) for side in hw)
    except (TypeError, ValueError):
        raise ValueError(
            f"hw={hw!r} must be two ints (H, W) with H*W = N - num_prefix_tokens = {num_tokens} - "
            f"{num_prefix_tokens} = {spatial}"
        ) from None
    if H < 0 or W < 0:
        raise ValueError(f"hw={(H, W)} has a negative side; pass the grid (H, W) of the {spatial} spatial tokens")
    if H * W != spatial:
        raise ValueError(
            f"hw={(H, W)} does not fit the input: {num_tokens} tokens - {num_prefix_tokens} prefix "
            f"tokens = {spatial} spatial tokens, but H*W = {H * W}"
        )
    return H, W


def resolve_grid(num_tokens: int, num_prefix_tokens: int, hw: tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) of the spatial token grid, both ≥ 1.

    Order: the explicit ``hw`` (checked by :func:`check_hw`); otherwise a square grid inferred
    from N − P, which raises when N − P is not a perfect square (pass ``hw=(H, W)`` then). An
    empty grid (N − P = 0) raises: the parts that need the grid (depthwise convs, position tables,
    RoPE, windows) have nothing to work on.
    """
    spatial = num_tokens - num_prefix_tokens
    if hw is not None:
        H, W = check_hw(num_tokens, num_prefix_tokens, hw)
    else:
        H = W = math.isqrt(max(spatial, 0))
        if spatial > 0 and H * W != spatial:
            raise ValueError(
                f"this layer needs the spatial grid, and {spatial} spatial tokens (N={num_tokens}, "
                f"num_prefix_tokens={num_prefix_tokens}) are not a square; pass hw=(H, W) to forward (a "
                "backbone passes its patch grid down to its blocks)"
            )
    if H == 0 or W == 0:
        given = f", hw={(H, W)}" if hw is not None else ""
        raise ValueError(
            "this layer works on the token grid (depthwise conv, position table, RoPE or windows) and needs "
            f"at least one spatial token; got N={num_tokens} with num_prefix_tokens={num_prefix_tokens}{given}"
        )
    return H, W


class DepthwiseConvBranch(nn.Module):
    """DWC(V): a depthwise k×k convolution of the values over the token grid ("rank restoration").

    ``shared=True``: one D-channel kernel shared by all heads, applied to (B·H, D, Hg, Wg)
    (FLatten, PolaFormer). ``shared=False``: C per-channel kernels on (B, C, Hg, Wg) (NaLaFormer's
    LePE). Prefix tokens (cls) get 0. PyTorch default init (the sources never re-initialise it).
    """

    def __init__(self, num_heads: int, head_dim: int, kernel_size: int, shared: bool) -> None:
        super().__init__()
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"dwc kernel_size must be a positive odd int, got {kernel_size}")
        self.num_heads, self.head_dim, self.shared = num_heads, head_dim, shared
        ch = head_dim if shared else num_heads * head_dim
        self.conv = nn.Conv2d(ch, ch, kernel_size, padding=kernel_size // 2, groups=ch)

    def forward(self, v: Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
        """v (B, H, N, D) → (B, N, C), prefix rows zero.

        The convolution runs channels-last: the (tokens, channels) layout of v is already close to it,
        and the depthwise kernel's forward+backward was faster on CPU than in NCHW (docs/efficiency.md).
        """
        B, H, N, D = v.shape
        Hg, Wg = grid
        spatial = v[:, :, num_prefix_tokens:]  # (B, H, Hg·Wg, D)
        if self.shared:  # heads as batch: (B·H, D, Hg, Wg)
            img = spatial.reshape(B * H, Hg, Wg, D).permute(0, 3, 1, 2)
        else:  # (B, C, Hg, Wg)
            img = spatial.transpose(1, 2).reshape(B, Hg, Wg, H * D).permute(0, 3, 1, 2)
        out = self.conv(img.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)  # (B or B·H, Hg, Wg, ·)
        if self.shared:
            out = out.reshape(B, H, Hg * Wg, D).transpose(1, 2)
        out = out.reshape(B, Hg * Wg, H * D)
        if num_prefix_tokens:
            out = nn.functional.pad(out, (0, 0, num_prefix_tokens, 0))
        return out


class LearnedPositionEmbedding(nn.Module):
    """P: a learned table (1, Hp·Wp, C) over the construction grid, added to the keys (FLatten, PolaFormer).

    [Code] FLatten ``models/flatten_swin.py`` and PolaFormer keep ``positional_encoding`` of shape
    (1, window_h·window_w, C), zero-initialised, and fail at any other resolution. [Design] At a
    runtime grid other than the construction grid the table is resized bicubically
    (``align_corners=False``, no antialias; docs/methods.md §3); at the construction grid it is used as is.
    Prefix (cls) tokens get no embedding (zero rows).

    Args:
        dim: C. grid: (Hp, Wp), the construction grid.
    """

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if len(grid) != 2 or min(grid) <= 0:
            raise ValueError(f"position-embedding grid must be (H, W) with positive sides, got {grid!r}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.weight = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))

    def forward(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        """The embedding for a runtime grid (Hg, Wg): (1, P + Hg·Wg, C), prefix rows zero."""
        pe = self.weight
        if tuple(grid) != self.grid:
            C = pe.shape[-1]
            img = pe.transpose(1, 2).reshape(1, C, *self.grid)
            pe = F.interpolate(img, size=tuple(grid), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        if num_prefix_tokens:
            pe = F.pad(pe, (0, 0, num_prefix_tokens, 0))
        return pe

    def extra_repr(self) -> str:
        return f"grid={self.grid}, dim={self.weight.shape[-1]}"
