"""``create_model``: the one way every entry point (train, compare, eval, bench, tasks) builds a model.

A model is a name plus, optionally, a registry attention for its attention layers:

- ``"vit"``: the project's configurable ViT (timm's ``VisionTransformer`` arguments: ``embed_dim``,
  ``depth``, ``img_size``, ...). With an attention it is :class:`LinearVisionTransformer`; without,
  timm's own ``VisionTransformer`` (softmax baseline with timm's attention).
- a mirrorla model name (``deit_tiny_mirror``, ``pvt_small_pola``, ``l2vit_tiny``; see
  :func:`mirrorla.models.list_models`): its attention is part of the name, so ``attention`` must be None.
- ``"sr_tiny"``, ``"sr_small"``, ``"sr_light"``: the super-resolution network
  (:class:`~mirrorla.models.sr.SuperResolutionNet`) of that size; needs ``attention`` (``scale=2|3|4``);
  ``sr_{size}_{attention}`` (``"sr_tiny_mirror"``) names both. Not a timm model (image to image), so
  not registered with timm.
- ``"seq_tiny"``, ``"seq_small"``, ``"seq_base"``: the sequence classifier of the long-range tasks
  (:class:`~mirrorla.models.sequence.SequenceClassifier`); needs ``attention`` and ``vocab_size``,
  ``num_classes``, ``max_len``. Not registered with timm either.
- any other timm model name: built by ``timm.create_model``; with an attention, its attention modules
  are replaced by :func:`mirrorla.convert` (timm ViT/DeiT family only; others raise a clear error).

Every model with registry attention layers therefore reports their exclusions through
``no_weight_decay()`` and gets the patch grid from its own forward, whichever path built it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mirrorla.models._timm import list_models
from mirrorla.models.convert import convert
from mirrorla.models.sequence import SEQ_SIZES, create_sequence_model
from mirrorla.models.sr import SR_SIZES, create_sr_model
from mirrorla.models.vit import LinearVisionTransformer
from mirrorla.registry import get_attention_entry

__all__ = ["create_model", "VIT"]

#: The name of the project's configurable ViT.
VIT = "vit"


def create_model(
    name: str, attention: str | None = None, attn_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> nn.Module:
    """Build model ``name`` (random weights) with registry ``attention`` in its attention layers.

    Args:
        name: ``"vit"``, a mirrorla model name or a timm model name.
        attention: a name in :func:`mirrorla.list_attentions`, or None for the model's own attention.
        attn_kwargs: options of that attention (e.g. ``dict(dwc_kernel=5)``); needs ``attention``.
        **kwargs: model arguments (``num_classes``, ``in_chans``, ``img_size``, ``drop_path_rate``, ...).
    """
    attn_kwargs = dict(attn_kwargs or {})
    if attention is None and attn_kwargs:
        raise ValueError(f"attention options {sorted(attn_kwargs)} need an attention; pass attention='<name>'")
    if attention is not None:
        get_attention_entry(attention)  # the one check of an attention name; lists the valid ones
    if name == VIT:
        if attention is None:
            from timm.models import VisionTransformer

            return VisionTransformer(**kwargs)
        return LinearVisionTransformer(attention=attention, attn_kwargs=attn_kwargs, **kwargs)

    if name.startswith("sr_") and name[3:] in SR_SIZES:
        if attention is None:
            raise ValueError(f"model {name!r} needs an attention: pass attention='<name>' (`mirrorla list`)")
        return create_sr_model(name[3:], attention, attn_kwargs, **kwargs)
    sr_name = _split_sr_name(name)
    if sr_name is not None:  # the full name (formerly a timm name), e.g. 'sr_tiny_mirror'
        if attention is not None:
            raise ValueError(f"model {name!r} already fixes its attention in its name; pass attention=None")
        return create_sr_model(*sr_name, attn_kwargs, **kwargs)

    if name.startswith("seq_") and name[4:] in SEQ_SIZES:
        if attention is None:
            raise ValueError(f"model {name!r} needs an attention: pass attention='<name>' (`mirrorla list`)")
        return create_sequence_model(name[4:], attention, attn_kwargs, **kwargs)

    import timm

    if attention is not None and name in list_models():
        raise ValueError(
            f"model {name!r} already fixes its attention in its name; pass attention=None, or pick the "
            f"name for the attention you want (`mirrorla models '*_{attention}'`)"
        )
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: use 'vit', a name from `mirrorla models`, or a timm model name")
    model = timm.create_model(name, pretrained=False, **kwargs)
    if attention is None:
        return model
    try:
        return convert(model, attention, **attn_kwargs)
    except TypeError as err:
        raise ValueError(f"cannot put attention {attention!r} into timm model {name!r}: {err}") from err


def _split_sr_name(name: str) -> tuple[str, str] | None:
    """``'sr_tiny_mirror'`` → ``('tiny', 'mirror')`` when both parts exist, else None."""
    from mirrorla.registry import list_attentions

    for size in SR_SIZES:
        prefix = f"sr_{size}_"
        if name.startswith(prefix) and name[len(prefix) :] in list_attentions():
            return size, name[len(prefix) :]
    return None
