"""The optimiser of a run: AdamW with weight decay on the weight matrices only.

Exempt from decay, as in timm's ``param_groups_weight_decay``: biases, every 1-D parameter (norms,
scales) and every name in :func:`mirrorla.models.no_weight_decay_names` — the model's own
``no_weight_decay()`` together with its layers' (MirrorLA's ``theta``/``alpha``/``u_c``, PolaFormer's
power, position tables). Every training path builds its optimiser here, so no path can lose them.
"""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from mirrorla.models._timm import no_weight_decay_names

__all__ = ["create_optimizer", "decay_groups"]


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """timm's two parameter groups (no decay first, then decay ``weight_decay``) with every exclusion."""
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay_names(model))


def create_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over :func:`decay_groups` of ``model``."""
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, weight_decay=weight_decay)
