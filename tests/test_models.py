"""Backbones registered with timm: every name builds, trains a step, round-trips its state; shapes,
resolutions, parameter counts against published numbers."""

from __future__ import annotations

import io

import pytest
import timm
import torch

import mirrorla
from mirrorla.models import list_models
from mirrorla.models.pyramid import PVT_PUBLISHED_PARAMS_M, SpatialReductionAttention
from mirrorla.models.vit import SKIPPED

# Tiny widths so that every name runs forward+backward in well under a second on 2 CPU cores.
TINY = {
    "deit": dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5),
    "pvt": dict(
        img_size=64,
        embed_dims=(16, 16, 32, 32),
        num_heads=(1, 1, 2, 2),
        mlp_ratios=(2, 2, 2, 2),
        depths=(1, 1, 1, 1),
        num_classes=5,
    ),
    # Two blocks per stage so that both LWA and LGA+LCM run; 64² input gives grids 16/8/4/2, which
    # exercises the window padding (7 does not divide 16).
    "l2vit": dict(depths=(2, 2, 2, 2), dims=(32, 32, 64, 64), num_heads=(1, 1, 2, 2), num_classes=5, img_size=64),
}


def tiny_kwargs(name: str) -> dict:
    kwargs = dict(TINY.get(name.split("_")[0], {}))
    if name.startswith("l2vit"):
        kwargs.pop("img_size")  # the convolutional L²ViT has no build resolution
    return kwargs


def input_for(name: str, batch: int = 2) -> torch.Tensor:
    size = TINY[name.split("_")[0]]["img_size"]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_every_attention_has_model_names_in_timm():
    names = set(timm.list_models())
    ours = set(list_models())
    assert ours and ours <= names
    for attention in mirrorla.list_attentions():
        for size in ("tiny", "small", "medium", "large"):
            assert f"pvt_{size}_{attention}" in ours
        for size in ("tiny", "small", "base"):
            assert (f"deit_{size}_{attention}" in ours) != (attention in SKIPPED), attention
    # timm's own pattern search finds them too (how a user would look).
    assert "deit_tiny_mirror" in timm.list_models("deit_*_mirror")


def _tiny_size(name: str) -> bool:
    return name.split("_")[1] == "tiny"


def test_every_name_builds():
    # Tiny widths on the meta device: every entry point and constructor check runs, no memory or
    # init cost. Full sizes are covered by the parameter-count tests below.
    for name in list_models():
        with torch.device("meta"):
            model = timm.create_model(name, **tiny_kwargs(name))
        if not name.startswith("l2vit"):
            assert name.endswith(f"_{model.attention}"), (name, model.attention)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_deit_sizes_match_timm_deit(size):
    with torch.device("meta"):
        ours = timm.create_model(f"deit_{size}_softmax")
        ref = timm.create_model(f"deit_{size}_patch16_224")
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(ours) == shapes(ref)


# The sizes of one architecture differ only in depths/widths, which the tiny kwargs override; the
# default suite runs every attention once per architecture, `-m slow` runs every name.
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if _tiny_size(n) else pytest.mark.slow)
        for n in list_models()
        if n.split("_")[0] in TINY
    ],
)
def test_model_forward_backward_state_dict(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **tiny_kwargs(name))
    x = input_for(name)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient (DDP would need find_unused_parameters): {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)  # a different init, so equal outputs prove the load
    clone = timm.create_model(name, **tiny_kwargs(name))
    clone.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    model.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


def test_pretrained_true_raises_instead_of_random_weights():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("deit_tiny_mirror", pretrained=True)
    cfg = timm.models.get_pretrained_cfg("pvt_tiny_mirror")
    assert not cfg.has_weights


def test_deit_softmax_matches_timm_deit_parameters_and_loads_its_weights():
    ours = timm.create_model("deit_tiny_softmax", img_size=32, depth=2)
    ref = timm.create_model("deit_tiny_patch16_224", img_size=32, depth=2)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    ours.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", ["tiny", "small", "medium", "large"])
def test_pvt_softmax_parameter_count_matches_published(size):
    # PVT v1 params (M): Tiny 13.2, Small 24.5, Medium 44.2, Large 61.4 — github.com/whai362/PVT,
    # classification/README.md ("PVTv1 on ImageNet-1K" table). Our softmax PVT drops the cls token
    # and the final norm (as the FLatten/PolaFormer PVT code does), ≈1.5k parameters.
    with torch.device("meta"):  # parameter shapes only; no memory, no init cost
        model = timm.create_model(f"pvt_{size}_softmax")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PVT_PUBLISHED_PARAMS_M[size]) / PVT_PUBLISHED_PARAMS_M[size] < 0.01, params


def test_pvt_attention_pattern():
    model = timm.create_model("pvt_tiny_mirror", attn_pattern="LLSS", **{**TINY["pvt"], "num_classes": 0})
    kinds = [type(stage.blocks[0].attn).__name__ for stage in model.stages]
    assert kinds[2:] == ["SpatialReductionAttention"] * 2
    assert kinds[0] == kinds[1] == "LinearAttention"
    assert type(model.stages[0].blocks[0].attn.feature_map).__name__ == "MirrorFeatureMap"
    assert [s.blocks[0].attn.sr_ratio for s in model.stages[2:]] == [2, 1]
    assert timm.create_model("pvt_tiny_softmax", **TINY["pvt"]).attn_pattern == "SSSS"
    with pytest.raises(ValueError, match="'L' .* and 'S'"):
        timm.create_model("pvt_tiny_mirror", attn_pattern="LLXS", **TINY["pvt"])
    with pytest.raises(ValueError, match="4 entries"):
        timm.create_model("pvt_tiny_mirror", attn_pattern="LLS", **TINY["pvt"])


def test_spatial_reduction_attention_against_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 6 * 10, 32)
    sra = SpatialReductionAttention(32, 4, sr_ratio=2).eval()
    sra.fused = False
    slow = sra(x, hw=(6, 10))
    sra.fused = True
    torch.testing.assert_close(sra(x, hw=(6, 10)), slow, rtol=1e-5, atol=1e-6)
    # Reference by hand: keys/values from the 2x2-strided conv grid (3x5), then softmax attention.
    B, N, C = x.shape
    red = sra.norm(sra.sr(x.transpose(1, 2).reshape(B, C, 6, 10)).flatten(2).transpose(1, 2))
    q = sra.q(x).view(B, N, 4, 8).transpose(1, 2)
    k, v = sra.kv(red).view(B, 15, 2, 4, 8).permute(2, 0, 3, 1, 4)
    ref = ((q @ k.transpose(-2, -1)) / 8**0.5).softmax(-1) @ v
    ref = sra.proj(ref.transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(slow, ref, rtol=1e-5, atol=1e-6)
    # sr = 1 is plain softmax attention: same output as mirrorla's SoftmaxAttention with the same weights.
    sra1 = SpatialReductionAttention(32, 4, sr_ratio=1).eval()
    soft = mirrorla.create_attention("softmax", 32, 4).eval()
    with torch.no_grad():
        soft.qkv.weight.copy_(torch.cat([sra1.q.weight, sra1.kv.weight]))
        soft.qkv.bias.copy_(torch.cat([sra1.q.bias, sra1.kv.bias]))
        soft.proj.load_state_dict(sra1.proj.state_dict())
    torch.testing.assert_close(sra1(x, hw=(6, 10)), soft(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="smaller than sr_ratio"):
        SpatialReductionAttention(32, 4, sr_ratio=8)(x, hw=(6, 10))


def test_pvt_features_only_shapes_and_strides():
    model = timm.create_model("pvt_tiny_mirror", features_only=True, **{**TINY["pvt"], "num_classes": 0})
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [16, 16, 32, 32]
    feats = model(torch.randn(2, 3, 64, 96))  # non-square
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 24), (2, 16, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    model = timm.create_model("pvt_tiny_mirror", features_only=True, out_indices=(1, 3), **TINY["pvt"])
    assert [f.shape[1] for f in model(torch.randn(1, 3, 64, 64))] == [16, 32]


def test_deit_features_only_and_forward_intermediates():
    kwargs = {**TINY["deit"], "num_classes": 0, "depth": 3}
    model = timm.create_model("deit_tiny_mirror_dwc", features_only=True, **kwargs)
    assert model.feature_info.reduction() == [8, 8, 8]
    feats = model(torch.randn(2, 3, 32, 48))  # non-square grid 4x6: the DWC branch needs the grid
    assert [tuple(f.shape) for f in feats] == [(2, 32, 4, 6)] * 3
    full = timm.create_model("deit_tiny_mirror", **{**TINY["deit"], "depth": 3})
    inter = full.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[0, 2], intermediates_only=True)
    assert [tuple(f.shape) for f in inter] == [(1, 32, 4, 4), (1, 32, 4, 4)]


def test_deit_runs_at_other_resolutions_with_a_grid_dependent_attention():
    model = timm.create_model("deit_tiny_mirror_dwc", **TINY["deit"]).eval()
    with torch.no_grad():
        for h, w in [(32, 32), (48, 48), (24, 40)]:
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 5) and torch.isfinite(out).all()
            assert not hasattr(model.blocks[0].attn, "grid_size")  # the grid is an argument, not state


def test_pyramid_has_no_size_dependent_parameters_except_resampled_positions():
    small = timm.create_model("pvt_tiny_mirror", **{**TINY["pvt"], "img_size": 64})
    large = timm.create_model("pvt_tiny_mirror", **{**TINY["pvt"], "img_size": 128})
    diff = {
        n
        for (n, p), (_, q) in zip(small.named_parameters(), large.named_parameters(), strict=True)
        if p.shape != q.shape
    }
    assert diff == {f"stages.{i}.pos_embed" for i in range(4)}
    no_pos = timm.create_model("pvt_tiny_mirror", pos_embed=False, **TINY["pvt"])
    assert not any("pos_embed" in n for n, _ in no_pos.named_parameters())


def test_mirrorla_pyramid_runs_at_512_on_cpu():
    # The real PVT-Tiny widths with MirrorLA in all four stages ('LLLL'), built at 224², run at 512²:
    # stage 1 has 128² = 16384 tokens, which linear attention handles in O(N).
    torch.manual_seed(0)
    model = timm.create_model("pvt_tiny_mirror", num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 512, 512))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_no_weight_decay_includes_attention_exclusions():
    deit = timm.create_model("deit_tiny_mirror", **TINY["deit"])
    nwd = deit.no_weight_decay()
    assert {"pos_embed", "cls_token"} <= nwd
    assert "blocks.0.attn.feature_map.theta" in nwd
    assert set(dict(deit.named_parameters())) >= {n for n in nwd if n.startswith("blocks.")}
    pvt = timm.create_model("pvt_tiny_mirror", **TINY["pvt"])
    assert "stages.3.blocks.0.attn.feature_map.theta" in pvt.no_weight_decay()


def test_spatial_reduction_attention_follows_dtype():
    sra = SpatialReductionAttention(32, 4, sr_ratio=2, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in sra.parameters())
    assert sra(torch.randn(1, 36, 32, dtype=torch.float64), hw=(6, 6)).dtype == torch.float64


def test_timm_dtype_reaches_mirrorla_layers():
    model = timm.create_model("deit_tiny_mirror", num_classes=3, img_size=32, patch_size=8, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
