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
        ("flatten", dict(key_pos_grid=(7, 7)), 20672),
        ("pola", dict(key_pos_grid=(7, 7)), 24896),
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
    m = create_attention("flatten", 64, num_heads=2, key_pos_grid=(7, 7))
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
    m = create_attention("pola", 64, num_heads=2, key_pos_grid=(7, 7))
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
    static = create_attention("pola", 64, num_heads=2, gate=None, stream_gates=True)
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


# -- PVT backbones: per-stage key position tables, official parameter counts and checkpoint names ------------
# Counted by instantiating the official models at 224² with 1000 classes and their ImageNet configs
# (attn_type 'LLLL', PVT_LA_SR_RATIOS 1111): ZacharyMeng/PolaFormer ``models/pola_pvt.py`` and
# LeapLabTHU/FLatten-Transformer ``models/flatten_pvt.py`` (commit a7f0a4b). Pola-PVT-T and FLatten-PVT-T
# are the 12.9M / 12.2M of the READMEs.
OFFICIAL_PVT_PARAMS = {
    "pola": {"tiny": 12_924_648, "small": 23_157_224, "medium": 39_965_672, "large": 54_366_568},
    "flatten": {"tiny": 12_150_504, "small": 21_670_248, "medium": 37_242_216, "large": 50_649_192},
}
# Both official models build ``self.norm = LayerNorm(512)`` but never call it (``x = self.norm(x)`` is
# commented out in ``forward_features``); this library has no such dead parameter, and
# ``checkpoint_filter_fn`` drops ``norm.weight`` / ``norm.bias``.
OFFICIAL_UNUSED_FINAL_NORM = 2 * 512
STAGE_TOKENS = (56 * 56, 28 * 28, 14 * 14, 7 * 7)  # num_patches // sr² with sr = 1, at 224²
STAGE_DIMS, STAGE_HEADS = (64, 128, 320, 512), (1, 2, 5, 8)


def pvt(name, **kw):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, **kw)


@pytest.mark.parametrize("attention", ["pola", "flatten"])
def test_pvt_tiny_parameter_count_matches_the_official_model(attention):
    model = pvt(f"pvt_tiny_{attention}", num_classes=1000)
    assert n_params(model) + OFFICIAL_UNUSED_FINAL_NORM == OFFICIAL_PVT_PARAMS[attention]["tiny"]


@pytest.mark.parametrize("attention", ["pola", "flatten"])
@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_pvt_parameter_count_matches_the_official_model(attention, size):
    with torch.device("meta"):  # shapes only: the large models would take seconds to initialise
        model = pvt(f"pvt_{size}_{attention}", num_classes=1000)
    assert n_params(model) + OFFICIAL_UNUSED_FINAL_NORM == OFFICIAL_PVT_PARAMS[attention][size]


@pytest.mark.parametrize("attention", ["pola", "flatten"])
def test_pvt_key_position_table_is_sized_per_stage(attention):
    with torch.device("meta"):
        model = pvt(f"pvt_tiny_{attention}")
    for i, (tokens, dim) in enumerate(zip(STAGE_TOKENS, STAGE_DIMS, strict=True)):
        for blk in model.stages[i].blocks:
            assert tuple(blk.attn.pos_embed.weight.shape) == (1, tokens, dim)
    with torch.device("meta"):
        at_256 = pvt(f"pvt_tiny_{attention}", img_size=256)
    assert at_256.stages[0].blocks[0].attn.pos_embed.grid == (64, 64)
    with torch.device("meta"):
        explicit = pvt(f"pvt_tiny_{attention}", attn_kwargs=dict(key_pos_grid=(14, 14)))
    assert all(blk.attn.pos_embed.grid == (14, 14) for stage in explicit.stages for blk in stage.blocks)


@pytest.mark.parametrize("attention", ["pola", "flatten"])
def test_pvt_with_per_stage_tables_runs_at_other_resolutions(attention):
    small = dict(embed_dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2), depths=(1, 1, 1, 1))
    model = pvt(f"pvt_tiny_{attention}", img_size=64, num_classes=3, **small).eval()
    assert model.stages[0].blocks[0].attn.pos_embed.grid == (16, 16)
    with torch.no_grad():
        for h, w in [(64, 64), (96, 96), (64, 96)]:
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 3) and torch.isfinite(out).all()


def official_pvt_state_shapes(attention, depths=(2, 2, 2, 2), num_classes=1000):
    """Names and shapes of an official Pola-PVT / FLatten-PVT state dict (LLLL, sr 1, 224²), written
    from ``models/pola_pvt.py`` / ``models/flatten_pvt.py``: ``patch_embed{i}``, ``pos_embed{i}``,
    ``block{i}.{j}`` with ``attn.{q,kv | qg,kv,power}, attn.{proj, dwc, scale, positional_encoding}``,
    the unused ``norm`` and ``head``."""
    shapes, in_chs = {}, 3
    for i, (tokens, C, h, depth) in enumerate(zip(STAGE_TOKENS, STAGE_DIMS, STAGE_HEADS, depths, strict=True), start=1):
        k = 4 if i == 1 else 2
        shapes |= {
            f"pos_embed{i}": (1, tokens, C),
            f"patch_embed{i}.proj.weight": (C, in_chs, k, k),
            f"patch_embed{i}.proj.bias": (C,),
            f"patch_embed{i}.norm.weight": (C,),
            f"patch_embed{i}.norm.bias": (C,),
        }
        d = C // h
        for j in range(depth):
            b = f"block{i}.{j}"
            shapes |= {f"{b}.{n}.{t}": (C,) for n in ("norm1", "norm2") for t in ("weight", "bias")}
            shapes |= {
                f"{b}.mlp.fc1.weight": (8 * C if i < 3 else 4 * C, C),
                f"{b}.mlp.fc1.bias": (8 * C if i < 3 else 4 * C,),
                f"{b}.mlp.fc2.weight": (C, 8 * C if i < 3 else 4 * C),
                f"{b}.mlp.fc2.bias": (C,),
                f"{b}.attn.kv.weight": (2 * C, C),
                f"{b}.attn.kv.bias": (2 * C,),
                f"{b}.attn.proj.weight": (C, C),
                f"{b}.attn.proj.bias": (C,),
                f"{b}.attn.dwc.weight": (d, 1, 5, 5),
                f"{b}.attn.dwc.bias": (d,),
                f"{b}.attn.scale": (1, 1, C),
                f"{b}.attn.positional_encoding": (1, tokens, C),
            }
            if attention == "pola":
                shapes |= {f"{b}.attn.qg.weight": (2 * C, C), f"{b}.attn.qg.bias": (2 * C,)}
                shapes[f"{b}.attn.power"] = (1, h, 1, d)
            else:
                shapes |= {f"{b}.attn.q.weight": (C, C), f"{b}.attn.q.bias": (C,)}
        in_chs = C
    shapes |= {
        "norm.weight": (512,),
        "norm.bias": (512,),
        "head.weight": (num_classes, 512),
        "head.bias": (num_classes,),
    }
    return shapes


@pytest.mark.parametrize("attention", ["pola", "flatten"])
def test_official_pvt_checkpoint_maps_one_to_one(attention):
    from mirrorla.models.pyramid import checkpoint_filter_fn

    shapes = official_pvt_state_shapes(attention)
    assert sum(math.prod(s) for s in shapes.values()) == OFFICIAL_PVT_PARAMS[attention]["tiny"]
    g = torch.Generator().manual_seed(0)
    official = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    model = pvt(f"pvt_tiny_{attention}")
    mapped = checkpoint_filter_fn({"model": official}, model)  # the official main.py wraps it in "model"
    model.load_state_dict(mapped, strict=True)  # every name and shape matches, nothing left over
    assert sum(t.numel() for t in mapped.values()) + OFFICIAL_UNUSED_FINAL_NORM == sum(
        t.numel() for t in official.values()
    )
    attn, C = model.stages[1].blocks[1].attn, 128
    if attention == "pola":  # ours: rows [q; k; v; g]; official qg = [q; g], kv = [k; v]
        qg, kv = official["block2.1.attn.qg.weight"], official["block2.1.attn.kv.weight"]
        assert torch.equal(attn.qkv.weight, torch.cat([qg[:C], kv, qg[C:]]))
        assert torch.equal(attn.feature_map.power, official["block2.1.attn.power"])
    else:  # ours: rows [q; k; v]; official q, kv = [k; v]
        q, kv = official["block2.1.attn.q.weight"], official["block2.1.attn.kv.weight"]
        assert torch.equal(attn.qkv.weight, torch.cat([q, kv]))
    assert torch.equal(attn.pos_embed.weight, official["block2.1.attn.positional_encoding"])
    assert torch.equal(attn.feature_map.scale, official["block2.1.attn.scale"])
    assert torch.equal(attn.dwc.conv.weight, official["block2.1.attn.dwc.weight"])
    assert torch.equal(model.stages[3].pos_embed, official["pos_embed4"])
    assert torch.equal(model.stages[2].proj.weight, official["patch_embed3.proj.weight"])
    with pytest.raises(ValueError, match="block9"):
        checkpoint_filter_fn({**official, "block9.0.attn.q.weight": torch.zeros(1)}, model)
