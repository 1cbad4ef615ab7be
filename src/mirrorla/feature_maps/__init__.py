"""Feature maps φ: ``forward(q, k, key_padding_mask=None) -> (φq, φk)`` on (B, H, N, D).

Each map is registered by name next to its class (:func:`create_feature_map`, :func:`list_feature_maps`).
"""

from mirrorla.feature_maps.base import ELUFeatureMap, FeatureMap, IdentityFeatureMap, ReLUFeatureMap
from mirrorla.feature_maps.focused import FocusedFeatureMap
from mirrorla.feature_maps.mirror import MirrorFeatureMap
from mirrorla.feature_maps.norm_aware import NormAwareFeatureMap
from mirrorla.feature_maps.polarity import PolarityFeatureMap
from mirrorla.feature_maps.rank_augmented import RankAugmentedFeatureMap
from mirrorla.feature_maps.registry import (
    create_feature_map,
    feature_map_options,
    list_feature_maps,
    register_feature_map,
)

__all__ = [
    "FeatureMap",
    "IdentityFeatureMap",
    "ReLUFeatureMap",
    "ELUFeatureMap",
    "MirrorFeatureMap",
    "FocusedFeatureMap",
    "PolarityFeatureMap",
    "NormAwareFeatureMap",
    "RankAugmentedFeatureMap",
    "create_feature_map",
    "feature_map_options",
    "list_feature_maps",
    "register_feature_map",
]
