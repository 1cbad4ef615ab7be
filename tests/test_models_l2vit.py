"""L²ViT backbone: published sizes, block layout, features, any resolution."""

from __future__ import annotations

import pytest
import timm
import torch

import mirrorla  # noqa: F401  (registers the models)
from mirrorla.layers.l2vit import LinearGlobalAttention, LocalWindowAttention
from mirrorla.models.flops import count_macs
from mirrorla.models.l2vit import L2VIT_PUBLISHED

TINY = dict(depths=(2, 2, 2, 2), dims=(32, 32, 64, 64), num_heads=(1, 1, 2, 2))


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_parameter_count_matches_published(size):
    # Published (github.com/ChuanyangZheng/L2ViT readme.md, docs/methods.md §6.3): Tiny 29M, Small 50M, Base 89M.
    with torch.device("meta"):
        model = timm.create_model(f"l2vit_{size}")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    published = L2VIT_PUBLISHED[size][0]
    assert abs(params - published) / published < 0.02, (size, params)


def _check_macs(size: str) -> None:
    # Published MACs at 224² (same README): Tiny 4.7G, Small 9.0G, Base 15.9G, attention matmuls included.
    model = timm.create_model(f"l2vit_{size}")
    macs, attn = count_macs(model, (3, 224, 224))
    published = L2VIT_PUBLISHED[size][1]
    assert abs(macs / 1e9 - published) / published < 0.02, (size, macs)
    assert attn > 0


@pytest.mark.slow  # full-size forward passes: ~5-16 GMACs each
@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_macs_match_published(size):
    _check_macs(size)


def test_blocks_alternate_lwa_and_lga():
    with torch.device("meta"):
        model = timm.create_model("l2vit_small")
    for stage in model.stages:
        kinds = [type(b.attn) for b in stage]
        assert kinds == [LocalWindowAttention if j % 2 == 0 else LinearGlobalAttention for j in range(len(stage))]
    assert [len(s) for s in model.stages] == [2, 2, 18, 2]
    assert all(b.attn.head_dim == 32 for s in model.stages for b in s)
    with torch.device("meta"):
        assert timm.create_model("l2vit_base_384").stages[0][0].attn.window_size == 12
    compat = timm.create_model("l2vit_tiny", l2vit_compat=True, **TINY)
    assert compat.stages[0][0].attn.l2vit_compat


def test_features_only_any_resolution():
    model = timm.create_model("l2vit_tiny", features_only=True, **TINY)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(1, 3, 72, 100))  # 72x100: not multiples of 32, windows padded
    assert [tuple(f.shape) for f in feats] == [(1, 32, 18, 25), (1, 32, 9, 13), (1, 64, 5, 7), (1, 64, 3, 4)]
    assert all(torch.isfinite(f).all() for f in feats)


def test_forward_head_and_intermediates_agree():
    model = timm.create_model("l2vit_tiny", num_classes=7, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == 4
        torch.testing.assert_close(model.forward_head(final), model(x))
