"""Attention layers (B, N, C) → (B, N, C), and their registry entries."""

from mirrorla.layers.base import AttentionBase
from mirrorla.layers.linear import LinearAttention
from mirrorla.layers.mirror import MirrorLinearAttention
from mirrorla.layers.softmax import SoftmaxAttention
from mirrorla.registry import register_attention

__all__ = ["AttentionBase", "SoftmaxAttention", "LinearAttention", "MirrorLinearAttention"]

register_attention("softmax", SoftmaxAttention, "softmax attention (scaled_dot_product_attention)")
register_attention("linear_relu", LinearAttention, "linear attention, φ = ReLU", feature_map="relu")
register_attention("linear_elu", LinearAttention, "linear attention, φ = ELU + 1", feature_map="elu")
# MirrorLA and its ablation rows (METHODS.md §2.8).
register_attention("mirror", MirrorLinearAttention, "MirrorLA (R3): block + variance + cross-head reflections")
register_attention(
    "mirror_block",
    MirrorLinearAttention,
    "MirrorLA ablation R1: block reflection only",
    variance_modulation=False,
    cross_head=False,
)
register_attention(
    "mirror_block_var",
    MirrorLinearAttention,
    "MirrorLA ablation R2: block reflection + variance modulation",
    cross_head=False,
)
register_attention(
    "mirror_cross",
    MirrorLinearAttention,
    "MirrorLA ablation R1c: cross-head reflection only",
    block_reflection=False,
    variance_modulation=False,
)
register_attention(
    "mirror_dwc",
    MirrorLinearAttention,
    "MirrorLA (R3) + shared 5x5 DWC on V (ImageNet preset, §2.6)",
    dwc_kernel=5,
    dwc_shared=True,
)
# L²ViT token mixers (METHODS.md §6); its LCM and CPE are block-level parts in mirrorla.layers.l2vit.
from mirrorla.layers.l2vit import LinearGlobalAttention, LocalWindowAttention  # noqa: E402

__all__ += ["LinearGlobalAttention", "LocalWindowAttention"]
register_attention(
    "l2vit_lga", LinearGlobalAttention, "L²ViT linear global attention: ReLU, τ on the kv state, denominator ≥ 100"
)
register_attention(
    "window_softmax", LocalWindowAttention, "softmax in non-overlapping 7x7 windows, padded keys masked (L²ViT LWA)"
)
# FLatten, PolaFormer, NaLaFormer (METHODS.md §3–5): configurations of the shared linear-attention parts.
from mirrorla.layers.flatten import FocusedLinearAttention  # noqa: E402
from mirrorla.layers.grid_linear import GridLinearAttention  # noqa: E402
from mirrorla.layers.nala import NormAwareLinearAttention  # noqa: E402
from mirrorla.layers.pola import PolaLinearAttention  # noqa: E402

__all__ += ["GridLinearAttention", "FocusedLinearAttention", "PolaLinearAttention", "NormAwareLinearAttention"]
register_attention("flatten", FocusedLinearAttention, "FLatten focused linear attention (p=3, 5x5 DWC, learned P)")
register_attention(
    "pola", PolaLinearAttention, "PolaFormer: polarity split, learnable power, ± streams, linear gate, DWC, P"
)
register_attention(
    "nala", NormAwareLinearAttention, "NaLaFormer, released-code form: norm-aware power, RoPE numerator, LN, SiLU gate"
)
register_attention(
    "nala_cos", NormAwareLinearAttention, "NaLaFormer, paper cosine-inhibit form (option)", nala_form="cosine"
)
