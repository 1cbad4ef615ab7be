"""STILL two-stage training and the ``linearize`` / ``lm-eval`` commands on a tiny random Llama."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers import tiny_llama  # noqa: E402

from mirrorla.still import linearize  # noqa: E402
from mirrorla.still.hf import set_attention_transfer, still_layers  # noqa: E402
from mirrorla.still.train import LinearizeConfig, attention_transfer, lora_finetune  # noqa: E402

TEXT = (
    "The interpreter reads a line, runs it and prints the result. A list is a mutable sequence; a tuple "
    "is an immutable one. Functions are objects, so they can be passed to other functions and returned. "
) * 40


def transfer_mse(model, ids) -> float:
    set_attention_transfer(model, True)
    with torch.no_grad():
        model(ids)
    loss = torch.stack([layer.transfer_loss for layer in still_layers(model)]).mean().item()
    set_attention_transfer(model, False)
    return loss


def test_two_stages_train_the_right_parameters():
    base = tiny_llama(61)
    model = linearize(copy.deepcopy(base), chunk_size=8, topk=2, feature_dim=8)
    blocks = torch.randint(0, 61, (6, 40), generator=torch.Generator().manual_seed(0))
    config = LinearizeConfig(batch_size=2, grad_accum=1, stage1_steps=6, stage2_steps=2, stage1_lr=3e-2, stage2_lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mse_before = transfer_mse(model, blocks)
    losses = attention_transfer(model, blocks, config, progress=False)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert transfer_mse(model, blocks) < mse_before  # stage 1 moves STILL towards softmax attention
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n in before if any(k in n for k in ("feature_map_q", "feature_map_k", "g_proj"))}
    assert changed == trainable

    after_stage1 = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged, losses2 = lora_finetune(model, blocks, config, progress=False)
    assert len(losses2) == 2 and merged.still_config == model.still_config
    assert {n for n, _ in merged.named_parameters()} == set(after_stage1)  # LoRA merged away
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, after_stage1[n])}
    assert changed and all(n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                       "g_proj.weight")) for n in changed)  # fmt: skip


def test_train_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        LinearizeConfig(batch_size=0)
    with pytest.raises(ValueError, match="stage1_steps"):
        LinearizeConfig(stage1_steps=-1)
    assert LinearizeConfig(batch_size=1, grad_accum=8).steps(1, 40) == 10  # 2 epochs by default


def test_cli_linearize_and_lm_eval(tmp_path, capsys):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mirrorla.cli import main

    data = tmp_path / "train.txt"
    data.write_text(TEXT)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(data)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    base_dir, out_dir = tmp_path / "base", tmp_path / "still"
    tiny_llama(len(tokenizer)).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    common = ["--data", str(data), "--block-size", "32", "--max-blocks", "4", "--no-progress"]
    rc = main(
        ["linearize", "--model", str(base_dir), "--out", str(out_dir), *common, "--chunk-size", "8", "--topk", "2",
         "--feature-dim", "8", "--stage1-steps", "2", "--stage2-steps", "1", "--grad-accum", "1"]
    )  # fmt: skip
    assert rc == 0 and (out_dir / "still_config.json").is_file() and (out_dir / "still_train_log.json").is_file()
    log = json.loads((out_dir / "still_train_log.json").read_text())
    assert log["stage1"]["steps"] == 2 and log["stage2"]["steps"] == 1

    capsys.readouterr()
    results = {}
    for name, model_dir, extra in [
        ("still", out_dir, []),
        ("window", base_dir, ["--still", "chunk_size=8,topk=0,use_linear=false"]),
        ("softmax", base_dir, []),
    ]:
        path = tmp_path / f"{name}.json"
        assert main(["lm-eval", "--model", str(model_dir), *common, "--json", str(path), *extra]) == 0
        results[name] = json.loads(path.read_text())
    assert all(math.isfinite(r["ppl"]) and r["tokens"] == 4 * 31 for r in results.values())
    printed = capsys.readouterr().out.splitlines()  # a start and a summary line per model; JSON only into --json FILE
    assert [line.split(" ")[0] for line in printed] == ["evaluating", "perplexity"] * 3
    assert f"{results['softmax']['ppl']:.3f}" in printed[-1] and "(plain softmax attention)" in printed[-2]
    assert results["still"]["still"]["topk"] == 2 and results["softmax"]["still"] is None
    assert results["window"]["still"]["use_linear"] is False
    with pytest.raises(ValueError, match="KEY=VALUE"):
        main(["lm-eval", "--model", str(base_dir), *common, "--still", "topk"])
