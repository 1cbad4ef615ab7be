"""A sequence classifier for long token sequences (the Long Range Arena tasks) with any registered attention.

Dimension letters: B batch, L tokens, C channels, K classes.

    tokens (B, L) → embedding + position table → N pre-norm blocks → LN → pool → classifier (B, K)
    block:  x = x + attention(LN(x), hw=layout, key_padding_mask)      # any registered attention
            x = x + MLP(LN(x))                                         # fc → GELU → fc

The sizes follow the small configuration of the PyTorch LRA code bases the peer methods report with
(Nyströmformer/Skyformer, used by PolaFormer: width 64, MLP 128, 2 layers, 2 heads, mean pooling):
:data:`SEQ_SIZES` ``small``; ``tiny`` halves the width for CPU budgets.

**The token layout** (``grid``). A 1-D sequence of L tokens reaches every attention as the grid
``hw=(1, L)``. That is how the 2-D parts of the peer methods get their 1-D form: the depthwise k×k
convolution on V (FLatten, PolaFormer, NaLaFormer's and MirrorLA-DWC's LePE) becomes a 1-D depthwise conv of
width k (only the kernel's middle row meets data; the zero padding covers the rest), NaLaFormer's 2-D RoPE
rotates its column pairs by the sequence position and leaves its row pairs still (row index 0), windows
become 1×w (docs/long-range.md has the table per method, tested in tests/test_seq_1d_forms.py). An image task
(Pathfinder, the sequential image) may instead pass its pixel grid, ``grid=(side, side)``: the same model
with the 2-D forms — a separate, labelled variant.

**Padding.** With ``pad_id`` set (ListOps, text), tokens equal to ``pad_id`` are padding: they are masked
out of every attention's keys (``key_padding_mask``) and out of the mean pooling. Convolutions on V see them
as tokens (as in the LRA code bases). Image tasks have no padding (pixel 0 is a real pixel): ``pad_id=None``.

**Pairs** (``pair=True``, LRA Retrieval): the input is (B, 2, L); both documents go through the same encoder
and the classifier sees [u, v, u·v, u − v] of their pooled features, LRA's dual-encoder head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mirrorla.models._timm import init_outside_attention, submodule_no_weight_decay
from mirrorla.registry import create_attention, get_attention_entry, with_build_grid

__all__ = ["SequenceClassifier", "SeqBlock", "SEQ_SIZES", "SEQ_POOLS", "create_sequence_model"]


@dataclass(frozen=True)
class SeqSize:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 2.0


#: ``small``: the LRA small configuration of the PyTorch LRA code bases; ``tiny``: for CPU budgets.
SEQ_SIZES: dict[str, SeqSize] = {
    "tiny": SeqSize(embed_dim=32, depth=2, num_heads=2),
    "small": SeqSize(embed_dim=64, depth=2, num_heads=2),
    "base": SeqSize(embed_dim=128, depth=4, num_heads=4),
}
#: Pooling of the token features before the classifier.
SEQ_POOLS = ("mean", "cls")


class SeqBlock(nn.Module):
    """Pre-norm transformer block: attention over all L tokens, then an MLP; both with residuals."""

    def __init__(
        self, dim: int, num_heads: int, attention: str, attn_kwargs: dict[str, Any], mlp_ratio: float, prefix: int
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = create_attention(attention, dim, num_heads, num_prefix_tokens=prefix, **attn_kwargs)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, hw: tuple[int, int], key_padding_mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), hw=hw, key_padding_mask=key_padding_mask)
        return x + self.mlp(self.norm2(x))


class SequenceClassifier(nn.Module):
    """Token ids (B, L) — or (B, 2, L) with ``pair`` — → logits (B, num_classes); any 1 ≤ L ≤ ``max_len``.

    Args:
        vocab_size: number of token ids (ids are 0 … vocab_size − 1).
        num_classes: K.
        max_len: the longest sequence (size of the learned position table).
        attention: a name in :func:`mirrorla.list_attentions`; ``attn_kwargs`` its options.
        embed_dim, depth, num_heads, mlp_ratio: the encoder (presets: :data:`SEQ_SIZES`).
        pad_id: the padding id (masked out of attention keys and pooling), or None (no padding).
        grid: None (a 1-D sequence, passed to the attentions as ``hw=(1, L)``) or (H, W) with H·W = max_len,
            the 2-D layout of an image task (every input must then have exactly max_len tokens).
        pool: ``"mean"`` (over non-padding tokens) or ``"cls"`` (a learned prefix token).
        pair: two documents per example (LRA Retrieval).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_len: int,
        attention: str = "mirror",
        attn_kwargs: dict[str, Any] | None = None,
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 2,
        mlp_ratio: float = 2.0,
        pad_id: int | None = 0,
        grid: tuple[int, int] | None = None,
        pool: str = "mean",
        pair: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("num_classes", num_classes),
            ("max_len", max_len),
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if pool not in SEQ_POOLS:
            raise ValueError(f"pool must be one of {SEQ_POOLS}, got {pool!r}")
        if pad_id is not None and not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id must be a token id in [0, {vocab_size}) or None, got {pad_id!r}")
        if grid is not None:
            grid = (int(grid[0]), int(grid[1]))
            if grid[0] * grid[1] != max_len:
                raise ValueError(f"grid {grid} must cover max_len = {max_len} tokens (H·W = max_len)")
        entry = get_attention_entry(attention)  # the one check of the name; lists the valid ones
        prefix = 1 if pool == "cls" else 0
        if prefix and not getattr(entry.cls, "supports_prefix_tokens", True):
            raise ValueError(
                f"attention {attention!r} works on a pure token grid and cannot take pool='cls'; use 'mean'"
            )
        self.vocab_size, self.num_classes, self.max_len = vocab_size, num_classes, max_len
        self.attention, self.pad_id, self.grid, self.pool, self.pair = attention, pad_id, grid, pool, pair
        self.embed_dim = self.num_features = embed_dim
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if prefix else None
        attn_kwargs = dict(attn_kwargs or {})
        # A grid-sized key position table (FLatten's and PolaFormer's P; ``build_grid_option``) is built on the
        # model's layout, (1, max_len) or the image grid, unless set: a 2-D default table resized to (1, L) would
        # use only its middle rows (tests/test_seq_1d_forms.py).
        attn_kwargs = with_build_grid(entry, grid or (1, max_len), attn_kwargs)
        block = dict(attention=attention, attn_kwargs=attn_kwargs, mlp_ratio=mlp_ratio, prefix=prefix)
        self.blocks = nn.ModuleList([SeqBlock(embed_dim, num_heads, **block) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        if pair:  # LRA's dual encoder: an MLP on [u, v, u·v, u − v]
            self.head = nn.Sequential(nn.Linear(4 * embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, num_classes))
        else:
            self.head = nn.Linear(embed_dim, num_classes)
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        # Linear trunc_normal(0.02), bias 0, LayerNorm 1/0; embeddings and position table trunc_normal(0.02)
        # (timm/BERT practice). The attention layers initialise themselves.
        init_outside_attention(self, [blk.attn for blk in self.blocks])
        nn.init.trunc_normal_(self.embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The position table and cls token (timm's ViT practice) plus what the attention layers exclude."""
        own = {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())
        return own | submodule_no_weight_decay(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def layout(self, length: int) -> tuple[int, int]:
        """The grid ``hw`` the attentions get for a sequence of ``length`` tokens."""
        return self.grid if self.grid is not None else (1, length)

    def _check_tokens(self, tokens: Tensor) -> None:
        want = "(B, 2, L)" if self.pair else "(B, L)"
        if not isinstance(tokens, Tensor) or tokens.dim() != (3 if self.pair else 2):
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"{type(self).__name__} expects token ids {want}, got {got}")
        if self.pair and tokens.shape[1] != 2:
            raise ValueError(f"a pair model expects two documents per example {want}, got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"token ids must be an integer tensor, got dtype {tokens.dtype}")
        L = tokens.shape[-1]
        if L == 0 or L > self.max_len:
            raise ValueError(f"sequences must have 1 to max_len = {self.max_len} tokens, got {L}")
        if self.grid is not None and L != self.max_len:
            raise ValueError(f"the 2-D layout {self.grid} needs exactly {self.max_len} tokens per sequence, got {L}")
        # The value check reads the data, which a compiled graph cannot branch on: under torch.compile only the
        # shape and dtype checks above run (validate token ids before calling a compiled model).
        if not torch.compiler.is_compiling() and (
            tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size)
        ):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]"
            )

    def padding_mask(self, tokens: Tensor) -> Tensor | None:
        """(B, L) bool, True = a real token; None without padding."""
        if self.pad_id is None:
            return None
        keep = tokens != self.pad_id
        if torch.compiler.is_compiling():  # no data-dependent branch in a compiled graph: always pass the mask
            return keep
        return None if bool(keep.all()) else keep

    def forward_features(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Token ids (B, L) → normed token features (B, P + L, C) (P = 1 with the cls token); ``mask``:
        :meth:`padding_mask` of ``tokens`` when the caller has it already."""
        B, L = tokens.shape
        x = self.embed(tokens) + self.pos_embed[:, :L]
        if mask is None:
            mask = self.padding_mask(tokens)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(B, 1), mask], dim=1)
        hw = self.layout(L)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, hw, mask, use_reentrant=False)
            else:
                x = blk(x, hw, mask)
        return self.norm(x)

    def pool_features(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """(B, P + L, C) → (B, C): the cls token, or the mean over the tokens ``mask`` keeps (all if None)."""
        if self.cls_token is not None:
            return x[:, 0]
        if mask is None:
            return x.mean(dim=1)
        w = mask.to(x.dtype).unsqueeze(-1)
        return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def encode(self, tokens: Tensor) -> Tensor:
        """Token ids (B, L) → pooled features (B, C); the padding mask is computed once for both steps."""
        mask = self.padding_mask(tokens)
        return self.pool_features(self.forward_features(tokens, mask), mask)

    def forward_head(self, pooled: Tensor) -> Tensor:
        return self.head(pooled)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check_tokens(tokens)
        if not self.pair:
            return self.forward_head(self.encode(tokens))
        B, _, L = tokens.shape
        u, v = self.encode(tokens.reshape(B * 2, L)).reshape(B, 2, -1).unbind(1)
        return self.forward_head(torch.cat([u, v, u * v, u - v], dim=-1))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        last = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        new = nn.Linear(last.in_features, num_classes)
        nn.init.trunc_normal_(new.weight, std=0.02)
        nn.init.zeros_(new.bias)
        if isinstance(self.head, nn.Sequential):
            self.head[-1] = new
        else:
            self.head = new


def create_sequence_model(
    size: str, attention: str, attn_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> SequenceClassifier:
    """The :class:`SequenceClassifier` preset ``size`` (a key of :data:`SEQ_SIZES`) with ``attention``;
    ``kwargs``: ``vocab_size``, ``num_classes``, ``max_len`` (required) and any other constructor argument."""
    if size not in SEQ_SIZES:
        raise ValueError(f"unknown sequence-model size {size!r}; valid sizes: {', '.join(SEQ_SIZES)}")
    missing = [k for k in ("vocab_size", "num_classes", "max_len") if k not in kwargs]
    if missing:
        raise ValueError(f"the sequence model needs {', '.join(missing)} (the task's vocabulary, classes, length)")
    p = SEQ_SIZES[size]
    preset = dict(embed_dim=p.embed_dim, depth=p.depth, num_heads=p.num_heads, mlp_ratio=p.mlp_ratio)
    return SequenceClassifier(attention=attention, attn_kwargs=attn_kwargs, **{**preset, **kwargs})
