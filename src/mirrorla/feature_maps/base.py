"""Feature maps φ for linear attention: the common interface and the simple maps.

Dimension letters: B batch, H heads, N query tokens, M key tokens, D head dim, F feature dim.

Interface: ``forward(q, k, key_padding_mask=None) -> (φq, φk)`` on head-split tensors
q (B, H, N, D) and k (B, H, M, D); φq (B, H, N, F), φk (B, H, M, F) with φq·φk ≥ 0 for every pair.
Maps that mix heads (MirrorLA's cross-head reflection) treat (H, D) as the full width C = H·D, which
is exactly the head-major channel order of (B, N, C).view(B, N, H, D), so one layout serves all.

``token_local`` says whether φ of a token depends on that token alone; only token-local maps may
be used causally (a map with a sequence statistic would leak future tokens).
"""

from __future__ import annotations

import os

import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.feature_maps.registry import register_feature_map

__all__ = ["FeatureMap", "IdentityFeatureMap", "ReLUFeatureMap", "ELUFeatureMap", "set_fast_path", "fast_path_default"]

# Backend switch with a global default (STYLE.md, like timm's fused_attn): a map with a fast path
# (MirrorLA's fused reflections and fold, FLatten's focusing op) copies it into its ``fast_path``
# attribute when it is built. On by default; MIRRORLA_FAST_PATH=0 turns it off, selecting each map's
# reference composition (one autograd op per formula).
_FAST_PATH_DEFAULT = os.environ.get("MIRRORLA_FAST_PATH", "1") != "0"


def set_fast_path(enable: bool) -> None:
    """Default of ``fast_path`` for feature maps built from now on (existing ones: set the attribute)."""
    global _FAST_PATH_DEFAULT
    _FAST_PATH_DEFAULT = bool(enable)


def fast_path_default() -> bool:
    """The current default of ``fast_path`` (see :func:`set_fast_path`)."""
    return _FAST_PATH_DEFAULT


class FeatureMap(nn.Module):
    """Base class of all feature maps; subclasses implement :meth:`forward`.

    Every map is built as ``cls(num_heads, head_dim, **options)`` (the registry's calling
    convention); maps without per-head parameters ignore the two sizes.
    """

    #: φ of a token depends on that token alone (only such maps may be used causally).
    token_local: bool = True
    #: φq·φk ≥ 0 is guaranteed because both features are ≥ 0 (tests check it for maps that claim it).
    non_negative: bool = True

    def __init__(self, num_heads: int | None = None, head_dim: int | None = None) -> None:
        super().__init__()

    def feature_dim(self, head_dim: int) -> int:
        """F, the output feature dimension for a head dimension D."""
        return head_dim

    def forward(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def truncated_input(
        self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | tuple[()] | None:
        """For diagnostics (``mirrorla analyze``): the tensors whose negative entries this map sets to
        zero (the argument of its ReLU, same shape as q and k); ``()`` for a map that keeps both signs;
        None (the default) when the map does not say, which analyze reports as unknown."""
        return None

    def fold_projection(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None] | None:
        """The fused qkv(g) projection with the map's constant linear part folded into its q and k rows,
        or None (the default: nothing to fold). A map that returns weights also implements
        :meth:`prefolded_features`, which finishes φ from the folded q and k."""
        return None

    def prefolded_features(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} folds nothing into the projection")


class IdentityFeatureMap(FeatureMap):
    """φ(x) = x. Not non-negative: only for softmax attention, which exponentiates the scores."""

    non_negative = False

    def forward(self, q, k, key_padding_mask=None):
        return q, k

    def truncated_input(self, q, k, key_padding_mask=None):
        return ()


class ReLUFeatureMap(FeatureMap):
    """φ(x) = ReLU(x) (the baseline row R0 of the MirrorLA ablation)."""

    def forward(self, q, k, key_padding_mask=None):
        return F.relu(q), F.relu(k)

    def truncated_input(self, q, k, key_padding_mask=None):
        return q, k


class ELUFeatureMap(FeatureMap):
    """φ(x) = ELU(x) + 1 (Katharopoulos et al., "Transformers are RNNs", 2020), strictly positive."""

    def forward(self, q, k, key_padding_mask=None):
        return F.elu(q) + 1.0, F.elu(k) + 1.0

    def truncated_input(self, q, k, key_padding_mask=None):
        return ()  # ELU + 1 is injective: nothing is zeroed


register_feature_map("identity", IdentityFeatureMap)
register_feature_map("relu", ReLUFeatureMap)
register_feature_map("elu", ELUFeatureMap)
