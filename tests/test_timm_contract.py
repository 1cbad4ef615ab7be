"""timm's model contract, checked over every name mirrorla registers with timm (issue 34).

Written from timm's documented behaviour (timm/models/_builder.py, _features.py, _features_fx.py and
its tests/test_models.py): a registered name has a complete ``pretrained_cfg``; the model has
``num_classes``, ``num_features``, ``head_hidden_size``, ``reset_classifier``, ``forward_features`` /
``forward_head(pre_logits=True)``, ``forward_intermediates``, ``features_only`` whose outputs match
``feature_info``, ``set_grad_checkpointing``; it traces with FX (timm's notrace lists) and exports with
``torch.export`` (dynamic batch), both equal to eager.

The names come from the registry, so a new attention is tested the moment it registers. Tiny widths
and 32-96 px inputs keep it fast; the default suite checks the cfg of every name and runs the model
checks on one small set per family (``REPRESENTATIVE``); ``-m slow`` runs them on every name and
adds full-size checks.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules, get_pretrained_cfg
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import mirrorla  # noqa: F401  (registers the models)
from mirrorla.models import list_models
from mirrorla.registry import get_attention_entry
from mirrorla.weights import list_weights

#: Per family: tiny constructor options and a small non-square input (H, W) (a swapped H and W shows).
TINY: dict[str, tuple[dict, tuple[int, int]]] = {
    "deit": (dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2), (32, 48)),  # 3 blocks: 3 features
    "pvt": (
        dict(img_size=64, embed_dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2), mlp_ratios=(2,) * 4, depths=(1,) * 4),
        (64, 96),
    ),
    # Two blocks in the first stage so that LWA and LGA+LCM both run; 64x96 pads LWA's 7x7 windows.
    "l2vit": (dict(depths=(2, 1, 1, 1), dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2)), (64, 96)),
    # vit_micro_*: the ViT of `mirrorla compare` (fixed 28x28 grey grid, 10 classes); three blocks for 3 features.
    "vit": (dict(depth=3), (28, 28)),
}
#: Input channels, classes and cfg input size of the families that are not ImageNet-shaped.
NOT_IMAGENET = {"vit": dict(in_chans=1, num_classes=10, input_size=(1, 28, 28))}
#: Families whose ``forward_features`` is a spatial map (B, C, h, w); DeiT's is tokens (B, P + N, C).
SPATIAL = {"pvt", "l2vit"}
#: Feature maps' last stride of the spatial families (``pool_size`` = input / this).
LAST_STRIDE = 32

NAMES = list_models()


def family(name: str) -> str:
    return name.split("_")[0]


def _representative() -> list[str]:
    # One small set per family: the project's method, softmax (PVT: spatial-reduction softmax), and one
    # attention that works on the token grid (depthwise conv on V). Names not registered are skipped.
    wanted = [f"{arch}_tiny_{attn}" for arch in ("deit", "pvt") for attn in ("mirror", "mirror_dwc", "softmax")]
    return [n for n in wanted + ["l2vit_tiny", "vit_micro_mirror"] if n in NAMES]


REPRESENTATIVE = _representative()


def all_names_slow_except_representative() -> list:
    return [pytest.param(n, marks=() if n in REPRESENTATIVE else pytest.mark.slow) for n in NAMES]


def tiny(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**TINY[family(name)][0], **kwargs}).eval()


def tiny_input(name: str, batch: int = 2) -> torch.Tensor:
    h, w = TINY[family(name)][1]
    chans = NOT_IMAGENET.get(family(name), {}).get("in_chans", 3)
    return torch.randn(batch, chans, h, w, generator=torch.Generator().manual_seed(1))


def test_registry_is_not_empty_and_every_family_is_covered():
    assert NAMES and {family(n) for n in NAMES} == set(TINY)
    assert {family(n) for n in REPRESENTATIVE} == set(TINY)
    assert set(NAMES) <= set(timm.list_models())
    # Image-to-image and sequence models are not timm models (docs/models.md).
    assert not [n for n in timm.list_models() if n.startswith(("sr_", "seq_"))]


# -- pretrained_cfg: every name, no model built --------------------------------------------------

CFG_FIELDS = (
    "input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier", "num_classes",
)  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_is_complete(name):
    cfg = get_pretrained_cfg(name)
    assert cfg is not None and cfg.architecture == name
    d = cfg.to_dict()
    missing = [f for f in CFG_FIELDS if f not in d]
    assert not missing, missing
    c, h, w = cfg.input_size
    own = NOT_IMAGENET.get(family(name))
    if own is None:
        assert c == 3 and h >= 32 and w >= 32 and cfg.num_classes == 1000
    else:
        assert cfg.input_size == own["input_size"] and cfg.num_classes == own["num_classes"]
    assert 0 < cfg.crop_pct <= 1 and cfg.interpolation in ("bicubic", "bilinear")
    assert len(cfg.mean) == len(cfg.std) == c and all(s > 0 for s in cfg.std)
    assert isinstance(cfg.first_conv, str) and cfg.classifier == "head"
    # Weights only where the package ships them (mirrorla.weights); otherwise pretrained=True raises instead of
    # falling back to random weights.
    assert bool(cfg.has_weights) == any(w.split(".")[0] == name for w in list_weights())
    if family(name) in SPATIAL:
        assert cfg.pool_size == (h // LAST_STRIDE, w // LAST_STRIDE)
        assert cfg.min_input_size is not None and cfg.min_input_size[1] % LAST_STRIDE == 0
    else:
        assert cfg.pool_size is None  # token output, as timm's own ViTs


@pytest.mark.parametrize("name", all_names_slow_except_representative())
def test_cfg_names_real_parameters_at_full_size(name):
    # Full size on the meta device: shapes only, no memory, no init.
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and model.default_cfg == cfg
    params = dict(model.named_parameters())
    chans = NOT_IMAGENET.get(family(name), {}).get("in_chans", 3)
    assert f"{cfg['first_conv']}.weight" in params and params[f"{cfg['first_conv']}.weight"].shape[1] == chans
    assert params[f"{cfg['classifier']}.weight"].shape == (cfg["num_classes"], model.num_features)
    assert model.num_classes == cfg["num_classes"] and model.num_features > 0 and model.head_hidden_size > 0
    assert model.feature_info[-1]["num_chs"] == model.num_features
    if family(name) in SPATIAL:
        assert model.feature_info[-1]["reduction"] == LAST_STRIDE


# -- the model API on tiny models ------------------------------------------------------------------


@pytest.mark.parametrize("name", all_names_slow_except_representative())
def test_forward_features_head_and_reset_classifier(name):
    model = tiny(name, num_classes=7)
    x = tiny_input(name)
    B, (H, W) = x.shape[0], x.shape[2:]
    with torch.no_grad():
        feats = model.forward_features(x)
        if family(name) in SPATIAL:
            assert feats.shape == (B, model.num_features, math.ceil(H / LAST_STRIDE), math.ceil(W / LAST_STRIDE))
        else:
            p = model.patch_embed.patch_size[0]
            assert feats.shape == (B, model.num_prefix_tokens + (H // p) * (W // p), model.num_features)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        assert pre.shape == (B, model.head_hidden_size) and logits.shape == (B, 7)
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)

        model.reset_classifier(0)
        assert model.num_classes == 0 and model.get_classifier() is not None
        torch.testing.assert_close(model(x), pre, rtol=0, atol=0)  # forward = pooled, pre-logits features

        model.reset_classifier(0, "")  # no pooling either: forward = forward_features
        torch.testing.assert_close(model(x), feats, rtol=0, atol=0)

        model.reset_classifier(3, "avg" if family(name) in SPATIAL else "token")
        assert model.num_classes == 3 and model(x).shape == (B, 3)

    headless = tiny(name, num_classes=0, global_pool="")
    with torch.no_grad():
        assert headless(x).shape == feats.shape


@pytest.mark.parametrize("name", all_names_slow_except_representative())
def test_backward_reaches_every_parameter_and_grad_checkpointing_keeps_outputs(name):
    model = tiny(name, num_classes=5).train()
    x = tiny_input(name)
    torch.manual_seed(2)
    out = model(x)
    out.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(2)
    again = model(x)
    again.square().mean().backward()
    torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", all_names_slow_except_representative())
def test_forward_intermediates_and_features_only_match_feature_info(name):
    model = tiny(name, num_classes=0)
    x = tiny_input(name)
    H, W = x.shape[2:]
    info = timm.models.FeatureInfo(model.feature_info, range(len(model.feature_info)))
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        n = len(info.channels())
        assert len(inter) == (n if family(name) in SPATIAL else len(model.blocks))
        for (c, r), f in zip(zip(info.channels(), info.reduction(), strict=True), inter, strict=False):
            assert f.shape == (2, c, math.ceil(H / r), math.ceil(W / r)), (f.shape, c, r)
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], inter[-1])

    feat_model = tiny(name, num_classes=0, features_only=True).eval()
    channels, reductions = feat_model.feature_info.channels(), feat_model.feature_info.reduction()
    assert len(channels) >= 3  # timm's rule: at least three default feature levels
    with torch.no_grad():
        feats = feat_model(x)
    assert len(feats) == len(channels)
    for c, r, f in zip(channels, reductions, feats, strict=True):
        assert f.shape == (2, c, math.ceil(H / r), math.ceil(W / r)) and torch.isfinite(f).all()


# -- FX and torch.export -------------------------------------------------------------------------

TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def test_every_attention_layer_is_an_fx_leaf():
    # Attention layers check inputs and use the runtime grid in Python: FX keeps each call one node.
    leaves = tuple(get_notrace_modules())
    for attention in mirrorla.list_attentions():
        assert issubclass(get_attention_entry(attention).cls, leaves), attention


@pytest.mark.parametrize("name", all_names_slow_except_representative())
def test_fx_trace_equals_eager(name):
    # timm's _create_fx_model: torchvision's extractor with timm's notrace lists, the output node.
    model = tiny(name, num_classes=5)
    x = tiny_input(name)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=TRACER)
    with torch.no_grad():
        assert torch.equal(next(iter(traced(x).values())), model(x))
    # Traced in train mode, gradients reach every parameter.
    model.train()
    traced = create_feature_extractor(model, return_nodes=[train_nodes[-1]], tracer_kwargs=TRACER)
    next(iter(traced(x).values())).mean().backward()
    assert [n for n, p in traced.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", all_names_slow_except_representative())
def test_fx_features_only(name):
    model = tiny(name, num_classes=0, features_only=True, feature_cls="fx")
    x = tiny_input(name)
    assert type(model).__name__ == "FeatureGraphNet"
    full = tiny(name, num_classes=0)  # the same seed: the same weights
    idx = list(model.feature_info.out_indices)
    with torch.no_grad():
        feats = model(x)
        if family(name) in SPATIAL:  # the same maps as forward_intermediates' (the getter's)
            expected = full.forward_intermediates(x, indices=idx, intermediates_only=True)
        else:  # ViT: the blocks' token outputs, prefix tokens included (as for timm's own ViTs)
            inter = full.forward_intermediates(
                x, indices=idx, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True
            )
            expected = [torch.cat([prefix, tokens], 1) for tokens, prefix in inter]
    assert len(feats) == len(expected)
    for f, e in zip(feats, expected, strict=True):
        torch.testing.assert_close(f, e, rtol=0, atol=0)


#: Exporting costs ~5-15 s per model on 2 shared cores: by default one name, the rest with ``-m slow``.
EXPORT_DEFAULT = ["deit_tiny_mirror"]
EXPORT_NAMES = [pytest.param(n, marks=() if n in EXPORT_DEFAULT else pytest.mark.slow) for n in NAMES]


@pytest.mark.parametrize("name", EXPORT_NAMES)
def test_torch_export_with_dynamic_batch_matches_eager(name):
    model = tiny(name, num_classes=5, **({"depth": 1} if family(name) == "deit" else {}))
    x = tiny_input(name, batch=2)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    exported = program.module()
    with torch.no_grad():
        for b in (1, 3):  # other batch sizes than the traced one
            y = tiny_input(name, batch=b)
            # Decompositions may reorder float sums: agreement to float32 rounding, not bit for bit.
            torch.testing.assert_close(exported(y), model(y), rtol=1e-5, atol=1e-5)


# -- full size (slow) ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_size_forward_features_match_pool_size(name):
    # timm's test_model_default_cfgs at the cfg's input size (≤ 448): pool_size, num_features, head_hidden_size.
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    if family(name) in SPATIAL:
        assert feats.shape == (1, model.num_features, *cfg["pool_size"])
    else:
        assert feats.shape[-1] == model.num_features
