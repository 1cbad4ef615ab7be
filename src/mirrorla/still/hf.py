"""Hugging Face integration: swap the attention of a Llama-family causal LM for STILL (docs/methods.md §7.1, §7.6).

Dimension letters: B batch, N tokens, C hidden size, H query heads, G key/value heads, D head dim,
F feature dim (2·D_f).

``linearize(model, **config)`` replaces every ``self_attn`` of the decoder with :class:`StillAttention`,
which keeps the original ``q_proj``/``k_proj``/``v_proj``/``o_proj`` modules (weights carried over, not
copied) and adds per layer an NP-Map for q, an NP-Map for k (initialised as an exact copy of the q map)
and ``g_proj`` (Linear(C, H·D, bias=False), every weight 1.0). ``model.generate`` keeps working: the
layer stores a :class:`~mirrorla.still.attention.StillState` in the ``Cache`` that generation passes in
(a :class:`StillCacheLayer` replaces that layer's key/value layer), so no full KV cache is kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from torch import Tensor, nn

from mirrorla.still.attention import StillState, still_attention, still_decode_step
from mirrorla.still.config import StillConfig
from mirrorla.still.np_map import NPMap

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "StillAttention",
    "StillCacheLayer",
    "cache_kwargs",
    "linearize",
    "still_layers",
    "save_linearized",
    "load_linearized",
]

# The transformers releases STILL is tested with (pyproject's `llm` extra, docs/still.md). 4.56 is the
# first whose decoder layers pass the cache as `past_key_values` into a list of per-layer objects
# (`Cache.layers`), which is where a STILL layer keeps its state.
TRANSFORMERS_TESTED = ("4.56", "5.25")
if Version(transformers.__version__).release < Version(TRANSFORMERS_TESTED[0]).release:
    raise ImportError(
        f"mirrorla.still.hf needs transformers>={TRANSFORMERS_TESTED[0]}, found {transformers.__version__}; "
        f"upgrade with: pip install 'transformers>={TRANSFORMERS_TESTED[0]}'"
    )

from transformers.cache_utils import Cache, CacheLayerMixin  # noqa: E402  (after the version check)

# The keyword under which a decoder layer hands its attention the cache: `past_key_value` up to
# transformers 4.55, `past_key_values` from 4.56, `cache` from 5.24 (5.25 still accepts
# `past_key_values` with a deprecation warning and plans to remove it in 5.40, so mirrorla's own calls
# pass `cache` wherever the model's forward has it). StillAttention reads all three and refuses a Cache
# under any other name.
CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value")

# Decoders whose attention is Llama's: q/k/v/o projections, RoPE from ``position_embeddings``, GQA, no
# extra q/k norm and full (not sliding-window) causal attention. Others raise in ``linearize``.
SUPPORTED_MODEL_TYPES = ("llama",)
STILL_CONFIG_FILE = "still_config.json"


def cache_kwargs(model: nn.Module, cache: Cache) -> dict:
    """``{name: cache}`` under the keyword ``model.forward`` reads: ``cache`` from transformers 5.24 (where
    ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` before."""
    import inspect

    return {"cache": cache} if "cache" in inspect.signature(model.forward).parameters else {"past_key_values": cache}


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # Llama's rotate-half RoPE; cos/sin (B, N, D) from the model's rotary embedding.
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


class StillCacheLayer(CacheLayerMixin):
    """One decoder layer's STILL decoding state inside a ``transformers`` ``Cache``.

    The methods a ``Cache`` calls on its layers changed across releases (``get_mask_sizes`` takes the
    new tokens' cache positions up to 5.3 and a query length from 5.4; ``get_max_cache_shape`` is the
    abstract length method up to 5.12, ``get_max_length`` from 5.13), so both spellings are defined and
    arguments are read by meaning, not by name.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False  # there are no keys/values to preallocate

    def __init__(self):
        super().__init__()
        self.state: StillState | None = None

    def lazy_initialization(self, *args, **kwargs) -> None:
        self.is_initialized = True

    def update(self, *args, **kwargs):
        raise TypeError("a STILL cache layer holds a StillState, not keys/values; it is updated by StillAttention")

    def get_seq_length(self, *args, **kwargs) -> int:
        return 0 if self.state is None else self.state.n_seen

    def get_mask_sizes(self, query, *args, **kwargs) -> tuple[int, int]:
        """(kv_length, kv_offset) for ``query``: a query length, or the new tokens' cache positions."""
        query_length = query.shape[0] if isinstance(query, Tensor) else int(query)
        return self.get_seq_length() + query_length, 0

    def get_max_length(self, *args, **kwargs) -> int:
        return -1  # unbounded

    def get_max_cache_shape(self, *args, **kwargs) -> int:
        return -1

    def reset(self) -> None:
        self.state = None
        self.is_initialized = False

    def crop(self, *args, **kwargs) -> None:
        raise NotImplementedError(
            "a STILL state cannot be rolled back (routed tokens are folded into the linear state); assisted and "
            "speculative decoding are not supported with STILL"
        )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(torch.as_tensor(indices).flatten())

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            B = self.state.length.shape[0]
            index = torch.arange(B, device=self.state.length.device).repeat_interleave(repeats)
            self.state = self.state.index_select(index)

    def offload(self):  # the state is small; keep it where it is
        return None

    def prefetch(self):
        return None


def _still_cache_layer(cache: Cache, layer_idx: int) -> StillCacheLayer:
    """The STILL layer of ``cache`` at ``layer_idx``, replacing an empty key/value layer on first use."""
    layers = cache.layers
    while len(layers) <= layer_idx:
        layers.append(StillCacheLayer())
    layer = layers[layer_idx]
    if isinstance(layer, StillCacheLayer):
        return layer
    if layer.get_seq_length() > 0:
        raise ValueError(
            f"cache layer {layer_idx} already holds {layer.get_seq_length()} softmax keys/values; a STILL model "
            "needs a fresh cache (pass no cache, or a new DynamicCache)"
        )
    layers[layer_idx] = StillCacheLayer()
    return layers[layer_idx]


def _key_padding_mask(attention_mask, n_past: int, n_new: int) -> Tensor | None:
    """(B, n_past + n_new) bool keep-mask of the keys from the mask the model passes, or None.

    The causal mask itself is rebuilt inside STILL; what the model's mask adds is padding. A 4-D
    (B, 1, N, M) mask (sdpa, eager: bool, or float with 0 = attend) shows the padded keys in its last
    query row; a 2-D (B, M) mask (flash-attention implementations) is the padding itself. A 4-D mask
    that is not "causal and padding" (packed sequences, custom masks) cannot be honoured by STILL's
    routing and raises, as does a mask object that is not a tensor (flex attention's BlockMask).
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise NotImplementedError(
            f"STILL reads padding from a tensor attention mask, got {type(attention_mask).__name__}; load the model "
            "with attn_implementation='sdpa' or 'eager'"
        )
    M = n_past + n_new
    if attention_mask.dim() == 2 and attention_mask.shape[-1] == M:
        keep = attention_mask.bool()
        return None if bool(keep.all()) else keep
    if attention_mask.dim() != 4 or attention_mask.shape[-1] != M:
        raise NotImplementedError(
            f"STILL expects a (B, 1, N, past + N) causal/padding mask or a (B, past + N) padding mask, with past + N "
            f"= {M}; got shape {tuple(attention_mask.shape)}"
        )
    allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask >= 0
    keep = allowed[:, 0, -1, :]  # (B, M)
    if bool(keep.all()):
        return None
    rows = allowed[:, 0]  # (B, N, M)
    causal = torch.ones(n_new, M, dtype=torch.bool, device=rows.device).tril(n_past)
    expected = causal[None] & keep[:, None, :]
    real_rows = keep[:, n_past:]  # a padded query's row may be anything (transformers unmasks some)
    if not bool(((rows == expected).all(-1) | ~real_rows).all()):
        raise NotImplementedError("STILL supports causal attention with key padding only, not arbitrary masks")
    return keep


def _the_cache(named: dict[str, Cache | None], other_kwargs: dict) -> Cache | None:
    """The one cache among the keywords of :data:`CACHE_KEYWORDS`, or ``None``.

    Raises if two names carry different objects, if a ``Cache`` arrives under a name not read here (a
    transformers release that renamed it again), or if ``use_cache=True`` comes without a cache: in
    the last two cases the model would otherwise decode without its state and produce wrong text.
    """
    given = {name: value for name, value in named.items() if value is not None}
    if len({id(value) for value in given.values()}) > 1:
        raise ValueError(
            f"StillAttention got different caches under {sorted(given)}; pass the cache once, under the name "
            f"the installed transformers {transformers.__version__} uses"
        )
    unread = sorted(name for name, value in other_kwargs.items() if isinstance(value, Cache))
    if unread:
        raise TypeError(
            f"StillAttention got a transformers Cache as {unread}, a keyword it does not read (it reads "
            f"{list(CACHE_KEYWORDS)}). STILL is tested with transformers {TRANSFORMERS_TESTED[0]} to "
            f"{TRANSFORMERS_TESTED[1]} and {transformers.__version__} is installed; if that release renamed the "
            f"cache argument, install 'transformers<={TRANSFORMERS_TESTED[1]}' until STILL reads the new name"
        )
    cache = next(iter(given.values()), None)
    if cache is None and other_kwargs.get("use_cache") is True:
        raise TypeError(
            f"StillAttention got use_cache=True but no cache under {list(CACHE_KEYWORDS)}; a decoder that caches "
            f"passes one (transformers {TRANSFORMERS_TESTED[0]} to {TRANSFORMERS_TESTED[1]} do). Without it STILL "
            "would decode without its state; pass use_cache=False, or a cache"
        )
    return cache


class StillAttention(nn.Module):
    """STILL replacement for a Llama-family attention module (same call signature and outputs).

    Args:
        base: the pretrained attention module; its projections are reused.
        config: :class:`StillConfig`.

    Attributes:
        attention_transfer: when ``True`` (stage 1), the forward also computes the exact softmax
            attention of the same q, k, v (no grad), stores ``mse(STILL, softmax)`` of the per-head
            outputs in ``transfer_loss`` and passes the *softmax* output on, so every layer sees the
            teacher's hidden states.
    """

    def __init__(self, base: nn.Module, config: StillConfig):
        super().__init__()
        hf_config = base.config
        self.config = hf_config
        self.still_config = config
        self.layer_idx = base.layer_idx
        self.head_dim = base.head_dim
        self.num_heads = hf_config.num_attention_heads
        self.num_kv_heads = hf_config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.scaling = base.scaling
        self.is_causal = True
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = base.q_proj, base.k_proj, base.v_proj, base.o_proj
        weight = base.q_proj.weight
        factory = {"device": weight.device, "dtype": torch.float32}
        self.feature_map_q = NPMap(self.num_heads, self.head_dim, config.feature_dim, **factory)
        self.feature_map_k = NPMap(self.num_heads, self.head_dim, config.feature_dim, **factory)
        self.feature_map_k.load_state_dict(self.feature_map_q.state_dict())  # k map starts as a copy (§7.2)
        self.g_proj = nn.Linear(hf_config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.g_proj.to(device=weight.device, dtype=weight.dtype)
        nn.init.ones_(self.g_proj.weight)  # official init: every gate weight 1.0 (§7.5)
        self.attention_transfer = False
        self.transfer_loss: Tensor | None = None

    def _expand(self, x: Tensor) -> Tensor:
        return x.repeat_interleave(self.num_key_value_groups, dim=1) if self.num_key_value_groups > 1 else x

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        past_key_value: Cache | None = None,
        **kwargs,
    ) -> tuple[Tensor, None]:
        """(B, N, C) → ((B, N, C), None); the decoding state lives in the cache.

        The cache may come under any name of :data:`CACHE_KEYWORDS` (whichever the installed transformers
        uses); other keyword arguments (``position_ids``, ``cache_position``, ``use_cache``, ...) are
        not needed: positions arrive through ``position_embeddings``.
        """
        cache = _the_cache(dict(cache=cache, past_key_values=past_key_values, past_key_value=past_key_value), kwargs)
        if position_embeddings is None:
            raise ValueError("StillAttention needs position_embeddings (cos, sin) from the model's rotary embedding")
        B, N, _ = hidden_states.shape
        D = self.head_dim
        q = self.q_proj(hidden_states).view(B, N, -1, D).transpose(1, 2)
        k = self.k_proj(hidden_states).view(B, N, -1, D).transpose(1, 2)
        v = self.v_proj(hidden_states).view(B, N, -1, D).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        k, v = self._expand(k), self._expand(v)  # (B, H, N, D): selection and features are per query head
        cfg = self.still_config
        gate = torch.sigmoid(self.g_proj(hidden_states)).view(B, N, -1, D).transpose(1, 2)
        phi_q = self.feature_map_q(q) if cfg.use_linear else None
        phi_k = self.feature_map_k(k) if cfg.use_linear else None
        kw = dict(chunk_size=cfg.chunk_size, topk=cfg.topk, eps=cfg.eps, saliency_eps=cfg.saliency_eps)

        if not cfg.use_softmax:
            out = self._plain_linear(phi_q, phi_k, v, gate, attention_mask, cache, N, kwargs)
        else:
            out = self._hybrid(q, k, v, phi_q, phi_k, gate, attention_mask, cache, N, kw)
        if self.attention_transfer:
            with torch.no_grad():
                teacher = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
            self.transfer_loss = nn.functional.mse_loss(out.float(), teacher.float())
            out = teacher
        out = out.transpose(1, 2).reshape(B, N, -1).to(hidden_states.dtype)
        return self.o_proj(out), None

    def _plain_linear(self, phi_q, phi_k, v, gate, attention_mask, cache, N, kwargs) -> Tensor:
        """The ``use_softmax=False`` ablation: causal linear attention only (prefill, no padding, no cache)."""
        if cache is not None or kwargs.get("use_cache"):
            raise NotImplementedError(
                "use_softmax=False (plain linear attention) is an evaluation ablation without a decoding path; "
                "call the model with use_cache=False"
            )
        if _key_padding_mask(attention_mask, 0, N) is not None:
            raise NotImplementedError("use_softmax=False does not support padded batches")
        from mirrorla.ops.linear_attention.chunk import causal_linear_attention

        linear = causal_linear_attention(phi_q, phi_k, v.float(), eps=self.still_config.eps)
        return gate.float() * linear

    def _hybrid(self, q, k, v, phi_q, phi_k, gate, attention_mask, cache, N, kw) -> Tensor:
        cache_layer = None if cache is None else _still_cache_layer(cache, self.layer_idx)
        n_past = 0 if cache_layer is None else cache_layer.get_seq_length()
        keep = _key_padding_mask(attention_mask, n_past, N)
        if cache_layer is None or cache_layer.state is None:
            padding = None if keep is None else keep[:, n_past:]
            out = still_attention(
                q, k, v, phi_q, phi_k, gate, key_padding_mask=padding, return_state=cache_layer is not None, **kw
            )
            if cache_layer is not None:
                out, cache_layer.state = out
        else:
            if keep is not None and not bool(keep[:, n_past:].all()):
                raise NotImplementedError("STILL can continue a cache only with real (unpadded) tokens")
            # continue token by token from the stored state
            outs = []
            state = cache_layer.state
            for t in range(N):
                o, state = still_decode_step(
                    state,
                    q[:, :, t],
                    k[:, :, t],
                    v[:, :, t],
                    None if phi_q is None else phi_q[:, :, t],
                    None if phi_k is None else phi_k[:, :, t],
                    gate[:, :, t],
                    **kw,
                )
                outs.append(o)
            cache_layer.state = state
            out = torch.stack(outs, dim=2)
        return out


def still_layers(model: nn.Module) -> list[StillAttention]:
    """The :class:`StillAttention` modules of a linearized model, in layer order."""
    return [m for m in model.modules() if isinstance(m, StillAttention)]


def _decoder_layers(model: nn.Module):
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no decoder layers at .model.layers or .layers")
    return layers


def linearize(model: nn.Module, **config) -> nn.Module:
    """Replace every self-attention of a Llama-family ``transformers`` causal LM with STILL, in place.

    Args:
        model: e.g. ``LlamaForCausalLM`` or ``LlamaModel`` (``config.model_type`` in
            :data:`SUPPORTED_MODEL_TYPES`).
        **config: :class:`StillConfig` fields (``chunk_size=64``, ``topk=4``, ``feature_dim=128``,
            ``use_linear=True``, ...); unknown keys raise.

    Returns:
        The same model object; ``model.still_config`` holds the :class:`StillConfig`.
    """
    cfg = config.pop("config") if isinstance(config.get("config"), StillConfig) else StillConfig.from_kwargs(**config)
    hf_config = getattr(model, "config", None)
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TypeError(
            f"STILL linearize supports model types {SUPPORTED_MODEL_TYPES} (Llama-family decoders), got "
            f"{model_type!r} ({type(model).__name__})"
        )
    if getattr(model, "still_config", None) is not None:
        raise ValueError("this model is already linearized with STILL")
    for layer in _decoder_layers(model):
        attn = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "layer_idx"):
            if not hasattr(attn, name):
                raise TypeError(f"{type(attn).__name__} lacks {name!r}; it is not a Llama-style attention")
        layer.self_attn = StillAttention(attn, cfg)
    model.still_config = cfg
    return model


def set_attention_transfer(model: nn.Module, enabled: bool) -> None:
    """Switch stage-1 attention transfer on or off in every STILL layer."""
    for layer in still_layers(model):
        layer.attention_transfer = enabled
        layer.transfer_loss = None


def save_linearized(model: nn.Module, path: str | Path, tokenizer=None) -> None:
    """``save_pretrained`` plus ``still_config.json``; reload with :func:`load_linearized`."""
    cfg = getattr(model, "still_config", None)
    if cfg is None:
        raise ValueError("the model is not linearized; call linearize(model) first")
    path = Path(path)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    (path / STILL_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1))


def is_linearized_checkpoint(path: str | Path) -> bool:
    return (Path(path) / STILL_CONFIG_FILE).is_file()


def load_linearized(path: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a checkpoint written by :func:`save_linearized` (architecture from config.json, then STILL)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not is_linearized_checkpoint(path):
        raise ValueError(f"{path} has no {STILL_CONFIG_FILE}; it is not a STILL checkpoint")
    cfg = StillConfig.from_kwargs(**json.loads((path / STILL_CONFIG_FILE).read_text()))
    hf_config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(hf_config)
    linearize(model, config=cfg)
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    if not state:
        raise ValueError(f"no *.safetensors weights in {path}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        missing = sorted(set(missing) - tied)
        raise ValueError(f"checkpoint {path} does not match: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    if dtype is not None:
        model.to(dtype)
    return model.eval()
