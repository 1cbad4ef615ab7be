"""Hugging Face integration: swap the attention of a Llama-family causal LM for STILL (METHODS.md §7.1, §7.6).

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
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin

from mirrorla.still.attention import StillState, still_attention, still_decode_step
from mirrorla.still.config import StillConfig
from mirrorla.still.np_map import NPMap

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "StillAttention",
    "StillCacheLayer",
    "linearize",
    "still_layers",
    "save_linearized",
    "load_linearized",
]

# Decoders whose attention is Llama's: q/k/v/o projections, RoPE from ``position_embeddings``, GQA, no
# extra q/k norm and full (not sliding-window) causal attention. Others raise in ``linearize``.
SUPPORTED_MODEL_TYPES = ("llama",)
STILL_CONFIG_FILE = "still_config.json"


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # Llama's rotate-half RoPE; cos/sin (B, N, D) from the model's rotary embedding.
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


class StillCacheLayer(CacheLayerMixin):
    """One decoder layer's STILL decoding state inside a ``transformers`` ``Cache``."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self):
        super().__init__()
        self.state: StillState | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise TypeError("a STILL cache layer holds a StillState, not keys/values; it is updated by StillAttention")

    def get_seq_length(self) -> int:
        return 0 if self.state is None else self.state.n_seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.state = None
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(torch.as_tensor(indices).flatten())

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            B = self.state.sel_k.shape[0]
            index = torch.arange(B, device=self.state.sel_k.device).repeat_interleave(repeats)
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
            "needs a fresh cache (pass past_key_values=None or a new DynamicCache)"
        )
    layers[layer_idx] = StillCacheLayer()
    return layers[layer_idx]


def _key_padding_mask(attention_mask: Tensor | None, n_past: int, n_new: int) -> Tensor | None:
    """(B, n_past + n_new) bool keep-mask of the keys from the model's (B, 1, N, M) mask, or None.

    The causal mask itself is rebuilt inside STILL; what the 4-D mask adds is padding. The last query
    row shows which keys are padding. A mask that is not "causal and padding" (packed sequences,
    custom masks) cannot be honoured by STILL's routing and raises.
    """
    if attention_mask is None or not isinstance(attention_mask, Tensor):
        return None
    if attention_mask.dim() != 4 or attention_mask.shape[-1] != n_past + n_new:
        raise NotImplementedError(
            f"STILL expects a (B, 1, N, past + N) causal/padding mask, got shape {tuple(attention_mask.shape)}"
        )
    allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask >= 0
    keep = allowed[:, 0, -1, :]  # (B, M)
    if bool(keep.all()):
        return None
    rows = allowed[:, 0]  # (B, N, M)
    causal = torch.ones(n_new, n_past + n_new, dtype=torch.bool, device=rows.device).tril(n_past)
    expected = causal[None] & keep[:, None, :]
    real_rows = keep[:, n_past:]  # a padded query's row may be anything (transformers unmasks some)
    if not bool(((rows == expected).all(-1) | ~real_rows).all()):
        raise NotImplementedError("STILL supports causal attention with key padding only, not arbitrary masks")
    return keep


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
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[Tensor, None]:
        """(B, N, C) → ((B, N, C), None); decoding state lives in ``past_key_values``."""
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

        cache_layer = None if past_key_values is None else _still_cache_layer(past_key_values, self.layer_idx)
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

        if self.attention_transfer:
            with torch.no_grad():
                teacher = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
            self.transfer_loss = nn.functional.mse_loss(out.float(), teacher.float())
            out = teacher
        out = out.transpose(1, 2).reshape(B, N, -1).to(hidden_states.dtype)
        return self.o_proj(out), None


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
