"""``create_model``: the one factory behind train, compare, eval and bench, and its weight-decay groups."""

from __future__ import annotations

import pytest
import timm
import torch

from mirrorla.engine import TrainConfig, create_classifier
from mirrorla.engine.optim import create_optimizer, decay_groups
from mirrorla.models import LinearVisionTransformer, create_model

TINY = dict(embed_dim=16, depth=1, num_heads=2, patch_size=7, epochs=1, batch_size=32, progress=False)
MIRROR_EXEMPT = ("feature_map.theta", "feature_map.alpha")


def _exempt_by_layers(model: torch.nn.Module) -> set[str]:
    """Parameter names the attention layers exclude, collected without the code under test."""
    out = set()
    for prefix, module in model.named_modules():
        if module is not model and hasattr(module, "no_weight_decay"):
            out |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
    return out


def _decayed(model: torch.nn.Module, groups) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}


def _assert_angles_not_decayed(model: torch.nn.Module, groups) -> None:
    exempt = _exempt_by_layers(model)
    assert any(n.endswith(MIRROR_EXEMPT[0]) for n in exempt), "the model has no MirrorLA angles to check"
    assert not _decayed(model, groups) & exempt
    assert any(n.endswith("qkv.weight") for n in _decayed(model, groups))  # weight matrices still decay


def test_timm_model_with_registry_attention_is_a_linear_vit():
    model = create_model("vit_tiny_patch16_224", attention="mirror", img_size=32, num_classes=10)
    assert isinstance(model, LinearVisionTransformer)
    # The model itself lists its layers' exclusions (no separate collection needed by a caller).
    assert {f"blocks.{i}.attn.feature_map.theta" for i in range(12)} <= set(model.no_weight_decay())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_softmax_through_the_factory_keeps_timms_function():
    """The factory carries timm's initialised weights into the registry layer: softmax gives the same outputs."""
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5).eval()
    torch.manual_seed(0)
    built = create_model("vit_tiny_patch16_224", attention="softmax", img_size=32, num_classes=5).eval()
    with torch.no_grad():
        torch.testing.assert_close(built(x), reference(x), rtol=1e-5, atol=1e-5)


def test_train_path_with_a_timm_model_honours_exclusions():
    # cfg.model is a timm name: what train() does (create_classifier, then create_optimizer).
    cfg = TrainConfig(model="vit_small_patch14_dinov2", attention="mirror", **TINY)
    model = create_classifier(cfg, 10, 1, 28)
    assert isinstance(model, LinearVisionTransformer)
    _assert_angles_not_decayed(model, create_optimizer(model, lr=1e-3, weight_decay=0.05).param_groups)


def test_compare_path_honours_exclusions(monkeypatch, tmp_path):
    from test_engine import tiny_data

    import mirrorla.engine.trainer as trainer_mod
    from mirrorla.engine.compare import BASE, CompareConfig, run_compare

    seen = []

    def recording(model, lr, weight_decay):
        opt = create_optimizer(model, lr, weight_decay)
        seen.append((model, opt.param_groups))
        return opt

    monkeypatch.setattr(trainer_mod, "create_optimizer", recording)
    cc = CompareConfig(
        attentions=("mirror",),
        seeds=(0,),
        base=BASE.replace(**{k: v for k, v in TINY.items() if k != "progress"}, train_subset=64, eval_subset=32),
        out_dir=str(tmp_path),
        throughput_batch=4,
        throughput_warmup=1,
        throughput_iters=1,
        throughput_rounds=1,
        jobs=1,
    )
    run_compare(cc, tiny_data(64, 32))
    assert len(seen) == 1
    _assert_angles_not_decayed(*seen[0])


def test_bench_models_path_builds_through_the_factory():
    from mirrorla.bench.models import _create

    model = _create("vit_tiny_patch16_224:mirror", 32)
    assert isinstance(model, LinearVisionTransformer)
    _assert_angles_not_decayed(model, decay_groups(model, 0.05))


def test_eval_path_builds_the_trained_class():
    # eval rebuilds the run's model with create_classifier (the eval command): the same class as training.
    model = create_classifier(TrainConfig(attention="mirror", **TINY), 10, 1, 28)
    assert isinstance(model, LinearVisionTransformer)
    _assert_angles_not_decayed(model, decay_groups(model, 0.05))


@pytest.mark.parametrize(
    "call, match",
    [
        (dict(name="vit", attention="no_such"), "unknown attention 'no_such'; valid names: .*mirror"),
        (dict(name="deit_tiny_mirror", attention="pola"), "already fixes its attention"),
        (dict(name="no_such_model"), "unknown model 'no_such_model'"),
        (dict(name="vit", attn_kwargs=dict(dwc_kernel=3)), "need an attention"),
        (dict(name="resnet18", attention="mirror"), "cannot put attention 'mirror' into timm model 'resnet18'"),
    ],
)
def test_create_model_errors(call, match):
    with pytest.raises(ValueError, match=match):
        create_model(**call)
