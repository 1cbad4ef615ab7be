"""A 4-stage pyramid backbone (PVT v1) with a per-stage attention pattern such as ``'LLSS'``.

Dimension letters: B batch, C channels, H×W the token grid of a stage, N = H·W tokens.

Architecture (docs/methods.md §8.2, PVT v1 as patched by FLatten/PolaFormer): stage i = patch embed
(Conv k×k stride k, k = 4 then 2, + LayerNorm) → + absolute position table → blocks
``x + DP(attn(LN(x)))``, ``x + DP(MLP(LN(x)))`` (LN eps 1e-6) → NCHW map. Dims 64/128/320/512,
heads 1/2/5/8, MLP ratios 8/8/4/4, qkv bias. Head: token mean → Linear (no final norm and no cls
token, as in the patched code; the original PVT used a cls token and a final norm, ≈1.5k parameters).

Attention per stage, one character each (docs/methods.md §8.1):
  ``L`` the model's registry attention (``create_attention(attention, ...)``) on full-resolution keys;
  ``S`` PVT's spatial-reduction softmax attention (keys/values from a stride-sr conv, sr 8/4/2/1).
Default ``'LLLL'`` (the FLatten/PolaFormer/MirrorLA PVT setting) for every attention except
``softmax``, whose default ``'SSSS'`` is the original PVT. ``attn_pattern='LLSS'`` gives the hybrid
with linear high-resolution stages and softmax low-resolution stages.

Resolution: the per-stage position tables are resampled bilinearly to the actual grid (as PVT's
own code does for dense prediction), and ``pos_embed=False`` removes them. Attentions with a learned
key position table (FLatten's and PolaFormer's P, ``build_grid_option``) get one table per layer at
its stage's grid, as in the official PVT models (``num_patches // sr²`` tokens, sr = 1), resized
bicubically by the layer at other resolutions.

Official checkpoints: :func:`checkpoint_filter_fn` maps the state dicts of the official FLatten and
PolaFormer PVT models onto these names (one tensor to one tensor, or q/kv(g) rows to the fused qkv).

Model names: ``pvt_{tiny,small,medium,large}_{attention}`` for every registered attention.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_function
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from mirrorla.layers.spatial_reduction import SpatialReductionAttention
from mirrorla.models._timm import register, submodule_no_weight_decay, untrained_cfg
from mirrorla.registry import create_attention, get_attention_entry, with_build_grid

__all__ = [
    "PyramidVisionTransformer",
    "SpatialReductionAttention",
    "PVT_SIZES",
    "register_pvt_models",
    "default_pattern",
    "checkpoint_filter_fn",
]

default_cfgs: dict[str, Any] = {}

# PVT v1 (github.com/whai362/PVT classification/pvt.py; docs/methods.md §8.2).
PVT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(depths=(2, 2, 2, 2)),
    "small": dict(depths=(3, 4, 6, 3)),
    "medium": dict(depths=(3, 4, 18, 3)),
    "large": dict(depths=(3, 8, 27, 3)),
}
# Published parameter counts of the softmax PVT v1 (M), github.com/whai362/PVT classification/README.md.
PVT_PUBLISHED_PARAMS_M = {"tiny": 13.2, "small": 24.5, "medium": 44.2, "large": 61.4}


def default_pattern(attention: str) -> str:
    """'SSSS' for ``softmax`` (the original PVT), else 'LLLL': the named attention in every stage (§8.1)."""
    get_attention_entry(attention)  # raises for an unknown name
    return "SSSS" if attention == "softmax" else "LLLL"


class PyramidBlock(nn.Module):
    """Pre-norm block: x + DP(attn(LN(x), hw)), x + DP(MLP(LN(x))); x (B, N, C)."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float, drop_path: float, proj_drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        for lin in (self.mlp.fc1, self.mlp.fc2):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw=hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@register_notrace_function  # a branch on the runtime grid: one FX node, not a traced condition
def resample_position_table(table: Tensor, build_grid: tuple[int, int], H: int, W: int) -> Tensor:
    """A position table (1, Hp·Wp, C) on the build grid (Hp, Wp) → (1, H·W, C), bilinear when the grid differs."""
    Hp, Wp = build_grid
    if (H, W) == (Hp, Wp):
        return table
    img = table.reshape(1, Hp, Wp, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(H, W), mode="bilinear", align_corners=False)
    return img.flatten(2).transpose(1, 2)


class PyramidStage(nn.Module):
    """(B, C_in, H, W) → patch embed → + position table → blocks → (B, C, H/s, W/s)."""

    def __init__(
        self,
        in_chs: int,
        dim: int,
        stride: int,
        blocks: list[PyramidBlock],
        pos_grid: tuple[int, int] | None,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(dim)  # PVT's PatchEmbed keeps LayerNorm's default eps
        self.pos_grid = pos_grid
        if pos_grid is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid[0] * pos_grid[1], dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.pos_embed = None
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def position(self, H: int, W: int) -> Tensor:
        """The position table (1, H·W, C), resampled bilinearly from the build grid when H×W differs."""
        return resample_position_table(self.pos_embed, self.pos_grid, H, W)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        B, C, H, W = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            x = x + resample_position_table(self.pos_embed, self.pos_grid, H, W)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, (H, W), use_reentrant=False)
            else:
                x = blk(x, (H, W))
        return x.transpose(1, 2).reshape(B, C, H, W)


class PyramidVisionTransformer(nn.Module):
    """PVT v1 with a per-stage attention pattern; timm model API and ``forward_intermediates``.

    Args:
        attention: registry name used by the ``'L'`` stages.
        attn_pattern: 4 characters from {'L', 'S'}; default :func:`default_pattern` of ``attention``.
        attn_kwargs: extra options for the ``'L'`` attention. An attention with a grid-sized table
            (``build_grid_option``: ``key_pos_grid``, when on) gets each stage's grid unless set here.
        sr_ratios: spatial reduction of the ``'S'`` stages.
        pos_embed: per-stage absolute position tables (resampled to other resolutions).
        img_size: build resolution of the position tables (and of the attentions' key tables).
    """

    def __init__(
        self,
        attention: str = "mirror",
        attn_pattern: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        depths: tuple[int, ...] = (3, 4, 6, 3),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        patch_size: int = 4,
        qkv_bias: bool = True,
        pos_embed: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        entry = get_attention_entry(attention)  # the one place that checks a name
        pattern = default_pattern(attention) if attn_pattern is None else attn_pattern
        for arg, val in dict(embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios, depths=depths,
                             sr_ratios=sr_ratios, attn_pattern=pattern).items():  # fmt: skip
            if len(val) != 4:
                raise ValueError(f"{arg} must have 4 entries (one per stage), got {val!r}")
        if set(pattern) - {"L", "S"}:
            raise ValueError(f"attn_pattern must use 'L' (linear) and 'S' (softmax) only, got {pattern!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.attention, self.attn_pattern = attention, pattern
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dims[-1]
        self.grad_checkpointing = False

        total = sum(depths)  # stochastic depth rises linearly 0 → drop_path_rate (python: works on meta)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, self.feature_info = [], []
        in_chs, reduction, cursor = in_chans, 1, 0
        # [Code] FLatten / PolaFormer PVT: positional_encoding (1, num_patches // sr², C) per layer, so a
        # layer whose grid-sized table is on gets its stage's grid unless attn_kwargs set it.
        for i in range(4):
            stride = patch_size if i == 0 else 2
            reduction *= stride
            stage_grid = (img_size[0] // reduction, img_size[1] // reduction)
            stage_kwargs = with_build_grid(entry, stage_grid, attn_kwargs or {})
            blocks = []
            for j in range(depths[i]):
                if pattern[i] == "L":
                    attn = create_attention(
                        attention,
                        embed_dims[i],
                        num_heads[i],
                        qkv_bias=qkv_bias,
                        attn_drop=attn_drop_rate,
                        proj_drop=proj_drop_rate,
                        **stage_kwargs,
                    )
                else:
                    attn = SpatialReductionAttention(
                        embed_dims[i],
                        num_heads[i],
                        qkv_bias=qkv_bias,
                        attn_drop=attn_drop_rate,
                        proj_drop=proj_drop_rate,
                        sr_ratio=sr_ratios[i],
                    )
                blocks.append(PyramidBlock(embed_dims[i], attn, mlp_ratios[i], dpr[cursor + j], proj_drop_rate))
            cursor += depths[i]
            stages.append(PyramidStage(in_chs, embed_dims[i], stride, blocks, stage_grid if pos_embed else None))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
            in_chs = embed_dims[i]
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_head()

    def _init_head(self) -> None:
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # -- timm model API ---------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return submodule_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stages\.0\.(proj|norm|pos_embed)",
            blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.blocks\.(\d+)", None)],
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
        self._init_head()

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (B, C_i, H/r_i, W/r_i) for r_i = 4, 8, 16, 32 (``feature_info``).

        ``indices``: last n stages if int, all if None, else the listed stage indices. There is no
        final norm, so ``norm`` has nothing to apply and is accepted for timm compatibility.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if max_index < 3:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < 3:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) → last stage map (B, C_4, H/32, W/32)."""
        return self.stages(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(-2, -1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# Official FLatten / PolaFormer PVT attention parameters → ours (prefix ``…attn.``).
_OFFICIAL_ATTN_NAMES = {
    "scale": "feature_map.scale",
    "power": "feature_map.power",
    "positional_encoding": "pos_embed.weight",
    "dwc.weight": "dwc.conv.weight",
    "dwc.bias": "dwc.conv.bias",
}


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: PyramidVisionTransformer) -> dict[str, Tensor]:
    """An official FLatten / PolaFormer PVT v1 state dict, renamed for ``model.load_state_dict``.

    Sources: LeapLabTHU/FLatten-Transformer ``models/flatten_pvt.py`` and ZacharyMeng/PolaFormer
    ``models/pola_pvt.py`` (i = 1…4 stages, j blocks); ``{"model": state_dict}`` as saved by their
    ``main.py`` is accepted too.

    Official name → name here:

    * ``patch_embed{i}.proj`` / ``.norm`` → ``stages.{i-1}.proj`` / ``.norm``
    * ``pos_embed{i}`` → ``stages.{i-1}.pos_embed``
    * ``block{i}.{j}.norm1`` / ``norm2`` / ``mlp.fc1`` / ``mlp.fc2`` → ``stages.{i-1}.blocks.{j}.`` same
    * ``….attn.q`` + ``….attn.kv`` → ``….attn.qkv``, rows [q; k; v] (FLatten)
    * ``….attn.qg`` + ``….attn.kv`` → ``….attn.qkv``, rows [q; k; v; g] (PolaFormer: qg = [q; g], kv = [k; v])
    * ``….attn.scale`` / ``….attn.power`` → ``….attn.feature_map.scale`` / ``.power``
    * ``….attn.positional_encoding`` → ``….attn.pos_embed.weight``
    * ``….attn.dwc`` → ``….attn.dwc.conv``;  ``….attn.proj`` and ``head`` keep their names
    * ``norm`` (LayerNorm(512)) → dropped: the official models build it but never call it

    Spatial-reduction softmax stages (``'S'``) keep their names (``q``, ``kv``, ``sr``, ``norm``,
    ``proj``). Unknown stage indices raise; ``load_state_dict(strict=True)`` checks the rest.
    """
    state_dict = state_dict.get("model", state_dict)
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    fused: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key in ("norm.weight", "norm.bias"):
            continue
        m = re.fullmatch(r"(patch_embed|pos_embed|block)(\d+)(.*)", key)
        if m is not None:
            kind, index, rest = m[1], int(m[2]), m[3]
            if not 1 <= index <= len(model.stages):
                raise ValueError(
                    f"checkpoint key {key!r} names stage {index}, but the model has stages 1-{len(model.stages)} "
                    "in the official numbering; is it a PVT v1 checkpoint of this size?"
                )
            stage = f"stages.{index - 1}"
            key = {"patch_embed": f"{stage}{rest}", "pos_embed": f"{stage}.pos_embed"}.get(
                kind, f"{stage}.blocks{rest}"
            )
        a = re.fullmatch(r"(.*\.attn)\.(.+)", key)
        if a is not None and f"{a[1]}.qkv.weight" in ours:  # a linear attention with a fused projection
            q = re.fullmatch(r"(q|qg|kv)\.(weight|bias)", a[2])
            if q is not None:
                fused.setdefault((a[1], q[2]), {})[q[1]] = value
                continue
            key = f"{a[1]}.{_OFFICIAL_ATTN_NAMES.get(a[2], a[2])}"
        out[key] = value
    for (prefix, kind), parts in fused.items():
        if "kv" not in parts or ("q" in parts) == ("qg" in parts):
            raise ValueError(
                f"{prefix}: expected q + kv (FLatten) or qg + kv (PolaFormer) {kind}s, got {sorted(parts)}"
            )
        if "qg" in parts:
            q, g = parts["qg"].chunk(2)
            out[f"{prefix}.qkv.{kind}"] = torch.cat([q, parts["kv"], g])
        else:
            out[f"{prefix}.qkv.{kind}"] = torch.cat([parts["q"], parts["kv"]])
    return out


def _build(name: str, *, size: str, attention: str, **kwargs: Any) -> PyramidVisionTransformer:
    model_args = {**PVT_SIZES[size], **kwargs}
    return build_model_with_cfg(
        PyramidVisionTransformer,
        name,
        pretrained=False,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        attention=attention,
        **model_args,
    )


def register_pvt_models(attention: str) -> list[str]:
    """Register ``pvt_{tiny,small,medium,large}_{attention}`` with timm; returns the new names."""
    names = []
    for size in PVT_SIZES:
        name = f"pvt_{size}_{attention}"

        def build(name: str, size: str = size, **kwargs: Any) -> PyramidVisionTransformer:
            return _build(name, size=size, attention=attention, **kwargs)

        if attention == "softmax":
            doc = f"PVT-{size.capitalize()} v1: spatial-reduction softmax in every stage (pattern 'SSSS'); untrained."
        else:
            doc = (
                f"PVT-{size.capitalize()} v1 widths/depths, {attention!r} attention in all stages ('LLLL'); untrained."
            )
        cfg = untrained_cfg(feature_stride=32, min_input_size=(3, 32, 32), first_conv="stages.0.proj")
        register(name, __name__, build, cfg, doc)
        names.append(name)
    return names
