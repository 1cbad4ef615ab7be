"""Train a small Llama-architecture causal LM from scratch and save it as a normal HF checkpoint.

This stands in for a downloaded pretrained model (none can be downloaded here): the STILL commands
that follow (``mirrorla linearize``, ``mirrorla lm-eval``, ``scripts/still/bench_decode.py``) take
its folder exactly as they would take a real Llama checkpoint.

It trains a byte-level BPE tokenizer on the training text, builds a ``LlamaConfig`` (GQA, RoPE,
SwiGLU, RMSNorm, as in Llama 3) and trains with AdamW and a cosine schedule for a wall-clock budget.

    python scripts/still/pretrain_base.py --data runs/still/pydoc/train.txt --out runs/still/base \
        --minutes 10
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def train_tokenizer(text_path: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(text_path)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="training text (.txt)")
    ap.add_argument("--out", type=Path, required=True, help="output checkpoint folder")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from mirrorla.still.data import read_texts, token_blocks

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    tokenizer = train_tokenizer(args.data, args.vocab)
    blocks = token_blocks(read_texts(args.data), tokenizer, args.context + 1)
    print(
        f"tokenizer: {len(tokenizer)} tokens; data: {blocks.numel():,} tokens in {len(blocks)} blocks "
        f"({time.time() - t0:.0f} s)"
    )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 8 / 3 / 16 + 0.999) * 16,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters, {config.num_hidden_layers} layers, hidden {config.hidden_size}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    budget = args.minutes * 60
    warmup = 30
    start = time.time()
    step, seen = 0, 0
    model.train()
    while step < args.max_steps:
        elapsed = time.time() - start
        if elapsed > budget:
            break
        progress = elapsed / budget  # cosine over the wall-clock budget, not a step count
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(blocks), (args.batch,))
        batch = blocks[idx]
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += batch[:, :-1].numel()
        if step % 20 == 0 or step == 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {lr:.2e}  tokens {seen:,}  {elapsed:.0f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    info = {"steps": step, "tokens": seen, "seconds": round(time.time() - start), "params": n_params}
    (args.out / "pretrain_info.json").write_text(json.dumps(info, indent=1))
    print(f"saved {args.out}: {info}")


if __name__ == "__main__":
    main()
