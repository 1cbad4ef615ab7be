"""The layer contract (docs/methods.md §0.3), the registry API and the demo CLI."""

import pytest
import torch
from helpers import rel_err

import mirrorla
from mirrorla import create_attention, list_attentions, register_attention
from mirrorla.layers import LinearAttention, SoftmaxAttention
from mirrorla.ops.naive import naive_softmax_attention


def test_registry_lists_required_names_and_rejects_unknown():
    names = list_attentions()
    for required in ["softmax", "linear_relu", "linear_elu", "mirror", "mirror_block", "mirror_block_var"]:
        assert required in names
    assert list_attentions("mirror_b*") == ["mirror_block", "mirror_block_var"]
    with pytest.raises(ValueError, match="valid names: .*mirror"):
        create_attention("mirorr", 64, num_heads=2)
    with pytest.raises(ValueError, match="already registered"):
        register_attention("mirror", LinearAttention)


def test_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        create_attention("linear_relu", 100, num_heads=3)
    with pytest.raises(TypeError, match="positive ints"):
        create_attention("linear_relu", 64.0, num_heads=2)


def test_options_that_cannot_be_honoured_raise():
    with pytest.raises(NotImplementedError, match="qk_norm"):
        create_attention("mirror", 64, num_heads=2, qk_norm=True)
    with pytest.raises(ValueError, match="attn_drop"):
        create_attention("mirror", 64, num_heads=2, attn_drop=0.1)
    with pytest.raises(TypeError):
        create_attention("mirror", 64, num_heads=2, not_an_option=3)
    layer = create_attention("linear_relu", 64, num_heads=2)
    with pytest.raises(ValueError, match="attn_mask"):
        layer(torch.randn(1, 9, 64), attn_mask=torch.ones(9, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="gate"):
        create_attention("mirror", 64, num_heads=2, gate="tanh")


def test_grid_errors_for_depthwise_branch():
    layer = create_attention("mirror_dwc", 64, num_heads=2)
    x = torch.randn(1, 50, 64)
    with pytest.raises(ValueError, match="not a square; pass hw"):
        layer(x)
    with pytest.raises(ValueError, match="does not fit"):
        layer(x, hw=(7, 7))
    assert layer(x, hw=(5, 10)).shape == x.shape
    # a cls token is excluded from the grid
    cls_layer = create_attention("mirror_dwc", 64, num_heads=2, num_prefix_tokens=1)
    assert cls_layer(torch.randn(1, 50, 64)).shape == (1, 50, 64)  # 49 = 7×7 spatial


def test_depthwise_branch_matches_explicit_convolution():
    for shared in (True, False):
        layer = create_attention("linear_relu", 32, num_heads=2, dwc_kernel=3, dwc_shared=shared).double()
        x = torch.randn(2, 1 + 12, 32, dtype=torch.float64)
        layer.num_prefix_tokens = 1
        q, k, v, _ = layer.project(x)
        B, H, N, D = v.shape
        img = v[:, :, 1:].transpose(-1, -2)  # (B, H, D, 12)
        conv = layer.dwc.conv
        if shared:
            ref = conv(img.reshape(B * H, D, 3, 4)).reshape(B, H, D, 12)
        else:
            ref = conv(img.reshape(B, H * D, 3, 4)).reshape(B, H, D, 12)
        ref = ref.permute(0, 3, 1, 2).reshape(B, 12, H * D)
        out = layer.dwc(v, (3, 4), 1)
        assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
        assert rel_err(out[:, 1:], ref) < 1e-12


def test_gate_and_out_norm_are_applied():
    torch.manual_seed(0)
    layer = create_attention("linear_relu", 32, num_heads=2, gate="silu", out_norm=True).double()
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    q, k, v, g = layer.project(x)
    o = layer.merge_heads(layer.mix(*layer.feature_map(q, k), v, None, False))
    ref = layer.proj(layer.out_norm(o) * torch.nn.functional.silu(g))
    assert rel_err(layer(x), ref) < 1e-12
    assert layer.qkv.out_features == 4 * 32


def test_softmax_layer_matches_naive_and_honours_masks():
    layer = SoftmaxAttention(32, 4).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    q, k, v = layer.qkv(x).view(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    ref = layer.proj(layer.merge_heads(naive_softmax_attention(q, k, v)))
    assert rel_err(layer(x), ref) < 1e-10
    layer.fused = False
    assert rel_err(layer(x), ref) < 1e-10
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False
    padded = layer(x, key_padding_mask=mask)
    assert rel_err(padded[:1, :7], layer(x[:1, :7])) < 1e-10


@pytest.mark.parametrize("name", ["linear_relu", "linear_elu", "mirror"])
def test_linear_layers_honour_key_padding(name):
    layer = create_attention(name, 32, num_heads=2)
    x = torch.randn(2, 20, 32)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 13:] = False
    out = layer(x, key_padding_mask=mask)
    assert rel_err(out[1:, :13], layer(x[1:, :13])) < 1e-5
    assert rel_err(out[:1], layer(x[:1])) < 1e-5


def test_attention_layer_is_a_class_with_presets():
    cls = mirrorla.attention_layer("mirror_block", num_prefix_tokens=1)
    assert isinstance(cls, type) and issubclass(cls, mirrorla.layers.LinearAttention)
    layer = cls(
        32,
        num_heads=2,
        qkv_bias=True,
        qk_norm=False,
        proj_bias=True,
        attn_drop=0.0,
        proj_drop=0.0,
        norm_layer=torch.nn.LayerNorm,
        depth=3,
    )
    assert layer.num_prefix_tokens == 1 and not layer.feature_map.variance_modulation


def test_mirror_layer_runs_at_the_issue_size():
    layer = create_attention("mirror", dim=384, num_heads=6)
    x = torch.randn(2, 4096, 384, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.shape == x.shape


def test_demo_and_list_cli(capsys):
    from mirrorla.cli import main

    assert main(["demo", "--grid", "4", "--dim", "32", "--heads", "2", "--attentions", "softmax,mirror"]) == 0
    out = capsys.readouterr().out
    assert "| mirror |" in out and "| softmax |" in out
    assert main(["list", "mirror*"]) == 0
    assert "mirror_block_var" in capsys.readouterr().out
