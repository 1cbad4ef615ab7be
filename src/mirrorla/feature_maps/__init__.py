"""Feature maps φ: ``forward(q, k, key_padding_mask=None) -> (φq, φk)`` on (B, H, N, D)."""

from mirrorla.feature_maps.base import ELUFeatureMap, FeatureMap, IdentityFeatureMap, ReLUFeatureMap
from mirrorla.feature_maps.mirror import MirrorFeatureMap

__all__ = ["FeatureMap", "IdentityFeatureMap", "ReLUFeatureMap", "ELUFeatureMap", "MirrorFeatureMap"]
from mirrorla.feature_maps.focused import FocusedFeatureMap  # noqa: E402
from mirrorla.feature_maps.norm_aware import NormAwareFeatureMap  # noqa: E402
from mirrorla.feature_maps.polarity import PolarityFeatureMap  # noqa: E402

__all__ += ["FocusedFeatureMap", "PolarityFeatureMap", "NormAwareFeatureMap"]
