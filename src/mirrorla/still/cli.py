"""Loading a Hugging Face causal LM, plain or STILL, as ``mirrorla linearize`` / ``lm-eval`` do.

The commands themselves are in :mod:`mirrorla.commands.still`.
"""

from __future__ import annotations

import json

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_overrides(text: str | None) -> dict:
    """``"topk=0,use_linear=false"`` → ``{"topk": 0, "use_linear": False}`` (values parsed as JSON)."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--still expects KEY=VALUE pairs separated by commas, got {item!r}")
        value = value.strip()
        try:
            out[key.strip()] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def load_model(path: str, dtype: str = "float32", still: dict | None = None):
    """Load a plain HF causal LM or a STILL checkpoint; ``still`` overrides/sets STILL options.

    A plain checkpoint with ``still`` options is linearized on the fly (useful for the sliding-window
    baseline ``topk=0,use_linear=false``, which has no trained parameters). For a STILL checkpoint only
    options that need no new weights may change (``chunk_size``, ``topk``, ``use_linear``, ``eps``).
    """
    from transformers import AutoModelForCausalLM

    from mirrorla.still.config import StillConfig
    from mirrorla.still.hf import is_linearized_checkpoint, linearize, load_linearized, still_layers

    torch_dtype = _DTYPES[dtype]
    if is_linearized_checkpoint(path):
        model = load_linearized(path, dtype=torch_dtype)
        if still:
            if "feature_dim" in still and still["feature_dim"] != model.still_config.feature_dim:
                raise ValueError("feature_dim of a trained STILL checkpoint cannot change")
            cfg = StillConfig.from_kwargs(**{**model.still_config.to_dict(), **still})
            for layer in still_layers(model):
                layer.still_config = cfg
            model.still_config = cfg
        return model
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).eval()
    if still is not None and still:
        linearize(model, **still)
    return model


_parse_overrides = parse_overrides  # the name used before
