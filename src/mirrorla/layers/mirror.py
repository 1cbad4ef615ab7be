"""MirrorLA (docs/methods.md §2): :class:`LinearAttention` with the ``mirror`` feature map, and its registry entries.

Dimension letters: B batch, N tokens, C channels, H heads, D head dim.

    φ(x) = ReLU(H_blk(Θ)·H_c·x)        (:class:`mirrorla.feature_maps.MirrorFeatureMap`)

The method is a configuration: the ``mirror`` feature map × the plain value path × (``mirror_dwc``)
the shared DWC branch. Its switches (``block_reflection``, ``variance_modulation``, ``cross_head``,
``theta_init``, ``alpha_init``, ``variance_eps``, ``detach_variance``) are options of the feature map
that :class:`LinearAttention` accepts as keywords. ``fold_reflections()`` (inference) is a method of
:class:`LinearAttention`.
"""

from __future__ import annotations

from typing import Any

from mirrorla.layers.linear import LinearAttention
from mirrorla.registry import register_attention

__all__ = ["MirrorLinearAttention"]


class MirrorLinearAttention(LinearAttention):
    """Import alias: ``LinearAttention(feature_map="mirror", ...)`` (the registry entry ``mirror``)."""

    def __init__(self, dim: int, num_heads: int = 8, *args: Any, **kwargs: Any) -> None:
        if "feature_map" in kwargs:
            raise TypeError("MirrorLinearAttention is LinearAttention(feature_map='mirror'); use LinearAttention")
        super().__init__(dim, num_heads, *args, feature_map="mirror", **kwargs)


register_attention(
    "mirror", LinearAttention, "MirrorLA (R3): block + variance + cross-head reflections", feature_map="mirror"
)
# Ablation rows (docs/methods.md §2.8).
register_attention(
    "mirror_block",
    LinearAttention,
    "MirrorLA ablation R1: block reflection only",
    feature_map="mirror",
    variance_modulation=False,
    cross_head=False,
)
register_attention(
    "mirror_block_var",
    LinearAttention,
    "MirrorLA ablation R2: block reflection + variance modulation",
    feature_map="mirror",
    cross_head=False,
)
register_attention(
    "mirror_cross",
    LinearAttention,
    "MirrorLA ablation R1c: cross-head reflection only",
    feature_map="mirror",
    block_reflection=False,
    variance_modulation=False,
)
register_attention(
    "mirror_dwc",
    LinearAttention,
    "MirrorLA (R3) + shared 5x5 DWC on V (ImageNet preset, §2.6)",
    feature_map="mirror",
    dwc_kernel=5,
    dwc_shared=True,
)
