"""mirrorla.convert on timm ViTs, and honest MAC counting with the attention matmuls."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import mirrorla
from mirrorla.models.flops import analytic_attention_macs, count_macs, count_params, unfused_attention


@pytest.fixture(scope="module")
def deit_tiny():
    # The DeiT-Tiny architecture (12 blocks, width 192, 3 heads; random weights: nothing can be
    # downloaded here) at 112² (7x7 patches + cls) to keep the test fast on 2 CPU cores.
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", img_size=112).eval()


def test_convert_keeps_weights_and_softmax_roundtrip_is_exact(deit_tiny):
    model = deit_tiny
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    assert mirrorla.convert(model, "mirror") is model
    assert all(type(b.attn.feature_map).__name__ == "MirrorFeatureMap" for b in model.blocks)
    assert model.blocks[0].attn.num_prefix_tokens == 1
    after = model.state_dict()
    # Every weight of the original model is still there, unchanged (qkv/proj now live in the new layers).
    changed = [k for k, v in before.items() if k not in after or not torch.equal(v, after[k])]
    assert not changed, changed
    assert set(after) - set(before), "the MirrorLA layers should add their reflection parameters"
    with torch.no_grad():
        linear_out = model(x)
    assert torch.isfinite(linear_out).all()
    assert not torch.allclose(linear_out, reference)  # the attention really changed

    mirrorla.convert(model, "softmax")
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_convert_with_a_grid_dependent_attention_runs_non_square():
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, dynamic_img_size=True)
    mirrorla.convert(model, "mirror_dwc")
    out = model(torch.randn(1, 3, 48, 80))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert isinstance(model, timm.models.vision_transformer.VisionTransformer)


def test_convert_rejects_what_it_cannot_convert():
    with pytest.raises(TypeError, match="VisionTransformer"):
        mirrorla.convert(nn.Sequential(nn.Linear(4, 4)), "mirror")
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1)
    with pytest.raises(TypeError, match="distill"):
        mirrorla.convert(distilled, "mirror")
    qk_norm = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, qk_norm=True)
    before = type(qk_norm.blocks[0].attn)
    with pytest.raises(TypeError, match="q_norm"):
        mirrorla.convert(qk_norm, "mirror")
    assert type(qk_norm.blocks[0].attn) is before  # nothing was changed
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
    with pytest.raises(ValueError, match="unknown attention"):
        mirrorla.convert(vit, "no_such_attention")
    vit.blocks[0].attn.attn_drop.p = 0.1
    with pytest.raises(ValueError, match="attention dropout"):
        mirrorla.convert(vit, "mirror")


def test_flop_count_includes_attention_matmuls_exactly():
    model = timm.create_model("deit_tiny_softmax", img_size=64, depth=2).eval()
    N, heads, head_dim = 1 + 4 * 4, 3, 64
    total, attn = count_macs(model, (3, 64, 64))
    assert attn == 2 * analytic_attention_macs("softmax", N, heads, head_dim)
    # The fused SDPA kernel is invisible to the counter: the reason for the unfused path.
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 64, 64))
    assert counter.get_total_flops() // 2 == total - attn
    assert model.blocks[0].attn.fused  # restored after counting

    linear = timm.create_model("deit_tiny_mirror", img_size=64, depth=2).eval()
    _, lin_attn = count_macs(linear, (3, 64, 64))
    core = 2 * analytic_attention_macs("linear", N, heads, head_dim)
    assert core <= lin_attn <= core + 2 * 2 * 2 * N * heads * head_dim  # + the mean normaliser's matmuls


def test_count_params_and_unfused_context():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    with unfused_attention(model):
        assert model.blocks[0].attn.fused_attn is False
    assert model.blocks[0].attn.fused_attn is True
    with pytest.raises(ValueError, match="input_size"):
        count_macs(model, (224, 224))


def test_cli_models_and_flops(capsys):
    from mirrorla.cli import main

    assert main(["models", "l2vit_*"]) == 0
    assert "l2vit_tiny" in capsys.readouterr().out
    assert main(["models", "no_such_*"]) == 1
    assert main(["flops", "deit_tiny_mirror", "--img-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "| `deit_tiny_mirror` | 5.72 |" in out and "unfused" in out
    assert main(["flops", "no_such_*"]) == 1
