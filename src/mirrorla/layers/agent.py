"""Agent attention: softmax attention through n pooled agent tokens (docs/methods.md §13).

Dimension letters: B batch, N tokens (P prefix + Hg·Wg spatial), C channels, H heads, D head dim,
n agent tokens (a √n × √n pool).

Source: D. Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention", ECCV
2024; official github.com/LeapLabTHU/Agent-Attention ``agent_transformer/models/agent_deit.py``,
class ``AgentAttention``.

    q, k, v = split(qkv(x));  A = AvgPool_{√n×√n}(q over the grid)          (agent tokens, (n, D))
    V_A = softmax(s·A Kᵀ + B_kn) V        (agent aggregation, n × N)
    O   = softmax(s·Q Aᵀ + B_nk) V_A      (agent broadcast,   N × n)
    y = proj(O + DWC₃ₓ₃(V)),  s = D^−½

B_kn = bilinear(an_bias 7×7 → grid) + ah_bias (rows) + aw_bias (columns), B_nk likewise from na, ha,
wa; prefix (cls) keys get ac_bias and prefix queries ca_bias. Cost O(N·n·D): no N×N matrix.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.layers.base import AttentionBase
from mirrorla.layers.parts import DepthwiseConvBranch
from mirrorla.registry import register_attention

__all__ = ["AgentAttention"]

#: [Code] ``an_bias``/``na_bias`` are (H, n, 7, 7) tables, resized bilinearly to the grid.
BIAS_TABLE = 7


def _resize_1d(t: Tensor, size: int, dim: int) -> Tensor:
    """Linear resize (``align_corners=False``) of t along ``dim`` to ``size``; t unchanged at its own size."""
    if t.shape[dim] == size:
        return t
    moved = t.movedim(dim, -1)
    shape = moved.shape
    out = F.interpolate(moved.reshape(-1, 1, shape[-1]), size=size, mode="linear", align_corners=False)
    return out.reshape(*shape[:-1], size).movedim(-1, dim)


class AgentAttention(AttentionBase):
    """Agent attention (DeiT form of the official code).

    Args (beyond the common contract of :class:`AttentionBase`):
        agent_num: n, a perfect square (49: the official DeiT setting).
        bias_grid: (Hb, Wb), the construction grid of the row/column bias tables (14×14 = a 224² image
            at patch 16). [Design] At another runtime grid they are resized linearly
            (``align_corners=False``); the official module supports only its construction grid.
        dwc_kernel: the depthwise conv on V (3; 0 = off).

    Parameters (official names): ``qkv`` Linear(C, 3C), ``proj`` Linear(C, C): trunc_normal(0.02),
    bias 0; ``dwc.conv`` Conv2d(C, C, 3, groups C) [dwc], PyTorch default; ``an_bias``, ``na_bias``
    (H, n, 7, 7), ``ah_bias`` (1, H, n, Hb, 1), ``aw_bias`` (1, H, n, 1, Wb), ``ha_bias`` (1, H, Hb, 1, n),
    ``wa_bias`` (1, H, 1, Wb, n): trunc_normal(0.02); with prefix tokens also ``ac_bias`` (1, H, n, 1) and
    ``ca_bias`` (1, H, 1, n) ([Code] one cls token; [Design] every prefix token shares them).

    Key padding: masked keys are left out of the aggregation softmax and the agent pool averages the
    kept queries of each bin (an empty bin gives a zero agent); [Design], the official code has no mask.
    """

    is_linear = False  # softmax matrices (N × n): attn_drop is honoured
    build_grid_option = "bias_grid"

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *args: Any,
        agent_num: int = 49,
        bias_grid: tuple[int, int] = (14, 14),
        dwc_kernel: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, *args, **kwargs)
        side = math.isqrt(agent_num) if isinstance(agent_num, int) and agent_num > 0 else 0
        if side * side != agent_num:
            raise ValueError(f"agent_num must be a perfect square n = s*s (a s×s pool), got {agent_num!r}; e.g. 49")
        if len(tuple(bias_grid)) != 2 or min(bias_grid) <= 0:
            raise ValueError(f"bias_grid must be (H, W) with positive sides, got {bias_grid!r}")
        Hb, Wb = (int(s) for s in bias_grid)
        H, n = num_heads, agent_num
        self.agent_num, self.pool_side, self.bias_grid = n, side, (Hb, Wb)
        self.qkv = self._input_linear(3)
        self.attn_drop = nn.Dropout(self.attn_drop_p)
        self.dwc = DepthwiseConvBranch(num_heads, self.head_dim, dwc_kernel, shared=False) if dwc_kernel else None
        self.an_bias = nn.Parameter(torch.zeros(H, n, BIAS_TABLE, BIAS_TABLE))
        self.na_bias = nn.Parameter(torch.zeros(H, n, BIAS_TABLE, BIAS_TABLE))
        self.ah_bias = nn.Parameter(torch.zeros(1, H, n, Hb, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, H, n, 1, Wb))
        self.ha_bias = nn.Parameter(torch.zeros(1, H, Hb, 1, n))
        self.wa_bias = nn.Parameter(torch.zeros(1, H, 1, Wb, n))
        biases = [self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias]
        if self.num_prefix_tokens:
            self.ac_bias = nn.Parameter(torch.zeros(1, H, n, 1))
            self.ca_bias = nn.Parameter(torch.zeros(1, H, 1, n))
            biases += [self.ac_bias, self.ca_bias]
        for b in biases:
            nn.init.trunc_normal_(b, std=0.02)
        self._init_linear(self.qkv, self.proj)

    def position_biases(self, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """B_kn (H, n, N) for the aggregation and B_nk (H, N, n) for the broadcast, prefix columns/rows first."""
        Hg, Wg = grid
        H, n, P = self.num_heads, self.agent_num, self.num_prefix_tokens
        # [Code] ``interpolate(an_bias, size=(window, window), mode='bilinear')`` + ah + aw.
        an = F.interpolate(self.an_bias, size=(Hg, Wg), mode="bilinear", align_corners=False).reshape(H, n, -1)
        na = F.interpolate(self.na_bias, size=(Hg, Wg), mode="bilinear", align_corners=False).reshape(H, n, -1)
        ah, aw = _resize_1d(self.ah_bias, Hg, 3), _resize_1d(self.aw_bias, Wg, 4)
        ha, wa = _resize_1d(self.ha_bias, Hg, 2), _resize_1d(self.wa_bias, Wg, 3)
        kn = an + (ah + aw).reshape(H, n, Hg * Wg)
        nk = na.transpose(1, 2) + (ha + wa).reshape(H, Hg * Wg, n)
        if P:
            kn = torch.cat([self.ac_bias[0].expand(H, n, P), kn], dim=2)
            nk = torch.cat([self.ca_bias[0].expand(H, P, n), nk], dim=1)
        return kn, nk

    def agents(self, q: Tensor, grid: tuple[int, int], key_padding_mask: Tensor | None) -> Tensor:
        """The agent tokens: q (B, H, N, D) averaged over √n × √n adaptive bins of the grid → (B, H, n, D)."""
        B, H, N, D = q.shape
        Hg, Wg = grid
        P, s = self.num_prefix_tokens, self.pool_side
        img = q[:, :, P:].transpose(-1, -2).reshape(B, H * D, Hg, Wg)
        if key_padding_mask is None:
            pooled = F.adaptive_avg_pool2d(img, s)
        else:
            keep = key_padding_mask[:, None, P:].to(q.dtype).reshape(B, 1, Hg, Wg)
            pooled = F.adaptive_avg_pool2d(img * keep, s) / F.adaptive_avg_pool2d(keep, s).clamp_min(1e-6)
        return pooled.reshape(B, H, D, s * s).transpose(-1, -2)

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
                "AgentAttention attends through pooled agent tokens and cannot honour an arbitrary attn_mask; "
                "use key_padding_mask (B, N) for padding"
            )
        if is_causal:
            raise ValueError("AgentAttention pools queries over the whole grid (and its depthwise-conv branch "
                             "mixes future tokens); it has no causal form")  # fmt: skip
        B, N, C = x.shape
        grid = self.grid(N, hw)
        q, k, v = (self.split_heads(t) for t in self.qkv(x).split(C, dim=-1))
        if key_padding_mask is not None:
            v = v * key_padding_mask[:, None, :, None].to(v.dtype)
        scale = self.head_dim**-0.5
        agents = self.agents(q, grid, key_padding_mask)  # (B, H, n, D)
        kn, nk = self.position_biases(grid)
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            a, qf, kf, vf = (t.to(dtype) for t in (agents, q, k, v))
            logits = (a * scale) @ kf.transpose(-2, -1) + kn.to(dtype)  # (B, H, n, N)
            if key_padding_mask is not None:
                logits = logits.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
            agent_v = self.attn_drop(torch.softmax(logits, dim=-1)) @ vf  # (B, H, n, D)
            q_attn = torch.softmax((qf * scale) @ a.transpose(-2, -1) + nk.to(dtype), dim=-1)  # (B, H, N, n)
            o = self.merge_heads(self.attn_drop(q_attn) @ agent_v)
        if self.dwc is not None:
            o = o + self.dwc(v.to(dtype), grid, self.num_prefix_tokens)  # prefix rows get 0, as [Code]
        return self.proj_drop(self.proj(o.to(v.dtype)))

    def extra_repr(self) -> str:
        return f"agent_num={self.agent_num}, bias_grid={self.bias_grid}"


register_attention("agent", AgentAttention, "Agent attention: pooled agent tokens, two softmaxes, biases, 3x3 DWC")
