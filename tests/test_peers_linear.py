"""FLatten, PolaFormer, NaLaFormer layers against independent quadratic formulas (docs/methods.md §3–5).

The references in ``peers_reference.py`` build the N×N score matrix in float64 from the module's
parameters and normalise it explicitly. Tolerance: relative RMS error < 1e-5 for the fp32 module
(the issue's bound; observed errors are ~5e-7).
"""

import pytest
import torch
from helpers import rel_err
from peers_reference import naive_flatten, naive_nala, naive_pola

from mirrorla import create_attention

REFERENCE = {"flatten": naive_flatten, "pola": naive_pola, "nala": naive_nala, "nala_cos": naive_nala}
NAMES = list(REFERENCE)
# Square, non-square, the 14×14 construction grid of P (no resize) and a small odd grid.
GRIDS = [(7, 7), (10, 13), (14, 14), (5, 9)]


def randomize(m, std=0.5):
    """Move the zero-initialised learnables (P, s, w) off zero so the test sees them."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name in ("feature_map.scale", "feature_map.power", "pos_embed.weight"):
                p.normal_(0, std)
            if name in ("gate_sim", "gate_opp"):
                p.normal_(1, 1)
    return m


def build(name, dim=64, heads=2, **kw):
    return randomize(create_attention(name, dim, num_heads=heads, **kw))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", GRIDS)
def test_matches_quadratic_form(name, hw):
    m = build(name)
    x = torch.randn(2, hw[0] * hw[1], 64) * 3
    assert rel_err(m(x, hw=hw), REFERENCE[name](m, x, hw)) < 1e-5


@pytest.mark.parametrize(
    "name, options",
    [
        ("flatten", dict(norm_scope="head")),
        ("flatten", dict(key_pos_grid=None, dwc_kernel=3)),
        ("flatten", dict(key_pos_grid=(6, 8))),
        ("pola", dict(gate=None, stream_gates=True)),
        ("pola", dict(alpha=7.0, dwc_kernel=0, key_pos_grid=None)),
        ("nala", dict(rope=False)),
        ("nala_cos", dict(rope=False, phase_scale=3.0)),
    ],
)
def test_options_match_quadratic_form(name, options):
    m = build(name, **options)
    hw = (6, 8)
    x = torch.randn(2, 48, 64) * 3
    assert rel_err(m(x, hw=hw), REFERENCE[name](m, x, hw)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_prefix_token_gets_no_position_or_conv(name):
    # A DeiT-style cls token: it takes part in q, k, v; P, the DWC and RoPE cover the grid only.
    m = build(name, num_prefix_tokens=1)
    hw = (5, 6)
    x = torch.randn(2, 31, 64) * 3
    assert rel_err(m(x, hw=hw), REFERENCE[name](m, x, hw)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_key_padding_mask_is_honoured_in_every_branch(name):
    m = build(name)
    hw = (6, 7)
    x = torch.randn(2, 42, 64) * 3
    kpm = torch.rand(2, 42) > 0.3
    y = m(x, hw=hw, key_padding_mask=kpm)
    assert torch.isfinite(y).all()
    assert rel_err(y, REFERENCE[name](m, x, hw, kpm)) < 1e-5
    # The masked tokens' content cannot reach the kept outputs through any branch.
    x2 = torch.where(kpm[..., None], x, torch.randn_like(x) * 30)
    y2 = m(x2, hw=hw, key_padding_mask=kpm)
    assert rel_err(y2[kpm], y[kpm]) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    m = build(name, dim=8, heads=2).double()
    x = (torch.randn(1, 6, 8, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: m(t, hw=(2, 3)), (x,), fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_times_100_stay_finite(name):
    m = build(name)
    x = (torch.randn(2, 63, 64) * 100).requires_grad_()
    y = m(x, hw=(7, 9))
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name", NAMES + ["l2vit_lga", "window_softmax"])
def test_stage1_map_56x56_forward_backward(name):
    # The acceptance size: [2, 3136, 64] on CPU, grid inferred (square).
    m = create_attention(name, 64, num_heads=2)
    x = torch.randn(2, 3136, 64, requires_grad=True)
    y = m(x)
    y.mean().backward()
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_grid_errors(name):
    m = create_attention(name, 64, num_heads=2)
    with pytest.raises(ValueError, match=r"H\*W"):
        m(torch.randn(1, 50, 64), hw=(7, 8))
    with pytest.raises(ValueError, match="not a square"):
        m(torch.randn(1, 50, 64))
    with pytest.raises(ValueError, match="attn_mask"):
        m(torch.randn(1, 49, 64), attn_mask=torch.ones(49, 49, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_drop"):
        create_attention(name, 64, num_heads=2, attn_drop=0.1)
    with pytest.raises(ValueError, match="depthwise-conv"):
        m(torch.randn(1, 49, 64), is_causal=True)


def test_grid_is_not_needed_without_grid_parts():
    # With DWC, P and RoPE off, any N works (the layers are then pure token mixers).
    for name, kw in (("flatten", dict(dwc_kernel=0, key_pos_grid=None)), ("nala", dict(dwc_kernel=0, rope=False))):
        m = create_attention(name, 64, num_heads=2, **kw)
        assert m(torch.randn(1, 50, 64)).shape == (1, 50, 64)
        with pytest.raises(ValueError, match=r"H\*W"):  # a given hw is still checked
            m(torch.randn(1, 50, 64), hw=(7, 7))


def test_construction_errors():
    with pytest.raises(TypeError, match="fixes 'feature_map'"):
        create_attention("pola", 64, num_heads=2, feature_map="relu")
    with pytest.raises(TypeError, match="fixes 'dwc_shared'"):
        create_attention("pola", 64, num_heads=2, dwc_shared=False)
    with pytest.raises(TypeError, match="fixes 'gate'"):
        create_attention("nala", 64, num_heads=2, gate="linear")
    with pytest.raises(TypeError, match="renamed; use key_pos_grid"):
        create_attention("flatten", 64, num_heads=2, pe="sincos")
    with pytest.raises(ValueError, match="norm_scope"):
        create_attention("flatten", 64, num_heads=2, norm_scope="token")
    with pytest.raises(ValueError, match="gate must be"):
        create_attention("pola", 64, num_heads=2, gate="tanh")
    with pytest.raises(ValueError, match="stream_gates=True"):
        create_attention("pola", 64, num_heads=2, gate="static")
    with pytest.raises(ValueError, match="head_dim % 4"):
        create_attention("nala", 12, num_heads=2)  # head_dim 6
    with pytest.raises(ValueError, match="nala_form"):
        create_attention("nala", 64, num_heads=2, nala_form="paper")
    with pytest.raises(ValueError, match="grid"):
        create_attention("flatten", 64, num_heads=2, key_pos_grid=(0, 4))
