"""Backbones registered with timm: ``timm.create_model('deit_tiny_mirror')`` after ``import mirrorla``.

Names follow ``{arch}_{size}_{attention}`` for every attention in :func:`mirrorla.list_attentions`:
``deit_{tiny,small,base}_*`` (timm ViT with the attention swapped in) and
``pvt_{tiny,small,medium,large}_*`` (4-stage pyramid, per-stage pattern ``attn_pattern='LLSS'``),
``vit_micro_*`` (the small ViT of ``mirrorla compare``: 28² grey, 10 classes),
and ``l2vit_{tiny,small,base}``, ``l2vit_base_384`` (its attentions are part of the architecture).
Attentions registered after import get their model names from :func:`register_attention_models`.
Every registered name honours timm's model contract (``tests/test_timm_contract.py``). The
super-resolution network (``sr_*``) and the sequence classifier (``seq_*``) are not timm models
(image-to-image, token sequences) and are not registered with timm: build them with
:func:`create_model` (``create_model('sr_tiny', attention='mirror')``).
Weights shipped with the package (:mod:`mirrorla.weights`) load with ``pretrained=True`` under their tag
(``timm.create_model("vit_micro_mirror.fmnist", pretrained=True)``; ``timm.list_pretrained("*")``).
Every entry point builds its models with :func:`create_model`.
"""

from timm.layers import register_notrace_module

from mirrorla.layers.spatial_reduction import SpatialReductionAttention
from mirrorla.models._timm import list_models, no_weight_decay_names
from mirrorla.models.factory import create_model
from mirrorla.models.l2vit import L2ViT
from mirrorla.models.pyramid import PyramidVisionTransformer, register_pvt_models
from mirrorla.models.sr import SuperResolutionNet
from mirrorla.models.vit import LinearVisionTransformer, register_deit_models
from mirrorla.models.vit_micro import register_micro_models
from mirrorla.registry import get_attention_entry, list_attentions

__all__ = [
    "L2ViT",
    "create_model",
    "LinearVisionTransformer",
    "PyramidVisionTransformer",
    "SpatialReductionAttention",
    "SuperResolutionNet",
    "list_models",
    "no_weight_decay_names",
    "register_attention_models",
]


def register_attention_models(attention: str) -> list[str]:
    """Register the DeiT, PVT and micro-ViT model names of ``attention`` with timm (once); returns them.

    The attention's layer class also joins timm's FX notrace modules (as :class:`AttentionBase` does
    for its subclasses), so a layer that is not one still traces as a single node.
    """
    if attention not in _DONE:
        register_notrace_module(get_attention_entry(attention).cls)
        _DONE[attention] = (
            register_deit_models(attention) + register_pvt_models(attention) + register_micro_models(attention)
        )
    return list(_DONE[attention])


_DONE: dict[str, list[str]] = {}
for _name in list_attentions():
    register_attention_models(_name)
