"""The token grid is an argument: model → block → layer → parts, and no module keeps per-call state."""

import pytest
import torch

from mirrorla.models import LinearVisionTransformer, PyramidVisionTransformer
from mirrorla.registry import create_attention

DEIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
PVT = dict(
    img_size=64, embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2),
    depths=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1), num_classes=3,
)  # fmt: skip


def record_grids(model):
    """Forward-pre hooks that record the ``hw`` every attention layer receives."""
    seen, handles = [], []
    for name, m in model.named_modules():
        if name.endswith(".attn"):

            def hook(module, args, kwargs, name=name):
                seen.append((name, kwargs.get("hw", args[1] if len(args) > 1 else None)))

            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, handles


@pytest.mark.parametrize("attention", ["flatten", "nala", "mirror_dwc", "pola"])
def test_deit_passes_the_non_square_patch_grid_to_every_block(attention):
    torch.manual_seed(0)
    model = LinearVisionTransformer(attention, **DEIT).eval()
    x = torch.randn(1, 3, 40, 56)  # patch grid 5×7
    seen, handles = record_grids(model)
    with torch.no_grad():
        out = model.forward_features(x)
        inter = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert [hw for _, hw in seen] == [(5, 7)] * 4
    # The same computation with the grid given to each layer by hand.
    with torch.no_grad():
        t, grid = model.embed(x)
        for blk in model.blocks:
            t = t + blk.attn(blk.norm1(t), hw=(5, 7))
            t = t + blk.mlp(blk.norm2(t))
        assert grid == (5, 7)
        assert torch.equal(out, model.norm(t))
    assert [tuple(f.shape) for f in inter] == [(1, 32, 5, 7)] * 2
    for h in handles:
        h.remove()


@pytest.mark.parametrize("attention", ["flatten", "nala", "mirror"])
def test_pvt_passes_each_stage_grid(attention):
    torch.manual_seed(0)
    model = PyramidVisionTransformer(attention, **PVT).eval()
    seen, handles = record_grids(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert [hw for _, hw in seen] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    for h in handles:
        h.remove()


@pytest.mark.parametrize("attention", ["nala", "flatten", "pola"])
def test_layer_parts_see_the_given_grid(attention):
    # A non-square grid given as hw reaches P (project) and RoPE (mix): the layer output equals the
    # parts called with that grid, and differs from the transposed grid of the same token count.
    torch.manual_seed(0)
    layer = create_attention(attention, 32, 2, num_prefix_tokens=1).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 1 + 4 * 6, 32, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x, hw=(4, 6))
        q, k, v, g = layer.project(x, (4, 6))
        o = layer.merge_heads(layer.attend(q, k, v, None, False, (4, 6))) + layer.dwc(v, (4, 6), 1)
        if layer.out_norm is not None:
            o = layer.out_norm(o)
        if g is not None:
            o = o * (torch.nn.functional.silu(g) if layer.gate == "silu" else g)
        assert torch.allclose(out, layer.proj(o), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(out, layer(x, hw=(6, 4)))
    with pytest.raises(ValueError, match="not a square; pass hw"):
        layer(x)


def snapshot(model):
    return {name: dict(vars(m)) for name, m in model.named_modules()}


@pytest.mark.parametrize(
    "build",
    [
        lambda: LinearVisionTransformer("nala", **DEIT),
        lambda: LinearVisionTransformer("flatten", **DEIT),
        lambda: PyramidVisionTransformer("pola", **PVT),
        lambda: create_attention("mirror_dwc", 32, 2),
    ],
)
def test_no_attribute_of_any_module_changes_across_a_forward(build):
    torch.manual_seed(0)
    model = build()
    x = torch.randn(1, 3, 40, 56) if not hasattr(model, "num_heads") else torch.randn(1, 24, 32)
    kwargs = {} if not hasattr(model, "num_heads") else {"hw": (4, 6)}
    before = snapshot(model)
    model(x, **kwargs).sum().backward()
    after = snapshot(model)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].keys() == after[name].keys(), name
        changed = [k for k in before[name] if before[name][k] is not after[name][k]]
        assert not changed, f"{name}: {changed}"
