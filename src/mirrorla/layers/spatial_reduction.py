"""PVT's spatial-reduction softmax attention (PVT v1, github.com/whai362/PVT ``classification/pvt.py``).

Dimension letters: B batch, N = H·W tokens, M reduced tokens, C channels, H heads, D head dim.

Not a registry entry: the PVT backbone builds it for its ``'S'`` stages.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mirrorla.layers.base import AttentionBase
from mirrorla.layers.fused import use_fused_attn
from mirrorla.ops.softmax import softmax_attention

__all__ = ["SpatialReductionAttention"]


class SpatialReductionAttention(AttentionBase):
    """PVT's softmax attention with keys/values from a downsampled grid.

    q = W_q x; x' = LN(Conv_{sr×sr, stride sr}(x)) when sr > 1; k, v = W_kv x';
    O = softmax(q kᵀ / √D) v → proj. Shapes: x (B, N, C), N = H·W → (B, N, C).
    Parameter names (q, kv, sr, norm, proj) follow PVT v1 so its checkpoints map one to one.
    ``fused`` (default :func:`mirrorla.layers.fused.use_fused_attn`) selects SDPA or the explicit
    matrix (FLOP counters need the latter).
    """

    is_linear = False

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        sr_ratio: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, *args, **kwargs)
        if self.num_prefix_tokens:
            raise ValueError("SpatialReductionAttention works on a pure token grid; num_prefix_tokens must be 0")
        if not isinstance(sr_ratio, int) or sr_ratio < 1:
            raise ValueError(f"sr_ratio must be an int >= 1, got {sr_ratio!r}")
        self.sr_ratio = sr_ratio
        self.q = self._input_linear(1)
        self.kv = self._input_linear(2)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, **self._factory)
            self.norm = nn.LayerNorm(dim, **self._factory)
        self.fused = use_fused_attn()
        self._init_linear(self.q, self.kv, self.proj)

    def forward(
        self,
        x: Tensor,
        hw: tuple[int, int] | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        self.check_input(x, None, hw)
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("SpatialReductionAttention supports no masks: its keys are a downsampled grid")
        B, N, C = x.shape
        H, W = self.grid(N, hw)
        q = self.split_heads(self.q(x))
        if self.sr_ratio > 1:
            if H < self.sr_ratio or W < self.sr_ratio:
                raise ValueError(f"grid {H}x{W} is smaller than sr_ratio={self.sr_ratio}; use a larger input")
            x = self.sr(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        M = x.shape[1]
        k, v = self.kv(x).view(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        o = softmax_attention(q, k, v, dropout_p=self.attn_drop_p if self.training else 0.0, fused=self.fused)
        return self.proj_drop(self.proj(self.merge_heads(o)))
