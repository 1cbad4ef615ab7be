"""Feature maps φ: ``forward(q, k, key_padding_mask=None) -> (φq, φk)`` on (B, H, N, D)."""

from mirrorla.feature_maps.base import ELUFeatureMap, FeatureMap, IdentityFeatureMap, ReLUFeatureMap
from mirrorla.feature_maps.mirror import MirrorFeatureMap

__all__ = ["FeatureMap", "IdentityFeatureMap", "ReLUFeatureMap", "ELUFeatureMap", "MirrorFeatureMap"]
