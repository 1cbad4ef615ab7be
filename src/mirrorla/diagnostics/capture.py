"""What each attention layer of a model sees: q, k and its feature map's output, captured by hooks.

Dimension letters: B batch, H heads, N tokens (P prefix + Hg·Wg grid), D head dim, F feature dim.

:func:`capture_attention` installs a forward pre-hook on every attention layer it knows (the
library's linear and softmax layers, and timm's own ``Attention``); on each call the hook recomputes
the layer's q and k from its input with the layer's own parts (``project`` and ``feature_map`` of
:class:`~mirrorla.layers.LinearAttention`, the ``qkv`` projection of softmax layers) and hands an
:class:`AttentionCapture` to a consumer right away, so large inputs are measured layer by layer and
nothing accumulates. The model's own forward is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mirrorla.layers.base import AttentionBase
from mirrorla.layers.linear import LinearAttention
from mirrorla.layers.parts import resolve_grid
from mirrorla.layers.softmax import SoftmaxAttention

__all__ = ["AttentionCapture", "capture_attention", "attention_layers", "skipped_layers"]


@dataclass
class AttentionCapture:
    """One call of one attention layer.

    ``q``, ``k`` (B, H, N, D): the tensors entering the feature map (softmax: entering the scores).
    ``phi_q``, ``phi_k`` (B, H, N, F): the features (None for softmax). ``pre_q``, ``pre_k``: the
    tensors whose negative entries the map zeroes (None when it keeps both signs or for softmax);
    ``truncation``: "negative half", "none" (keeps both signs), "unknown" (a map that does not say)
    or None (softmax). ``scale``: the softmax score scale. ``valid`` (B, N) bool or None (all).
    ``grid``: (Hg, Wg) of the N − P spatial tokens, or None when it cannot be known.
    """

    layer: str
    method: str
    kind: str
    q: Tensor
    k: Tensor
    phi_q: Tensor | None
    phi_k: Tensor | None
    pre_q: Tensor | None
    pre_k: Tensor | None
    truncation: str | None
    scale: float | None
    valid: Tensor | None
    grid: tuple[int, int] | None
    num_prefix_tokens: int
    feature_map: nn.Module | None


def _timm_attention_class() -> type | None:
    try:
        from timm.layers import Attention
    except ImportError:  # older timm: the class lives in the model file
        try:
            from timm.models.vision_transformer import Attention
        except ImportError:
            return None
    return Attention


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs that :func:`capture_attention` measures, in forward order."""
    timm_attention = _timm_attention_class()
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (LinearAttention, SoftmaxAttention)):
            found.append((name, module))
        elif timm_attention is not None and isinstance(module, timm_attention):
            found.append((name, module))
    return found


#: Why a layer of the library is not measured, by class name.
_NOT_MEASURED = {
    "LocalWindowAttention": "attention within local windows has no global map to measure",
    "SpatialReductionAttention": "its keys are pooled tokens (spatial reduction), not the query grid; not measured yet",
    "AgentAttention": "it attends through pooled agent tokens (two N×n softmaxes), not a token-to-token map; "
    "not measured yet",
}


def skipped_layers(model: nn.Module) -> list[tuple[str, str]]:
    """Attention layers of the library that are not measured, with the reason."""
    measured = {id(m) for _, m in attention_layers(model)}
    return [
        (name, f"{type(m).__name__}: {_not_measured_reason(type(m))}")
        for name, m in model.named_modules()
        if isinstance(m, AttentionBase) and id(m) not in measured
    ]


def _not_measured_reason(cls: type) -> str:
    # By the class or a base: models build registry entries as subclasses (``AgentAttention_agent``).
    return next(
        (_NOT_MEASURED[c.__name__] for c in cls.__mro__ if c.__name__ in _NOT_MEASURED),
        "no capture for this layer type",
    )


def _call_arguments(
    module: nn.Module, args: tuple, kwargs: dict
) -> tuple[Tensor, tuple[int, int] | None, Tensor | None]:
    x = args[0] if args else kwargs["x"]
    if not isinstance(module, AttentionBase):  # timm: forward(x, attn_mask=None, is_causal=False)
        if kwargs.get("attn_mask") is not None or (len(args) > 1 and args[1] is not None):
            raise ValueError(
                f"{type(module).__name__} was called with an attn_mask; analyze measures unmasked attention only"
            )
        return x, None, None
    # the library's layers: forward(x, hw=None, key_padding_mask=None, attn_mask=None, is_causal=False)
    hw = kwargs.get("hw", args[1] if len(args) > 1 else None)
    mask = kwargs.get("key_padding_mask", args[2] if len(args) > 2 else None)
    return x, (tuple(hw) if hw is not None else None), mask


def _grid(num_tokens: int, prefix: int, hw: tuple[int, int] | None) -> tuple[int, int] | None:
    try:
        return resolve_grid(num_tokens, prefix, hw)
    except ValueError:  # no hw and not a square: positions unknown, distance and maps are skipped
        return None


def _truncation(feature_map: nn.Module, q: Tensor, k: Tensor, mask: Tensor | None):
    hook = getattr(feature_map, "truncated_input", None)
    pre = hook(q, k, mask) if hook is not None else None
    if pre is None:
        return None, None, "unknown"
    if len(pre) == 0:
        return None, None, "none"
    return pre[0], pre[1], "negative half"


@torch.no_grad()
def _capture(name: str, module: nn.Module, args: tuple, kwargs: dict, model_prefix: int) -> AttentionCapture:
    x, hw, mask = _call_arguments(module, args, kwargs)
    B, N, _ = x.shape
    prefix = module.num_prefix_tokens if isinstance(module, AttentionBase) else model_prefix
    if isinstance(module, LinearAttention):
        grid = _grid(N, prefix, hw)
        q, k, _, _ = module.project(x, module.grid(N, hw) if module.needs_grid else grid)
        phi_q, phi_k = module.feature_map(q, k, mask)
        pre_q, pre_k, truncation = _truncation(module.feature_map, q, k, mask)
        method = f"{type(module).__name__}({type(module.feature_map).__name__})"
        return AttentionCapture(
            name, method, "linear", q, k, phi_q, phi_k, pre_q, pre_k, truncation, None, mask, grid, prefix,
            module.feature_map,
        )  # fmt: skip
    H = module.num_heads
    D = module.head_dim
    q, k, _ = module.qkv(x).view(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    for norm_name, t in (("q_norm", "q"), ("k_norm", "k")):  # timm's optional qk-norm
        norm = getattr(module, norm_name, None)
        if norm is not None:
            if t == "q":
                q = norm(q)
            else:
                k = norm(k)
    scale = float(getattr(module, "scale", D**-0.5))
    grid = _grid(N, prefix, hw)
    return AttentionCapture(
        name, type(module).__name__, "softmax", q, k, None, None, None, None, None, scale, mask, grid, prefix, None
    )


@contextlib.contextmanager
def capture_attention(model: nn.Module, consumer: Callable[[AttentionCapture], None]) -> Iterator[list[str]]:
    """Within the block, every forward call of a measured layer passes an :class:`AttentionCapture`
    to ``consumer`` before the layer runs. Yields the measured layers' names; hooks are removed on exit.

    timm's ``Attention`` does not know the prefix tokens; the model's ``num_prefix_tokens`` is used.
    """
    model_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    handles = []
    names = []
    for name, module in attention_layers(model):

        def hook(mod, args, kwargs, _name=name):
            consumer(_capture(_name, mod, args, kwargs, model_prefix))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        names.append(name)
    try:
        yield names
    finally:
        for h in handles:
            h.remove()
