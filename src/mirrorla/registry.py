"""One registry of attention layers: ``create_attention`` / ``list_attentions``.

An entry is a layer class plus the keyword defaults that make it a method or an ablation preset;
entries only set hyper-parameters. :func:`attention_layer` turns an entry into a class that timm's
``attn_layer=`` hook accepts (timm calls ``issubclass`` on it, so a ``functools.partial`` won't do).
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "attention_option_value",
    "with_build_grid",
    "register_attention",
    "create_attention",
    "list_attentions",
    "attention_layer",
    "get_attention_entry",
]


@dataclass(frozen=True)
class AttentionEntry:
    name: str
    cls: type[nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, AttentionEntry] = {}


def register_attention(name: str, cls: type[nn.Module], description: str = "", **defaults: Any) -> None:
    """Register ``cls`` with keyword ``defaults`` under ``name``; a duplicate name raises."""
    if name in _REGISTRY:
        raise ValueError(f"attention {name!r} is already registered (by {_REGISTRY[name].cls.__name__})")
    _REGISTRY[name] = AttentionEntry(name, cls, dict(defaults), description)


def get_attention_entry(name: str) -> AttentionEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_attentions(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``'mirror*'``)."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def create_attention(name: str, dim: int, num_heads: int = 8, **kwargs: Any) -> nn.Module:
    """Build the attention layer ``name`` for width ``dim``; ``kwargs`` override the entry's defaults."""
    entry = get_attention_entry(name)
    return entry.cls(dim, num_heads=num_heads, **{**entry.defaults, **kwargs})


def attention_layer(name: str, **kwargs: Any) -> type[nn.Module]:
    """A class for ``timm.create_model(..., attn_layer=attention_layer('mirror'))``.

    timm calls it as ``cls(dim, num_heads=..., qkv_bias=..., ...)``; ``kwargs`` fix further options
    (e.g. ``num_prefix_tokens=1`` for a cls token).
    """
    entry = get_attention_entry(name)
    preset = {**entry.defaults, **kwargs}
    base = entry.cls

    def __init__(self, dim, *args, **call_kwargs):
        base.__init__(self, dim, *args, **{**preset, **call_kwargs})

    return type(
        f"{base.__name__}_{name}",
        (base,),
        {"__init__": __init__, "registry_name": name, "__module__": base.__module__},
    )


def _ensure_loaded() -> None:
    # The layer modules register themselves on import; importing here keeps the registry complete
    # whichever entry point a user starts from.
    import mirrorla.layers  # noqa: F401


def with_build_grid(entry: AttentionEntry, grid: tuple[int, int], attn_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``attn_kwargs`` plus the layer's grid-sized table option (``build_grid_option``: FLatten's and
    PolaFormer's ``key_pos_grid``) set to ``grid``, when that table is on and the option is not given.

    [Code] the official FLatten / PolaFormer models build the table for the grid they run at; a layer
    built for another grid resizes its table on every call.
    """
    option = entry.cls.build_grid_option
    out = dict(attn_kwargs)
    if option is not None and attention_option_value(entry, option, out) is not None:
        out.setdefault(option, tuple(grid))
    return out


def attention_option_value(entry: AttentionEntry, name: str, attn_kwargs: dict[str, Any]) -> Any:
    """The value option ``name`` takes in a layer built from ``entry`` with ``attn_kwargs``: the given value, else
    the entry's default, else the class's (None if the class has no such option)."""
    if name in attn_kwargs:
        return attn_kwargs[name]
    if name in entry.defaults:
        return entry.defaults[name]
    param = inspect.signature(entry.cls.__init__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default
