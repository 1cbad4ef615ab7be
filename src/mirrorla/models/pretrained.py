"""timm's side of the weights shipped in :mod:`mirrorla.weights`: tagged ``pretrained_cfg`` entries and loading.

A timm model name with shipped weights gets one tag per weights file (``vit_micro_mirror.fmnist``) whose ``pretrained_cfg`` points at the file (``file=``), so
``timm.create_model(name, pretrained=True)`` loads it offline through timm's own ``load_pretrained``
and ``timm.list_pretrained()`` lists it. The untagged name stays the untrained model's. The SR networks are
not timm models: their weights load through ``pretrained:<name>`` (:func:`mirrorla.engine.sr.load_trained_sr`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["with_shipped_tags", "create_pretrained"]


def with_shipped_tags(name: str, cfg: dict[str, Any]) -> Any:
    """``cfg`` as it is when no weights are shipped for ``name``; else timm's ``DefaultCfg`` of the untagged
    ``cfg`` plus one tagged cfg per shipped file (the first tagged one is the default for ``pretrained=True``)."""
    from mirrorla.weights import get_weights, list_weights

    names = list_weights(f"{name}.*")
    if not names:
        return cfg
    from timm.models import generate_default_cfgs

    cfgs = {name: cfg}
    for weights_name in names:
        weights = get_weights(weights_name)
        result = weights.meta["result"]
        note = f"trained by mirrorla: {weights.meta['command']} (commit {weights.meta['commit'][:7]}); " + (
            f"{result['metric']} {result['value']} on {result['data']}"
        )
        cfgs[weights_name] = {**cfg, "file": str(weights.file), "notes": (note,)}
    return generate_default_cfgs(cfgs)[name]


def create_pretrained(name: str, build: Any, kwargs: dict[str, Any]) -> Any:
    """``build(name, **kwargs)`` with the shipped weights of the requested tag loaded by timm's ``load_pretrained``.

    ``kwargs`` are what ``timm.create_model`` passes on: ``pretrained_cfg`` (the tag, or a cfg), the overlay
    and model arguments. A changed ``num_classes`` or ``in_chans`` is adapted as timm adapts its own weights;
    other changed shapes raise a ``ValueError`` naming the weights.
    """
    from timm.models import load_pretrained, resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(name, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None))
    kwargs.pop("cache_dir", None)
    if not cfg.has_weights:
        from mirrorla.weights import list_weights

        shipped = list_weights("*")
        raise ValueError(
            f"{name}: no pretrained weights exist for this model; pretrained=True raises. Shipped weights: "
            f"{', '.join(shipped) or 'none'}; or load your own with timm.create_model(name, checkpoint_path='...')"
        )
    model = build(name, **kwargs)
    num_classes = getattr(model, "num_classes", cfg.num_classes)
    in_chans = kwargs.get("in_chans", cfg.input_size[0] if cfg.input_size else 3)
    try:
        load_pretrained(model, pretrained_cfg=cfg.to_dict(), num_classes=num_classes, in_chans=in_chans)
    except RuntimeError as err:
        raise ValueError(
            f"the shipped weights {cfg.file} do not fit {name} built with {kwargs or 'its defaults'}: {err}"
        ) from err
    model.pretrained_cfg = cfg.to_dict()
    return model
