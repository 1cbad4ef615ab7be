"""Load a checkpoint's weights into the model its settings describe, or say in one line why they differ.

A lone ``.safetensors`` file is paired with the ``config.json`` of the run folder it sits in; a copied
or edited ``config.json`` (another scale, size, attention or sequence length) builds a model the
weights do not fit. ``load_state_dict`` reports that as a multi-line ``RuntimeError`` about tensor
names; :func:`load_checked_weights` compares names and shapes first and names the settings to check.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

__all__ = ["describe_settings", "load_checked_weights", "weights_mismatch"]


def _shape(t: Tensor) -> str:
    return "×".join(str(d) for d in t.shape) or "scalar"


def weights_mismatch(model: nn.Module, weights: dict[str, Tensor]) -> str | None:
    """What keeps ``weights`` from loading into ``model`` (missing, unexpected or differently shaped tensors),
    in a few words with examples, or None when they fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} tensor(s) differ in shape (e.g. {k}: {_shape(weights[k])} in the file, "
            f"{_shape(own[k])} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
    return "; ".join(parts)


def load_checked_weights(
    model: nn.Module, weights: dict[str, Tensor], path: str | os.PathLike, settings: str
) -> nn.Module:
    """``model.load_state_dict(weights)`` after checking that they fit; otherwise a one-line ``ValueError``
    naming ``path`` and ``settings`` (the settings that built the model, e.g. "scale 3, model sr_tiny, ...")."""
    problem = weights_mismatch(model, weights)
    if problem is not None:
        raise ValueError(
            f"the weights in {path} do not fit the model its run's settings describe ({settings}): {problem}; "
            "check that the run's config.json belongs to these weights (the settings of the run that wrote them)"
        )
    model.load_state_dict(weights)
    return model


def describe_settings(cfg) -> str:
    """The settings of a :class:`~mirrorla.engine.config.TrainConfig` that decide the model's tensors."""
    parts = [f"task {cfg.task}", f"model {cfg.model}", f"attention {cfg.attention}"]
    if cfg.task == "super_resolution":
        parts.append(f"scale {cfg.scale}")
    if cfg.task == "long_range":
        parts += [f"dataset {cfg.dataset}", f"max_len {cfg.max_len}"]
    if cfg.task == "classification":
        parts += [f"image_size {cfg.image_size}", f"dataset {cfg.dataset}"]
    if cfg.attention_kwargs:
        parts.append(f"attention options {dict(cfg.attention_kwargs)}")
    return ", ".join(parts)
