"""STILL on Hugging Face Llama models: linearize, generate, cache, save/load, errors (docs/methods.md §7.7)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import tiny_llama  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from mirrorla.still import linearize  # noqa: E402
from mirrorla.still.attention import window_valid  # noqa: E402
from mirrorla.still.hf import (  # noqa: E402
    StillAttention,
    StillCacheLayer,
    load_linearized,
    save_linearized,
    still_layers,
)

VOCAB = 97
STILL = dict(chunk_size=8, topk=2, feature_dim=16)


def with_cache(model, cache) -> dict:
    """The cache as a keyword of ``model.forward``: ``cache`` from transformers 5.24, ``past_key_values`` before."""
    names = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in names else {"past_key_values": cache}


@pytest.fixture(scope="module")
def base_model():
    return tiny_llama(VOCAB, pad_token_id=0).eval()


def tokens(n: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_weights_carried_over_and_new_parameters(base_model):
    model = linearize(copy.deepcopy(base_model), **STILL)
    layers = still_layers(model)
    assert len(layers) == 2 and all(isinstance(layer, StillAttention) for layer in layers)
    for old, new in zip(base_model.model.layers, model.model.layers, strict=True):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert torch.equal(getattr(old.self_attn, name).weight, getattr(new.self_attn, name).weight)
        attn = new.self_attn
        assert torch.equal(attn.feature_map_q.weight, attn.feature_map_k.weight)
        assert torch.equal(attn.feature_map_q.householder, attn.feature_map_k.householder)
        assert (attn.g_proj.weight == 1).all() and attn.g_proj.weight.shape == (64, 64)
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in base_model.parameters())
    per_layer = 2 * (4 * 16 + 4 * 16 * 16) + 64 * 64  # two NP-Maps (u, W) + g_proj
    assert extra == 2 * per_layer


def test_all_selected_without_linear_equals_softmax(base_model):
    ids = tokens(37)
    model = linearize(copy.deepcopy(base_model), chunk_size=8, topk=8, use_linear=False, feature_dim=16)
    with torch.no_grad():
        ref = base_model(ids).logits
        out = model(ids).logits
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    # The default STILL (sparse + linear) is a different function: the test above can fail.
    still = linearize(copy.deepcopy(base_model), **STILL)
    with torch.no_grad():
        assert (still(ids).logits - ref).abs().max() > 1e-3


def test_generate_and_cache_match_full_forward(base_model):
    model = linearize(copy.deepcopy(base_model), **STILL)
    prompt = tokens(19)
    with torch.no_grad():
        generated = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=14, do_sample=False, pad_token_id=0
        )
        assert generated.shape == (2, 33)
        full = model(generated).logits
        cache = DynamicCache(config=model.config)
        logits = [model(generated[:, :19], **with_cache(model, cache), use_cache=True).logits]
        for t in range(19, 33):
            logits.append(model(generated[:, t : t + 1], **with_cache(model, cache), use_cache=True).logits)
    assert isinstance(cache.layers[0], StillCacheLayer) and cache.get_seq_length() == 33
    # fp32: the decode loop and the chunk form sum the same terms in a different order.
    assert (torch.cat(logits, 1) - full).abs().max() <= 1e-4
    # Greedy generation picks the argmax of the full forward at every new position.
    assert torch.equal(full[:, 18:-1].argmax(-1), generated[:, 19:])
    # The state keeps K of every 8 old tokens, not the full sequence.
    state = cache.layers[0].state
    assert state.sel_k.shape[2] == (33 // 8 - 1) * 2 and int(window_valid(state.length, 8).sum(1).max()) <= 16


def test_cached_steps_reach_every_layer_state(base_model):
    """The cache reaches StillAttention under the name the installed transformers uses.

    If a release passes it under a name StillAttention does not read, the state below stays empty (and
    StillAttention raises on a Cache under an unknown keyword), instead of decoding without a state.
    """
    model = linearize(copy.deepcopy(base_model), **STILL)
    prompt = tokens(11)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(prompt, **with_cache(model, cache), use_cache=True)
        layers = list(cache.layers)
        assert len(layers) == 2 and all(isinstance(layer, StillCacheLayer) for layer in layers)
        assert [layer.state.length.tolist() for layer in layers] == [[11, 11]] * 2
        for n in (12, 13):
            model(prompt[:, :1], **with_cache(model, cache), use_cache=True)
            assert [layer.state.n_seen for layer in cache.layers] == [n, n]
    assert cache.get_seq_length() == 13


def test_cache_keywords(base_model):
    """Every keyword transformers has used for the cache works; two different caches or an unknown name raise."""
    model = linearize(copy.deepcopy(base_model), **STILL)
    attn = model.model.layers[0].self_attn
    hidden = torch.randn(2, 5, 64)
    rope = model.model.rotary_emb(hidden, torch.arange(5)[None].expand(2, 5))
    outputs = []
    for name in ("cache", "past_key_values", "past_key_value"):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            outputs.append(attn(hidden, position_embeddings=rope, **{name: cache})[0])
        assert isinstance(cache.layers[0], StillCacheLayer) and cache.layers[0].state.n_seen == 5, name
    assert all(torch.equal(out, outputs[0]) for out in outputs)
    cache = DynamicCache(config=model.config)
    attn(hidden, position_embeddings=rope, cache=cache, past_key_values=cache)  # the same object twice is fine
    with pytest.raises(ValueError, match="different caches"):
        attn(hidden, position_embeddings=rope, cache=cache, past_key_values=DynamicCache(config=model.config))
    with pytest.raises(TypeError, match="does not read"):
        attn(hidden, position_embeddings=rope, kv_cache=DynamicCache(config=model.config))
    with pytest.raises(TypeError, match="use_cache=True but no cache"):
        attn(hidden, position_embeddings=rope, use_cache=True)
    layer = StillCacheLayer()  # every abstract method of the installed CacheLayerMixin is implemented
    assert layer.get_seq_length() == 0 and layer.get_mask_sizes(3) == (3, 0)
    assert layer.get_mask_sizes(torch.arange(4)) == (4, 0)  # transformers < 5.10 passes cache positions


def test_save_and_load_round_trip(base_model, tmp_path):
    model = linearize(copy.deepcopy(base_model), **STILL)
    with torch.no_grad():
        for layer in still_layers(model):
            layer.feature_map_k.weight.add_(0.1)  # trained state differs from the init
    save_linearized(model, tmp_path)
    loaded = load_linearized(tmp_path)
    assert loaded.still_config == model.still_config
    ids = tokens(21)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)


def test_attention_transfer_mode(base_model):
    from mirrorla.still.hf import set_attention_transfer

    model = linearize(copy.deepcopy(base_model), **STILL)
    set_attention_transfer(model, True)
    ids = tokens(30)
    with torch.no_grad():
        out = model(ids).logits
        ref = base_model(ids).logits
    # Teacher outputs are passed on, so the logits are the softmax model's; each layer has a loss.
    assert torch.allclose(out, ref, atol=1e-5)
    losses = [layer.transfer_loss for layer in still_layers(model)]
    assert all(loss is not None and loss > 0 for loss in losses)


def test_errors(base_model):
    with pytest.raises(ValueError, match="chunk_size must be > 0"):
        linearize(copy.deepcopy(base_model), chunk_size=0)
    with pytest.raises(ValueError, match="topk must be in"):
        linearize(copy.deepcopy(base_model), chunk_size=8, topk=9)
    with pytest.raises(TypeError, match="unknown STILL option"):
        linearize(copy.deepcopy(base_model), window=8)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=11))
    with pytest.raises(TypeError, match="supports model types"):
        linearize(gpt2)
    model = linearize(copy.deepcopy(base_model), **STILL)
    with pytest.raises(ValueError, match="already linearized"):
        linearize(model)


def test_mask_formats(base_model):
    """4-D bool (sdpa), 4-D float (eager) and 2-D (flash) padding masks mean the same; other masks raise."""
    model = linearize(copy.deepcopy(base_model), **STILL)
    attn = model.model.layers[0].self_attn
    hidden = torch.randn(2, 11, 64)
    rope = model.model.rotary_emb(hidden, torch.arange(11)[None].expand(2, 11))
    keep = torch.ones(2, 11, dtype=torch.bool)
    keep[0, :3] = False
    allowed = torch.ones(11, 11, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        outs = [attn(hidden, position_embeddings=rope, attention_mask=m)[0] for m in (allowed, additive, keep.long())]
        unmasked = attn(hidden, position_embeddings=rope)[0]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert not torch.allclose(outs[0][0, 3:], unmasked[0, 3:])  # the padding is not ignored
    with pytest.raises(NotImplementedError, match="key padding only"):
        attn(hidden, position_embeddings=rope, attention_mask=allowed & ~torch.eye(11, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="tensor attention mask"):
        attn(hidden, position_embeddings=rope, attention_mask=object())


def test_beam_search_scores_match_full_forward(base_model):
    """Beam search reorders and repeats the STILL states: each returned beam's score is the log-probability
    of its tokens under a full forward (length_penalty=0: the plain sum; fp32 tolerance 1e-4)."""
    model = linearize(copy.deepcopy(base_model), **STILL)
    prompt = tokens(13, seed=1)
    with torch.no_grad():
        out = model.generate(
            prompt, num_beams=3, num_return_sequences=2, max_new_tokens=10, min_new_tokens=10, do_sample=False,
            length_penalty=0.0, output_scores=True, return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
        log_probs = model(out.sequences).logits.log_softmax(-1)
    chosen = log_probs[:, 12:-1].gather(-1, out.sequences[:, 13:, None]).squeeze(-1).sum(-1)
    assert out.sequences.shape == (4, 23)
    assert (out.sequences_scores - chosen).abs().max() <= 1e-4


PADS = (0, 1, 3, 8, 17)  # none, less than a chunk (8), a whole chunk, more than two chunks


def left_padded_batch(n: int = 40):
    """Rows of ``n`` tokens, row b left-padded by PADS[b] (token 0) and its real tokens after."""
    ids = tokens(n, batch=len(PADS), seed=3)
    mask = torch.ones_like(ids)
    for b, pad in enumerate(PADS):
        ids[b, :pad] = 0
        mask[b, :pad] = 0
    return ids, mask


def test_left_padding_matches_unpadded(base_model):
    """Q5: every left-padded row gives the logits and the greedy continuation of the row alone.

    Any number of pad tokens: the chunk grid starts at a row's first real token, so rows whose real
    lengths differ modulo the chunk size are at different chunk phases during decoding. Tolerance: 1e-4
    absolute on the logits (|logits| ≈ 1; fp32, the same sums in another order and batch shape).
    """
    model = linearize(copy.deepcopy(base_model), **STILL)
    ids, mask = left_padded_batch()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    greedy = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, position_ids=positions).logits
        assert torch.isfinite(padded).all()
        out = model.generate(ids, attention_mask=mask, output_logits=True, return_dict_in_generate=True, **greedy)
        for b, pad in enumerate(PADS):
            alone = model(ids[b : b + 1, pad:]).logits
            assert (padded[b, pad:] - alone[0]).abs().max() <= 1e-4, pad
            out_alone = model.generate(ids[b : b + 1, pad:], output_logits=True, return_dict_in_generate=True, **greedy)
            assert torch.equal(out.sequences[b, pad:], out_alone.sequences[0]), pad
            steps = torch.stack([step[b] for step in out.logits])
            steps_alone = torch.stack([step[0] for step in out_alone.logits])
            assert (steps - steps_alone).abs().max() <= 1e-4, pad
