"""Parameters of the peer layers: names, shapes, initial values and counts vs the official code.

Expected counts are derived by hand from the official layer definitions (dim C = 64, heads h = 2,
head dim d = 32, qkv bias on as the official models build them):

* FLatten — LeapLabTHU/FLatten-Transformer ``models/flatten_swin.py`` ``FocusedLinearAttention``
  (window 7×7): qkv Linear(64, 192) 12288 + 192; proj Linear(64, 64) 4096 + 64; dwc Conv2d(32, 32, 5,
  groups 32) 800 + 32; scale (1, 1, 64) 64; positional_encoding (1, 49, 64) 3136 → 20672.
* PolaFormer — ZacharyMeng/PolaFormer ``models/pola_swin.py`` ``PolaLinearAttention`` (window 7×7;
  same layer in fla-org/flash-bidirectional-linear-attention ``flash_bla/layers/polaformer.py``):
  qkvg Linear(64, 256) 16384 + 256; proj 4160; dwc 832; power (1, 2, 1, 32) 64; scale 64;
  positional_encoding 3136 → 24896.
* NaLaFormer — ZacharyMeng/NaLaFormer ``NaLaformer/NALA.py`` ``NormAwareLinearAttn(64, 2)``:
  qkvg Linear(64, 256) 16640; lepe Conv2d(64, 64, 5, groups 64) 1600 + 64; out_proj 4160;
  ln LayerNorm(64) 128 → 22592.
"""

import math

import pytest
import torch

from mirrorla import create_attention


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("flatten", dict(pe_grid=(7, 7)), 20672),
        ("pola", dict(pe_grid=(7, 7)), 24896),
        ("nala", {}, 22592),
        ("nala_cos", {}, 22592),
    ],
)
def test_parameter_count_matches_official(name, kwargs, expected):
    assert n_params(create_attention(name, 64, num_heads=2, **kwargs)) == expected


def test_default_pe_grid_count():
    # The default P is built on the 14×14 DeiT grid: 196·64 = 12544 instead of 3136.
    assert n_params(create_attention("flatten", 64, num_heads=2)) == 20672 - 3136 + 12544
    assert n_params(create_attention("pola", 64, num_heads=2)) == 24896 - 3136 + 12544


def shapes(m):
    return {n: tuple(p.shape) for n, p in m.named_parameters()}


def assert_trunc_normal_002(w):
    assert abs(w.mean().item()) < 0.005 and 0.015 < w.std().item() < 0.025


def test_flatten_parameters_and_init():
    m = create_attention("flatten", 64, num_heads=2, pe_grid=(7, 7))
    assert shapes(m) == {
        "proj.weight": (64, 64),
        "proj.bias": (64,),
        "feature_map.scale": (1, 1, 64),
        "qkv.weight": (192, 64),
        "qkv.bias": (192,),
        "dwc.conv.weight": (32, 1, 5, 5),
        "dwc.conv.bias": (32,),
        "pos_embed.weight": (1, 49, 64),
    }
    assert_trunc_normal_002(m.qkv.weight)
    assert_trunc_normal_002(m.proj.weight)
    assert m.qkv.bias.abs().max() == 0 and m.proj.bias.abs().max() == 0
    assert m.feature_map.scale.abs().max() == 0  # softplus(0) = ln 2
    assert m.pos_embed.weight.abs().max() == 0
    # DWC keeps the PyTorch default (kaiming_uniform(a=√5) → U(±1/√fan_in), fan_in = 25), never re-initialised.
    assert m.dwc.conv.weight.abs().max() <= 1 / 5 and m.dwc.conv.weight.std() > 0.08
    assert m.feature_map.focusing_factor == 3 and m.feature_map.norm_scope == "full"


def test_pola_parameters_and_init():
    m = create_attention("pola", 64, num_heads=2, pe_grid=(7, 7))
    assert shapes(m) == {
        "proj.weight": (64, 64),
        "proj.bias": (64,),
        "feature_map.scale": (1, 1, 64),
        "feature_map.power": (1, 2, 1, 32),
        "qkv.weight": (256, 64),
        "qkv.bias": (256,),
        "dwc.conv.weight": (32, 1, 5, 5),
        "dwc.conv.bias": (32,),
        "pos_embed.weight": (1, 49, 64),
    }
    assert_trunc_normal_002(m.qkv.weight)
    assert m.qkv.bias.abs().max() == 0
    for p in (m.feature_map.scale, m.feature_map.power, m.pos_embed.weight):
        assert p.abs().max() == 0
    assert torch.allclose(m.feature_map.exponent(), torch.full((1, 2, 1, 32), 3.0))  # 1 + 4·sigmoid(0)
    assert m.feature_map.alpha == 4 and m.gate == "linear"
    static = create_attention("pola", 64, num_heads=2, gate="static")
    assert static.qkv.weight.shape == (192, 64)
    assert static.gate_sim.shape == (2, 16) and static.gate_opp.shape == (2, 16)
    assert static.gate_sim.eq(1).all() and static.gate_opp.eq(1).all()


def test_nala_parameters_and_init():
    m = create_attention("nala", 64, num_heads=2)
    assert shapes(m) == {
        "proj.weight": (64, 64),
        "proj.bias": (64,),
        "qkv.weight": (256, 64),
        "qkv.bias": (256,),
        "dwc.conv.weight": (64, 1, 5, 5),
        "dwc.conv.bias": (64,),
        "out_norm.weight": (64,),
        "out_norm.bias": (64,),
    }
    # Linear keeps the PyTorch default: U(±1/√64) for weight and bias (std 1/√(3·64) ≈ 0.072).
    bound = 1 / math.sqrt(64)
    for lin in (m.qkv, m.proj):
        assert lin.weight.abs().max() <= bound and abs(lin.weight.std().item() - bound / math.sqrt(3)) < 0.01
        assert lin.bias.abs().max() <= bound and lin.bias.abs().max() > 0
    assert_trunc_normal_002(m.dwc.conv.weight)  # the official model init reaches the LePE conv
    assert m.dwc.conv.bias.abs().max() == 0
    assert m.out_norm.weight.eq(1).all() and m.out_norm.bias.eq(0).all()
    assert m.gate == "silu" and m.feature_map.form == "code" and m.rope is not None
    assert create_attention("nala_cos", 64, num_heads=2).feature_map.form == "cosine"
    assert not any(".freqs" in k for k in m.state_dict())  # RoPE tables are not checkpointed
