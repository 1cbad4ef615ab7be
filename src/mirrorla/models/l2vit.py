"""L²ViT Tiny/Small/Base: conv stem, four stages of alternating LWA and LGA(+LCM) blocks, CPE, head.

Dimension letters: B batch, N = H·W tokens, C channels.

Source: C. Zheng, "The Linear Attention Resurrection in Vision Transformer", arXiv 2501.16182; official
code github.com/ChuanyangZheng/L2ViT ``classification/models/l2vit.py``; docs/methods.md §6.3. The layers
(LGA ``l2vit_lga``, LWA ``window_softmax``, LCM, CPE) are mirrorla's, in :mod:`mirrorla.layers.l2vit`.

    stem   Conv3×3 s2 (3 → C₁/2) BN ReLU Conv3×3 s2 (→ C₁) BN, flatten, LayerNorm(C₁)    stride 4
    down   LayerNorm(C_in) over channels, Conv2d(C_in, C_out, 2, stride 2)                stride 2
    LWA block  x = CPE(x); x = x + DP(LWA(LN₁ x)); x = CPE(x); x = x + DP(MLP(LN₂ x))
    LGA block  x = CPE(x); x = x + DP(LGA(LN₁ x)); x = x + DP(LCM(LN₃ x)); x = x + DP(MLP(LN₂ x))
    block j of a stage is LWA for even j, LGA for odd j; head LayerNorm → token mean → Linear

A stage returns its NCHW map (the ``feature_info`` feature); ``forward_features`` returns the last
map with the head's LayerNorm applied at each position, (B, C₄, H/32, W/32), as timm's contract
asks (``pool_size``, ``global_pool=''``).

Module and parameter names follow the official code, so its state dicts load without renaming.
Deviation [Design, docs/methods.md §6.3]: LWA masks the keys of zero-padded window positions;
``l2vit_compat=True`` lets them attend as the official code does. Inputs whose sides are not a
multiple of the stride are zero-padded before each strided conv (official ``PatchEmbed``).

Model names: ``l2vit_{tiny,small,base}`` and ``l2vit_base_384`` (window 12). The attention is
part of the architecture, so the names carry no attention suffix.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_function
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from mirrorla.layers.l2vit import (
    ConvPositionEncoding,
    LinearGlobalAttention,
    LocalConcentrationModule,
    LocalWindowAttention,
)
from mirrorla.models._timm import register, submodule_no_weight_decay, untrained_cfg

__all__ = ["L2ViT", "L2VIT_SIZES", "L2VIT_PUBLISHED"]

default_cfgs: dict[str, Any] = {}

L2VIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24)),
    "small": dict(depths=(2, 2, 18, 2), dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24)),
    "base": dict(depths=(2, 2, 18, 2), dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32)),
}
#: (params M, GMACs at 224²) from the official README (github.com/ChuanyangZheng/L2ViT readme.md; docs/methods.md §6.3).
L2VIT_PUBLISHED: dict[str, tuple[float, float]] = {"tiny": (29, 4.7), "small": (50, 9.0), "base": (89, 15.9)}


@register_notrace_function  # pads computed from the runtime grid: one FX node
def _pad_to_multiple(x: Tensor, stride: int) -> Tensor:
    """Zero-pad (B, C, H, W) at the bottom/right to multiples of ``stride`` (official PatchEmbed)."""
    H, W = x.shape[-2:]
    return F.pad(x, (0, (-W) % stride, 0, (-H) % stride))


class ConvStem(nn.Module):
    """(B, 3, H, W) → tokens (B, H/4·W/4, C) and the grid; module names as the official PatchEmbed."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        convs = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(dim // 2),
            nn.ReLU(),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
            nn.BatchNorm2d(dim),
        )
        # Nested once more so that names match the official ``downsample_layers.0.proj.proj.<i>``.
        self.proj = nn.Sequential()
        self.proj.add_module("proj", convs)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(_pad_to_multiple(x, 4))
        return self.norm(x.flatten(2).transpose(1, 2)), (x.shape[2], x.shape[3])


class Downsample(nn.Module):
    """Map (B, C_in, H, W) → LayerNorm over channels → Conv 2×2 s2 → tokens (B, N/4, C_out) and their grid."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Conv2d(in_dim, out_dim, 2, stride=2)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.proj(_pad_to_multiple(x, 2))
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class L2ViTBlock(nn.Module):
    """One LWA (``local=True``) or LGA+LCM block on tokens (B, N, C) with the grid ``hw``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        local: bool,
        window_size: int,
        mlp_ratio: float,
        drop_path: float,
        l2vit_compat: bool,
    ) -> None:
        super().__init__()
        self.local = local
        self.cpe = nn.ModuleList([ConvPositionEncoding(dim) for _ in range(2 if local else 1)])
        self.norm1 = nn.LayerNorm(dim)
        if local:
            self.attn = LocalWindowAttention(dim, num_heads, window_size=window_size, l2vit_compat=l2vit_compat)
        else:
            self.attn = LinearGlobalAttention(dim, num_heads)
            self.norm3 = nn.LayerNorm(dim)
            self.local_mp = LocalConcentrationModule(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.cpe[0](x, hw)
        x = x + self.drop_path(self.attn(self.norm1(x), hw=hw))
        if self.local:
            x = self.cpe[1](x, hw)
        else:
            x = x + self.drop_path(self.local_mp(self.norm3(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class L2ViTStage(nn.ModuleList):
    """The blocks of one stage (a ModuleList, so parameter names stay the official ``stages.i.j``):
    tokens (B, N, C) on the grid ``hw`` → the stage's map (B, C, H, W).

    Ending in the map makes the stage's last FX node the NCHW feature of ``feature_info``, so
    ``features_only=True, feature_cls='fx'`` and torchvision's feature extractor return maps.
    """

    def __init__(self, blocks: list[L2ViTBlock]) -> None:
        super().__init__(blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        for blk in self:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        B, N, C = x.shape
        return x.transpose(1, 2).reshape(B, C, hw[0], hw[1])


class L2ViT(nn.Module):
    """L²ViT with the timm model API (``forward_features``, ``forward_head``, ``forward_intermediates``).

    Args:
        depths, dims, num_heads: per stage (see :data:`L2VIT_SIZES`); head dim 32 everywhere.
        window_size: LWA window (7; 12 for the 384 model).
        mlp_ratio: 4 in every stage.
        l2vit_compat: let padded window keys attend, as the official code (default masks them).
        drop_path_rate: stochastic depth, linear in the block index.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depths: tuple[int, ...] = (2, 2, 6, 2),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        l2vit_compat: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        for arg, val in dict(depths=depths, dims=dims, num_heads=num_heads).items():
            if len(val) != 4:
                raise ValueError(f"{arg} must have 4 entries (one per stage), got {val!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.attention = "l2vit"
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        self.downsample_layers = nn.ModuleList(
            [ConvStem(in_chans, dims[0])] + [Downsample(dims[i - 1], dims[i]) for i in range(1, 4)]
        )
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages, self.feature_info, cursor = nn.ModuleList(), [], 0
        for i in range(4):
            blocks = [
                L2ViTBlock(dims[i], num_heads[i], j % 2 == 0, window_size, mlp_ratio, dpr[cursor + j], l2vit_compat)
                for j in range(depths[i])
            ]
            self.stages.append(L2ViTStage(blocks))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
            cursor += depths[i]
        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official L2ViT._init_weights: every Conv2d and Linear weight trunc_normal(0.02), bias 0.
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- timm model API ---------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The official recipe decays τ (a (H, 1, 1) tensor) like any weight; only what a layer
        # itself excludes is listed here.
        return submodule_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^downsample_layers\.0",
            blocks=r"^(?:stages|downsample_layers)\.(\d+)" if coarse else [(r"^stages\.(\d+)\.(\d+)", None)],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def _final_norm(self, x: Tensor) -> Tensor:
        """The head's LayerNorm over the channels of a map (B, C, H, W), per position."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (B, C_i, ⌈H/r_i⌉, ⌈W/r_i⌉), r_i = 4, 8, 16, 32. ``norm`` applies the final
        LayerNorm to the last stage's map only (the other stages have no norm of their own)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = max_index if stop_early else len(self.stages) - 1
        intermediates = []
        for i in range(last + 1):
            x = self.stages[i](*self.downsample_layers[i](x))
            if i in take:
                intermediates.append(self._final_norm(x) if norm and i == len(self.stages) - 1 else x)
        if intermediates_only:
            return intermediates
        return self._final_norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        self.downsample_layers = self.downsample_layers[: max_index + 1]
        if prune_norm or max_index < 3:
            self.norm = nn.Identity()
        if max_index < 3:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < 3:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) → the last stage's map, LayerNorm over channels at each position (B, C₄, ⌈H/32⌉, ⌈W/32⌉)."""
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(*downsample(x))
        return self._final_norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C₄, h, w) map → pooled (B, C₄) → logits; ``global_pool=''`` keeps the map."""
        if self.global_pool == "avg":
            x = x.mean(dim=(-2, -1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _register() -> None:
    variants = {f"l2vit_{s}": (s, {}, 224) for s in L2VIT_SIZES} | {
        "l2vit_base_384": ("base", {"window_size": 12}, 384)
    }
    for name, (size, extra, res) in variants.items():

        def build(name: str, size: str = size, extra: dict = extra, **kwargs: Any) -> L2ViT:
            return build_model_with_cfg(
                L2ViT,
                name,
                pretrained=False,
                feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
                **{**L2VIT_SIZES[size], **extra, **kwargs},
            )

        cfg = untrained_cfg(
            input_size=(3, res, res),
            feature_stride=32,
            min_input_size=(3, 32, 32),
            first_conv="downsample_layers.0.proj.proj.0",
            crop_pct=0.9 if res == 224 else 1.0,
        )
        doc = f"L²ViT-{size.capitalize()} ({res}², window {extra.get('window_size', 7)}); untrained."
        register(name, __name__, build, cfg, doc)


_register()
