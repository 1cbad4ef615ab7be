"""One registry of feature maps: ``register_feature_map`` / ``create_feature_map`` / ``list_feature_maps``.

An entry is a class (or a factory) called as ``cls(num_heads, head_dim, **options)`` plus the keyword
defaults that make it a named configuration. Each feature-map module registers its classes right
below them; ``mirrorla.feature_maps`` imports every module, so the registry is complete once the
package is imported. A duplicate or unknown name raises and lists the valid names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirrorla.feature_maps.base import FeatureMap

__all__ = [
    "register_feature_map",
    "create_feature_map",
    "list_feature_maps",
    "feature_map_options",
    "FeatureMapEntry",
]


@dataclass(frozen=True)
class FeatureMapEntry:
    name: str
    factory: Callable[..., FeatureMap]
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, FeatureMapEntry] = {}


def register_feature_map(name: str, cls_or_factory: Callable[..., FeatureMap], **defaults: Any) -> None:
    """Register ``cls_or_factory(num_heads, head_dim, **options)`` under ``name``; a duplicate raises."""
    if name in _REGISTRY:
        raise ValueError(f"feature map {name!r} is already registered; registered: {', '.join(sorted(_REGISTRY))}")
    entry = FeatureMapEntry(name, cls_or_factory, dict(defaults))
    unknown = set(defaults) - feature_map_options(entry)
    if unknown:
        raise TypeError(f"feature map {name!r}: defaults {sorted(unknown)} are not options of {cls_or_factory}")
    _REGISTRY[name] = entry


def _entry(name: str) -> FeatureMapEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown feature map {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def feature_map_options(name_or_entry: str | FeatureMapEntry) -> set[str]:
    """The keyword options of a registered feature map (beyond ``num_heads`` and ``head_dim``)."""
    entry = _entry(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    params = inspect.signature(entry.factory).parameters.values()
    return {
        p.name
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "num_heads", "head_dim")
    }


def create_feature_map(name: str, num_heads: int, head_dim: int, **kwargs: Any) -> FeatureMap:
    """Build the feature map ``name`` for H = ``num_heads``, D = ``head_dim``; ``kwargs`` override defaults."""
    entry = _entry(name)
    unknown = set(kwargs) - feature_map_options(entry)
    if unknown:
        raise TypeError(
            f"feature map {name!r} has no option(s) {sorted(unknown)}; its options: "
            f"{', '.join(sorted(feature_map_options(entry))) or 'none'}"
        )
    from mirrorla.feature_maps.base import FeatureMap  # base registers its maps here: import it late

    fm = entry.factory(num_heads, head_dim, **{**entry.defaults, **kwargs})
    if not isinstance(fm, FeatureMap):
        raise TypeError(f"feature map {name!r} built a {type(fm).__name__}, not a FeatureMap")
    return fm


def list_feature_maps() -> list[str]:
    """Sorted registered feature-map names."""
    return sorted(_REGISTRY)
