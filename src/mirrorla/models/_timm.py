"""Registering mirrorla models with timm: one entry point per ``{arch}_{size}_{attention}`` name.

timm finds an entry point through ``register_model`` and its ``pretrained_cfg`` through the
module-level ``default_cfgs`` dict of the entry point's module, so each model module owns a
``default_cfgs`` dict and calls :func:`register` for each name it builds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module
from timm.models import register_model
from torch import nn

from mirrorla.layers.base import AttentionBase
from mirrorla.layers.l2vit import ConvPositionEncoding, LocalConcentrationModule

__all__ = [
    "register",
    "untrained_cfg",
    "list_models",
    "submodule_no_weight_decay",
    "init_outside_attention",
    "no_weight_decay_names",
    "MODEL_NAMES",
]

#: Every timm name registered by mirrorla, in registration order.
MODEL_NAMES: list[str] = []

_NO_WEIGHTS = (
    "no pretrained weights exist for this model; pretrained=True raises. Load your own weights with "
    "timm.create_model(name, checkpoint_path='...')"
)


# FX (``features_only=True, feature_cls='fx'``, torchvision's ``create_feature_extractor``): these
# modules check their input with Python control flow and work on the runtime token grid, so a
# symbolic trace keeps each call as one node instead of tracing into it. timm's tracer and
# torchvision's test leaves with isinstance, so AttentionBase covers every attention layer,
# including those registered later. Registered here, where timm is imported, not in the layers.
for _leaf in (AttentionBase, ConvPositionEncoding, LocalConcentrationModule):
    register_notrace_module(_leaf)


def untrained_cfg(
    input_size: tuple[int, int, int] = (3, 224, 224), feature_stride: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """The ``pretrained_cfg`` of a model name: input/normalisation facts of the model and no weight source.

    ``feature_stride``: the total stride of ``forward_features``'s spatial map; gives ``pool_size``
    (the map's grid at ``input_size``). None for token outputs (ViT), whose ``pool_size`` is None as in timm.
    The one place a name's cfg is made, so cfgs with weights can start from it.
    """
    pool_size = None if feature_stride is None else (input_size[1] // feature_stride, input_size[2] // feature_stride)
    cfg = dict(
        url="",
        hf_hub_id=None,
        num_classes=1000,
        input_size=tuple(input_size),
        pool_size=pool_size,
        crop_pct=0.9,
        interpolation="bicubic",
        fixed_input_size=False,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj",
        classifier="head",
        license="apache-2.0",
        notes=(_NO_WEIGHTS,),
    )
    cfg.update(overrides)
    return cfg


def register(
    name: str, module: str, build: Callable[..., Any], cfg: dict[str, Any], doc: str = ""
) -> Callable[..., Any]:
    """Register ``name`` with timm; ``build(name, **kwargs)`` makes the model.

    The entry point is a real function named ``name`` in ``module`` (timm keys its registry on
    ``__name__`` and ``__module__``); re-registering a name raises instead of timm's overwrite warning.
    """
    if name in MODEL_NAMES:
        raise ValueError(f"model {name!r} is already registered by mirrorla")
    from mirrorla.models.pretrained import create_pretrained, with_shipped_tags

    mod = sys.modules[module]
    mod.default_cfgs[name] = with_shipped_tags(name, cfg)

    def entry(pretrained: bool = False, **kwargs: Any):
        if pretrained:  # the weights shipped with mirrorla (mirrorla.weights), or a ValueError
            return create_pretrained(name, build, kwargs)
        return build(name, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = module
    entry.__doc__ = doc or f"mirrorla model {name} (untrained)."
    register_model(entry)
    MODEL_NAMES.append(name)
    return entry


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted mirrorla model names registered with timm, optionally filtered by a shell pattern."""
    import fnmatch

    names = sorted(MODEL_NAMES)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def submodule_no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters that submodules (e.g. MirrorLA's angles) exclude from weight decay."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if module is not model and callable(fn):
            out |= {f"{prefix}.{n}" for n in fn()}
    return out


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Every parameter name of ``model`` that must not be weight-decayed.

    The union of the model's own ``no_weight_decay()`` (timm's position table and cls token, if it has
    one) and every submodule's (e.g. MirrorLA's angles, PolaFormer's power), so a model that does not
    collect its layers' exclusions itself — any timm model given a registry attention through
    ``attn_layer=`` — still has them honoured. Names that are not parameters (timm lists
    ``dist_token`` for every ViT) are dropped.
    """
    own = getattr(model, "no_weight_decay", None)
    names = set(own()) if callable(own) else set()
    names |= submodule_no_weight_decay(model)
    params = {n for n, _ in model.named_parameters()}
    return names & params


def init_outside_attention(model: nn.Module, attention_layers: list[nn.Module]) -> None:
    """timm's/SwinIR's init for every part of ``model`` outside ``attention_layers``: Linear trunc_normal(0.02)
    with bias 0, LayerNorm weight 1 and bias 0. The attention layers initialise themselves (docs/methods.md
    §0.3) and are left as they are."""
    inside = {id(m) for layer in attention_layers for m in layer.modules()}
    for m in model.modules():
        if id(m) in inside:
            continue
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
