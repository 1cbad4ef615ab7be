"""L²ViT parts (docs/methods.md §6): LGA, LWA, LCM, CPE against independent naive formulas.

Official code: github.com/ChuanyangZheng/L2ViT, classification/models/l2vit.py.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from mirrorla import create_attention
from mirrorla.layers.l2vit import (
    ConvPositionEncoding,
    LinearGlobalAttention,
    LocalConcentrationModule,
    LocalWindowAttention,
)

GRIDS = [(7, 7), (10, 13), (14, 14), (5, 9)]  # square, non-square, non-multiples of the window


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def heads(t, h):
    B, N, C = t.shape
    return t.view(B, N, h, C // h).transpose(1, 2)


def merge(t):
    B, h, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, h * d)


# -- LGA -----------------------------------------------------------------------------------------
def naive_lga(m: LinearGlobalAttention, x, key_padding_mask=None):
    """Quadratic form: A = ReLU(q) ReLU(k)ᵀ; O = τ · A V / max(A·1, 100) (docs/methods.md §6.1)."""
    h = m.num_heads
    q, k, v = (heads(t, h) for t in F.linear(x, m.qkv.weight, m.qkv.bias).chunk(3, dim=-1))
    a = F.relu(q) @ F.relu(k).transpose(-1, -2)  # (B, h, N, N)
    if key_padding_mask is not None:
        a = a * key_padding_mask[:, None, None, :]
    o = a @ v / a.sum(-1, keepdim=True).clamp_min(100.0) * m.temperature.view(1, h, 1, 1)
    return F.linear(merge(o), m.proj.weight, m.proj.bias)


@pytest.mark.parametrize("hw", GRIDS)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_lga_matches_quadratic_form(hw, scale):
    m = create_attention("l2vit_lga", 64, num_heads=2)
    x = torch.randn(2, hw[0] * hw[1], 64) * scale
    assert rel_err(m(x, hw=hw), naive_lga(m, x)) < 1e-5


def test_lga_clamp_is_exercised_on_both_sides():
    # Guard that the quadratic test above covers clamped and unclamped rows (else it could not
    # tell the clamp from no clamp).
    m = create_attention("l2vit_lga", 64, num_heads=2)
    for scale, expect_clamped in ((1.0, True), (30.0, False)):
        x = torch.randn(2, 196, 64) * scale
        q, k, _ = (heads(t, 2) for t in m.qkv(x).chunk(3, dim=-1))
        den = (F.relu(q) * F.relu(k).sum(-2, keepdim=True)).sum(-1)
        frac = (den < 100).float().mean().item()
        assert (frac > 0.9) if expect_clamped else (frac < 0.1), (scale, frac)


def test_lga_key_padding_mask():
    m = create_attention("l2vit_lga", 32, num_heads=2)
    x = torch.randn(2, 50, 32) * 30
    kpm = torch.rand(2, 50) > 0.3
    assert rel_err(m(x, key_padding_mask=kpm), naive_lga(m, x, kpm)) < 1e-5


def test_lga_parameters_and_count():
    m = create_attention("l2vit_lga", 64, num_heads=2)
    # Official LinearAttention(dim=64, num_heads=2, qkv_bias=True) as built by LGABlock:
    # qkv Linear(64, 192) 12288 + 192, proj Linear(64, 64) 4096 + 64, temperature (2, 1, 1) 2 → 16642.
    assert n_params(m) == 16642
    assert m.temperature.shape == (2, 1, 1)
    assert torch.allclose(m.temperature, torch.full((2, 1, 1), 32**-0.5))  # d^-1/2, d = 32
    assert m.qkv.weight.shape == (192, 64) and m.qkv.bias.abs().max() == 0
    assert 0.015 < m.qkv.weight.std().item() < 0.025  # trunc_normal(std 0.02); PyTorch default is ~0.072
    assert m.proj.bias.abs().max() == 0


@pytest.mark.parametrize("min_den", [100.0, 1e-3])  # clamp active everywhere / nowhere at this size
def test_lga_gradcheck_float64(min_den):
    m = LinearGlobalAttention(4, num_heads=2, min_denominator=min_den).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64) * 3
    assert torch.autograd.gradcheck(m, (x.requires_grad_(),))


def test_lga_large_inputs_finite_and_grads_reach_every_parameter():
    m = create_attention("l2vit_lga", 64, num_heads=2)
    x = torch.randn(2, 196, 64) * 100
    y = m(x)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_lga_bad_input():
    with pytest.raises(ValueError, match="attn_drop"):
        LinearGlobalAttention(64, num_heads=2, attn_drop=0.1)
    with pytest.raises(TypeError, match="fixes 'feature_map'"):
        LinearGlobalAttention(64, num_heads=2, feature_map="elu")
    with pytest.raises(ValueError, match="min_denominator"):
        LinearGlobalAttention(64, num_heads=2, min_denominator=0.0)
    m = LinearGlobalAttention(64, num_heads=2)
    with pytest.raises(ValueError, match=r"\(B, N, 64\)"):
        m(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="attn_mask"):
        m(torch.randn(2, 10, 64), attn_mask=torch.ones(10, 10, dtype=torch.bool))


# -- LWA -----------------------------------------------------------------------------------------
def naive_window_attention(m: LocalWindowAttention, x, hw, key_padding_mask=None):
    """Full N'×N' softmax with a same-window mask over the zero-padded grid (no partitioning).

    Keys allowed for a query: same window, and (unless l2vit_compat) a real token, and kept by the
    key-padding mask. Padded tokens are zero rows, as after LN + F.pad in the official LWABlock.
    """
    B, N, C = x.shape
    Hg, Wg = hw
    w = m.window_size
    Hp, Wp = math.ceil(Hg / w) * w, math.ceil(Wg / w) * w
    grid = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    grid[:, :Hg, :Wg] = x.view(B, Hg, Wg, C)
    real = torch.zeros(B, Hp, Wp, dtype=torch.bool)
    real[:, :Hg, :Wg] = True if key_padding_mask is None else key_padding_mask.view(B, Hg, Wg)
    if m.l2vit_compat:
        real[:, Hg:, :] = True
        real[:, :, Wg:] = True
    rows = torch.arange(Hp).repeat_interleave(Wp)
    cols = torch.arange(Wp).repeat(Hp)
    win = (rows // w) * (Wp // w) + cols // w
    allowed = (win[:, None] == win[None, :])[None] & real.view(B, 1, Hp * Wp)  # (B, N', N')
    t = grid.view(B, Hp * Wp, C)
    q, k, v = (heads(u, m.num_heads) for u in F.linear(t, m.qkv.weight, m.qkv.bias).chunk(3, dim=-1))
    s = (q @ k.transpose(-1, -2)) * m.head_dim**-0.5
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    o = merge(torch.softmax(s, -1) @ v).view(B, Hp, Wp, C)[:, :Hg, :Wg].reshape(B, N, C)
    return F.linear(o, m.proj.weight, m.proj.bias)


@pytest.mark.parametrize("hw", GRIDS)
@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_window_attention_matches_masked_quadratic_form(hw, compat, fused):
    m = create_attention("window_softmax", 64, num_heads=2, l2vit_compat=compat)
    m.fused = fused
    x = torch.randn(2, hw[0] * hw[1], 64) * 10  # large enough that the softmax is far from uniform
    assert rel_err(m(x, hw=hw), naive_window_attention(m, x, hw)) < 1e-5


def test_window_padding_mask_matters():
    # On a grid that needs padding the default and compat outputs must differ (the mask is real),
    # and on a multiple of the window they must agree.
    m = create_attention("window_softmax", 32, num_heads=2)
    x = torch.randn(1, 10 * 13, 32) * 10
    y_masked = m(x, hw=(10, 13))
    m.l2vit_compat = True
    assert rel_err(m(x, hw=(10, 13)), y_masked) > 1e-3
    x = torch.randn(1, 14 * 7, 32)
    y_compat = m(x, hw=(14, 7))
    m.l2vit_compat = False
    assert torch.allclose(m(x, hw=(14, 7)), y_compat, atol=1e-6)


@pytest.mark.parametrize("compat", [False, True])
def test_window_key_padding_mask(compat):
    m = create_attention("window_softmax", 32, num_heads=2, l2vit_compat=compat)
    hw = (9, 11)
    x = torch.randn(2, 99, 32) * 10
    kpm = torch.rand(2, 99) > 0.4
    kpm[1, :] = True
    kpm[0, : 7 * 11] = False  # whole windows masked: their (discarded) outputs must stay finite
    y = m(x, hw=hw, key_padding_mask=kpm)
    assert torch.isfinite(y).all()
    ref = naive_window_attention(m, x, hw, kpm)
    assert rel_err(y[kpm], ref[kpm]) < 1e-5
    # Changing masked tokens does not change kept outputs.
    x2 = torch.where(kpm[..., None], x, torch.randn_like(x) * 50)
    assert torch.allclose(m(x2, hw=hw, key_padding_mask=kpm)[kpm], y[kpm], atol=1e-5)


def test_window_attention_parameters_and_count():
    m = create_attention("window_softmax", 64, num_heads=2)
    # Official WindowAttention(dim=64, window_size=7, num_heads=2, qkv_bias=True):
    # qkv Linear(64, 192) 12288 + 192, proj Linear(64, 64) 4096 + 64 → 16640 (no relative position bias).
    assert n_params(m) == 16640
    assert m.window_size == 7 and not m.l2vit_compat
    assert m.qkv.bias.abs().max() == 0 and m.proj.bias.abs().max() == 0


@pytest.mark.parametrize("compat", [False, True])
def test_window_attention_gradcheck_float64(compat):
    m = LocalWindowAttention(4, num_heads=2, window_size=2, l2vit_compat=compat).double()
    m.fused = False
    x = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, hw=(3, 2)), (x,))  # pads 3 → 4 rows


def test_window_attention_large_inputs_finite():
    m = create_attention("window_softmax", 64, num_heads=2)
    x = (torch.randn(2, 10 * 13, 64) * 100).requires_grad_()
    y = m(x, hw=(10, 13))
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_window_attention_bad_input():
    m = LocalWindowAttention(32, num_heads=2)
    with pytest.raises(ValueError, match="H\\*W"):
        m(torch.randn(1, 50, 32), hw=(7, 8))
    with pytest.raises(ValueError, match="not a square"):
        m(torch.randn(1, 50, 32))
    with pytest.raises(ValueError, match="attn_mask"):
        m(torch.randn(1, 49, 32), attn_mask=torch.ones(49, 49, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_causal"):
        m(torch.randn(1, 49, 32), is_causal=True)
    with pytest.raises(ValueError, match="prefix"):
        LocalWindowAttention(32, num_heads=2, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="window_size"):
        LocalWindowAttention(32, num_heads=2, window_size=0)


# -- LCM and CPE ----------------------------------------------------------------------------------
def depthwise(img, conv):
    """Depthwise conv written out as a sum of shifted images (independent of F.conv2d)."""
    B, C, H, W = img.shape
    k = conv.kernel_size[0]
    p = k // 2
    padded = F.pad(img, (p, p, p, p))
    out = conv.bias.view(1, C, 1, 1).expand(B, C, H, W).clone()
    for i in range(k):
        for j in range(k):
            out = out + padded[:, :, i : i + H, j : j + W] * conv.weight[:, 0, i, j].view(1, C, 1, 1)
    return out


@pytest.mark.parametrize("hw", [(7, 7), (6, 11)])
def test_lcm_matches_formula_in_both_layouts(hw):
    m = LocalConcentrationModule(16).eval()
    with torch.no_grad():  # non-trivial BN statistics and affine
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.uniform_(0.5, 2)
        m.bn.bias.uniform_(-1, 1)
    img = torch.randn(2, 16, *hw)
    bn = m.bn
    mid = F.gelu(depthwise(img, m.conv1))
    mid = (mid - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    mid = mid * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    ref = depthwise(mid, m.conv2)  # the branch only: no residual inside the module
    assert rel_err(m(img), ref) < 1e-5
    tokens = img.flatten(2).transpose(1, 2)
    assert rel_err(m(tokens, hw=hw), ref.flatten(2).transpose(1, 2)) < 1e-5


@pytest.mark.parametrize("hw", [(7, 7), (6, 11)])
def test_cpe_is_residual_depthwise_3x3(hw):
    m = ConvPositionEncoding(16)
    img = torch.randn(2, 16, *hw)
    ref = img + depthwise(img, m.proj)
    assert rel_err(m(img), ref) < 1e-5
    tokens = img.flatten(2).transpose(1, 2)
    assert rel_err(m(tokens, hw=hw), ref.flatten(2).transpose(1, 2)) < 1e-5


def test_lcm_cpe_parameters_and_counts():
    lcm, cpe = LocalConcentrationModule(64), ConvPositionEncoding(64)
    # Official LCM(in_features=64): conv1 DW7 64·49 + 64, bn 64 + 64, conv2 64·49 + 64 → 6528.
    assert n_params(lcm) == 6528
    # Official CPE(dim=64, k=3): DW3 64·9 + 64 → 640.
    assert n_params(cpe) == 640
    assert lcm.conv1.weight.shape == (64, 1, 7, 7) and lcm.conv1.groups == 64
    assert isinstance(lcm.act, torch.nn.GELU) and isinstance(lcm.bn, torch.nn.BatchNorm2d)
    for conv in (lcm.conv1, lcm.conv2, cpe.proj):  # official _init_weights: trunc_normal 0.02, bias 0
        assert conv.bias.abs().max() == 0
        assert 0.012 < conv.weight.std().item() < 0.028  # PyTorch default DW3 would be ~0.19
    assert cpe.proj.weight.shape == (64, 1, 3, 3)


def test_lcm_cpe_gradcheck_float64():
    lcm = LocalConcentrationModule(2, kernel_size=3).double()  # train-mode BN: batch statistics
    cpe = ConvPositionEncoding(2).double()
    x = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lcm(t, hw=(2, 3)), (x,))
    assert torch.autograd.gradcheck(lambda t: cpe(t, hw=(2, 3)), (x,))


def test_lcm_cpe_bad_input():
    lcm = LocalConcentrationModule(16)
    with pytest.raises(ValueError, match="H\\*W"):
        lcm(torch.randn(1, 50, 16), hw=(7, 8))
    with pytest.raises(ValueError, match="not a square"):
        lcm(torch.randn(1, 50, 16))
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\)"):
        lcm(torch.randn(1, 8, 7, 7))
    with pytest.raises(ValueError, match="disagrees"):
        ConvPositionEncoding(16)(torch.randn(1, 16, 7, 7), hw=(7, 8))
    with pytest.raises(ValueError, match="odd"):
        ConvPositionEncoding(16, kernel_size=4)
