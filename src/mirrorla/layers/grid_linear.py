"""GridLinearAttention: a :class:`LinearAttention` whose parts see the token grid of the call.

Dimension letters: B batch, N tokens (P prefix + Hg·Wg spatial), C channels, H heads, D head dim.

FLatten and PolaFormer add a learned position table to the keys inside :meth:`project`, and
NaLaFormer rotates (RoPE) inside :meth:`mix`; both need (Hg, Wg), which
:meth:`LinearAttention.forward` does not pass to those hooks. This class resolves the grid once
per call (from ``hw``, else ``grid_size``, else a square of N − P; anything else raises) and
exposes it as :attr:`call_grid` while the call runs. It also owns the one shared implementation
of the learned key position table P of FLatten and PolaFormer (``key_pos_grid``).
"""

from __future__ import annotations

from torch import Tensor

from mirrorla.layers.linear import LinearAttention
from mirrorla.layers.parts import LearnedPositionEmbedding

__all__ = ["GridLinearAttention"]


class GridLinearAttention(LinearAttention):
    """:class:`LinearAttention` + :attr:`call_grid` for subclasses' ``project``/``mix`` overrides.

    Args (beyond :class:`LinearAttention`):
        key_pos_grid: ``None`` (no table) or the construction grid (Hp, Wp) of a learned, zero-init
            table P (1, Hp·Wp, C) added to the keys after the projection: k ← k + P (FLatten,
            PolaFormer; resized bicubically at other grids, see :class:`LearnedPositionEmbedding`).

    Subclasses extend :attr:`needs_grid` (default: the depthwise-conv branch or P is on) and read
    :attr:`call_grid` (``(Hg, Wg)``, or ``None`` when the grid is not needed).
    """

    def __init__(self, dim: int, num_heads: int = 8, *args, key_pos_grid: tuple[int, int] | None = None, **kwargs):
        super().__init__(dim, num_heads, *args, **kwargs)
        self.pos_embed = LearnedPositionEmbedding(dim, key_pos_grid) if key_pos_grid is not None else None

    @staticmethod
    def reject_fixed(who: str, kwargs: dict, names: tuple[str, ...]) -> None:
        """Raise for options a method fixes (they would otherwise be silently overridden)."""
        for name in names:
            if name in kwargs:
                raise TypeError(
                    f"{who} fixes {name!r} (it is part of the method's definition); use LinearAttention to "
                    "combine parts differently"
                )

    @property
    def needs_grid(self) -> bool:
        return self.dwc is not None or self.pos_embed is not None

    @property
    def call_grid(self) -> tuple[int, int] | None:
        return self.__dict__.get("_call_grid")

    def current_grid(self, num_tokens: int) -> tuple[int, int]:
        """The grid of the running ``forward``; outside it (e.g. :meth:`attend` called directly) the
        layer's ``grid_size`` or a square of N − P, which raises for a non-square count."""
        grid = self.call_grid
        return grid if grid is not None else self.grid(num_tokens, None)

    def forward(
        self,
        x: Tensor,
        hw: tuple[int, int] | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        self.check_input(x, key_padding_mask, hw)  # a given hw must fit N even when no part needs the grid
        grid = self.grid(x.shape[1], hw) if self.needs_grid else None
        self.__dict__["_call_grid"] = grid
        try:
            return super().forward(x, grid if grid is not None else hw, key_padding_mask, attn_mask, is_causal)
        finally:
            self.__dict__["_call_grid"] = None

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        q, k, v, g = super().project(x)
        if self.pos_embed is not None:
            # [Code] FLatten/PolaFormer: k = k + positional_encoding, on all C channels, before the map.
            pe = self.pos_embed(self.current_grid(x.shape[1]), self.num_prefix_tokens)  # (1, N, C)
            k = k + self.split_heads(pe).to(k.dtype)
        return q, k, v, g
