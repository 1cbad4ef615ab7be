"""Weight decay: every path that builds a model for training honours the layers' ``no_weight_decay()``."""

from __future__ import annotations

import pytest
import timm
import torch

import mirrorla
from mirrorla.engine import TrainConfig, create_classifier, train
from mirrorla.engine.optim import create_optimizer, decay_groups
from mirrorla.models import no_weight_decay_names

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=7, mlp_ratio=2.0, progress=False)


def _decayed_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}


def _layer_exclusions(model: torch.nn.Module) -> set[str]:
    """Names the attention layers themselves exclude, collected independently of the code under test."""
    out = set()
    for prefix, module in model.named_modules():
        if module is not model and hasattr(module, "no_weight_decay"):
            out |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
    return out


def test_train_does_not_decay_mirror_angles(tmp_path):
    from test_engine import tiny_data

    cfg = TrainConfig(attention="mirror", epochs=1, batch_size=64, save_checkpoints=False, **TINY)
    out = train(cfg, tiny_data(128, 64))
    decayed = _decayed_names(out["model"], out["optimizer"])
    exempt = _layer_exclusions(out["model"])
    assert any(n.endswith("feature_map.theta") for n in exempt) and any(n.endswith("feature_map.alpha") for n in exempt)
    assert not decayed & exempt, f"decayed although excluded: {sorted(decayed & exempt)}"
    assert any(n.endswith("qkv.weight") for n in decayed)  # the weight matrices are still decayed


@pytest.mark.parametrize("attention", [a for a in mirrorla.list_attentions() if a != "window_softmax"])
def test_classifier_optimizer_honours_every_exclusion(attention):
    model = create_classifier(TrainConfig(attention=attention, **TINY), 10, 1, 28)
    opt = create_optimizer(model, lr=1e-3, weight_decay=0.05)
    decayed = _decayed_names(model, opt)
    exempt = _layer_exclusions(model) | {"cls_token", "pos_embed"}
    assert not decayed & exempt
    assert all(p.ndim > 1 for n, p in model.named_parameters() if n in decayed)


@pytest.mark.parametrize("name", ["deit_tiny_mirror", "pvt_tiny_mirror", "pvt_tiny_pola", "l2vit_tiny"])
def test_registered_models_optimizer(name):
    model = timm.create_model(name, num_classes=10)
    groups = decay_groups(model, 0.05)
    decayed = {n for n, p in model.named_parameters() if any(p is q for q in groups[1]["params"])}
    assert groups[1]["weight_decay"] == 0.05 and groups[0]["weight_decay"] == 0.0
    assert not decayed & (_layer_exclusions(model) & {n for n, _ in model.named_parameters()})


def test_timm_model_with_registry_attention():
    """A plain timm ViT given a registry attention does not list the layer exclusions itself."""
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, attn_layer=mirrorla.attention_layer("mirror")
    )
    assert not any("theta" in n for n in model.no_weight_decay())  # timm's own list misses them
    names = no_weight_decay_names(model)
    assert {f"blocks.{i}.attn.feature_map.theta" for i in range(12)} <= names
    assert "dist_token" not in names  # timm lists it for every ViT; it is not a parameter here
