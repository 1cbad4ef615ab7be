"""The contract every attention layer follows (docs/methods.md §0.3) and its shared plumbing.

Dimension letters: B batch, N tokens, C channels, H heads, D = C/H head dim.

Constructor: ``(dim, num_heads=8, qkv_bias=True, attn_drop=0., proj_drop=0., num_prefix_tokens=0,
**method options)``; timm's ``Block`` also passes ``qk_norm``, ``scale_norm``, ``proj_bias``,
``norm_layer``, ``depth``, ``device`` and ``dtype``, which are accepted here. Options a layer cannot
honour raise, they are never silently dropped.

Forward: ``forward(x, hw=None, key_padding_mask=None, attn_mask=None, is_causal=False)`` with x
(B, N, C) → (B, N, C). Layers that need the token grid take ``hw`` (backbones pass their patch grid
down the call: block → layer → parts), else infer a square grid from N − P; a non-square N − P
without ``hw`` raises. Nothing about a call is stored on the module.
A given ``hw`` must fit N − P in every layer, including those that do not use the grid. Empty
inputs work as in ``scaled_dot_product_attention``: B = 0 gives an empty output (every parameter
gets a zero gradient); so does N = 0 in a layer that takes any N, while a layer that needs the grid
raises a ValueError.
"""

from __future__ import annotations

import functools

from torch import Tensor, nn

from mirrorla.layers.parts import check_hw, resolve_grid

__all__ = ["AttentionBase"]


class AttentionBase(nn.Module):
    """Validates the common constructor arguments and input shapes; subclasses add the math."""

    #: True for layers without an attention matrix (attn_drop and arbitrary attn_mask impossible).
    is_linear: bool = True
    #: False for layers that only work on a pure token grid (e.g. window attention: no cls token).
    supports_prefix_tokens: bool = True
    #: Name of the constructor option that sizes a learned table by the token grid (the key position
    #: table of :class:`LinearAttention`: ``"key_pos_grid"``), or None. A backbone that builds one
    #: layer per stage passes the stage's grid through it when the table is on, as the official PVT
    #: models do.
    build_grid_option: str | None = None

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_prefix_tokens: int = 0,
        *,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        norm_layer: type[nn.Module] | None = None,
        depth: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or not isinstance(num_heads, int) or dim <= 0 or num_heads <= 0:
            raise TypeError(f"dim and num_heads must be positive ints, got dim={dim!r}, num_heads={num_heads!r}")
        if dim % num_heads:
            raise ValueError(
                f"dim ({dim}) must be divisible by num_heads ({num_heads}); e.g. num_heads={_divisors_hint(dim)}"
            )
        if qk_norm:
            raise NotImplementedError(
                f"{type(self).__name__} does not implement qk_norm=True; build the model with qk_norm=False"
            )
        if scale_norm:
            raise NotImplementedError(
                f"{type(self).__name__} does not implement scale_norm=True; build the model with scale_norm=False"
            )
        if self.is_linear and attn_drop > 0:
            raise ValueError(
                f"{type(self).__name__} is a linear attention and has no attention matrix to drop; "
                f"got attn_drop={attn_drop}, use attn_drop=0 (proj_drop is supported)"
            )
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self._factory = {"device": device, "dtype": dtype}
        self._proj_bias = proj_bias
        self._qkv_bias = qkv_bias
        self.attn_drop_p = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **self._factory)
        self.proj_drop = nn.Dropout(proj_drop)

    def __init_subclass__(cls, **kwargs) -> None:
        # ``device``/``dtype`` (timm's Block passes them) must reach every parameter and buffer, including
        # those of feature maps and convolution branches built without them: each subclass ``__init__``
        # ends by moving the layer there. Moving consumes no random numbers, so seeded inits are unchanged.
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            original = cls.__init__

            @functools.wraps(original)
            def __init__(self, *args, **kw) -> None:
                original(self, *args, **kw)
                if any(v is not None for v in self._factory.values()):
                    self.to(**{k: v for k, v in self._factory.items() if v is not None})

            cls.__init__ = __init__

    # -- helpers for subclasses -------------------------------------------------------------
    def check_input(self, x: Tensor, key_padding_mask: Tensor | None, hw: tuple[int, int] | None = None) -> None:
        """x must be (B, N, C); a mask (B, N) bool; a given ``hw`` must fit N − num_prefix_tokens."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__}(dim={self.dim}) expects x of shape (B, N, {self.dim}), got {tuple(x.shape)}"
            )
        if key_padding_mask is not None:
            from mirrorla.ops._checks import check_key_padding_mask

            check_key_padding_mask(key_padding_mask, x.shape[0], x.shape[1])
        if hw is not None:
            check_hw(x.shape[1], self.num_prefix_tokens, hw)

    def split_heads(self, t: Tensor) -> Tensor:
        """(B, N, C) → (B, H, N, D)."""
        B, N, _ = t.shape
        return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def merge_heads(t: Tensor) -> Tensor:
        """(B, H, N, D) → (B, N, C)."""
        B, H, N, D = t.shape
        return t.transpose(1, 2).reshape(B, N, H * D)

    def grid(self, num_tokens: int, hw: tuple[int, int] | None) -> tuple[int, int]:
        """The (Hg, Wg) of the N − P spatial tokens: ``hw`` (checked) or a square, else a ValueError."""
        return resolve_grid(num_tokens, self.num_prefix_tokens, hw)

    def _input_linear(self, n: int) -> nn.Linear:
        """The fused input projection ``Linear(C, n·C)`` with the layer's qkv_bias, device
        and dtype (n = 3 for qkv, 4 with a gate, 1 for q, 2 for kv). Not initialised here: subclasses
        call :meth:`_init_linear` once all their modules exist, so the seeded initialisation order stays
        the same for every layer."""
        return nn.Linear(self.dim, n * self.dim, bias=self._qkv_bias, **self._factory)

    def _init_linear(self, *linears: nn.Linear) -> None:
        # docs/methods.md §0.3: Linear trunc_normal(std 0.02), bias 0.
        for lin in linears:
            nn.init.trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)


def _divisors_hint(dim: int) -> str:
    divs = [h for h in range(1, min(dim, 32) + 1) if dim % h == 0]
    return ", ".join(map(str, divs[-4:]))
