"""``mirrorla linearize`` and ``mirrorla lm-eval``: STILL on a Hugging Face causal-LM checkpoint folder.

mirrorla linearize --model PATH --data PATH --out PATH      # stage 1 + stage 2, save the STILL model
mirrorla lm-eval   --model PATH --data PATH                 # perplexity of a plain or STILL checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from mirrorla.cli import command

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parse_overrides(text: str | None) -> dict:
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


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=".txt/.jsonl file or folder (jsonl: 'text' or alpaca fields)")
    p.add_argument("--block-size", type=int, default=1024, help="tokens per training/eval sequence")
    p.add_argument("--max-blocks", type=int, default=None, help="use at most this many blocks")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _blocks(args, tokenizer):
    from mirrorla.still.data import read_texts, token_blocks

    return token_blocks(read_texts(args.data), tokenizer, args.block_size, args.max_blocks)


def _add_linearize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF checkpoint folder of a Llama-family causal LM")
    p.add_argument("--out", required=True, help="output folder for the STILL checkpoint")
    _add_data_args(p)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--no-linear", action="store_true", help="drop the linear branch (window + selected only)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=8)
    p.add_argument("--stage1-steps", type=int, default=None, help="optimiser steps (default: 2 epochs)")
    p.add_argument("--stage2-steps", type=int, default=None, help="optimiser steps (default: 2 epochs)")
    p.add_argument("--stage1-lr", type=float, default=1e-2)
    p.add_argument("--stage2-lr", type=float, default=1e-4)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)


@command("linearize", "linearize a HF causal LM with STILL: attention transfer, then LoRA; save the result")(
    _add_linearize_args
)
def run_linearize(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from mirrorla.still.hf import linearize, save_linearized
    from mirrorla.still.train import LinearizeConfig, attention_transfer, lora_finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_config = LinearizeConfig(
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        stage1_lr=args.stage1_lr,
        stage2_lr=args.stage2_lr,
        lora_rank=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        seed=args.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args.model, args.dtype)
    linearize(
        model, chunk_size=args.chunk_size, topk=args.topk, feature_dim=args.feature_dim, use_linear=not args.no_linear
    )
    blocks = _blocks(args, tokenizer)
    print(f"data: {len(blocks)} blocks of {args.block_size} tokens; STILL {model.still_config}")
    t0 = time.perf_counter()
    losses1 = attention_transfer(model, blocks, train_config, progress=not args.no_progress)
    t1 = time.perf_counter()
    model, losses2 = lora_finetune(model, blocks, train_config, progress=not args.no_progress)
    t2 = time.perf_counter()
    out = Path(args.out)
    save_linearized(model, out, tokenizer)
    log = {
        "model": args.model,
        "data": args.data,
        "blocks": len(blocks),
        "block_size": args.block_size,
        "still": model.still_config.to_dict(),
        "train": dataclasses.asdict(train_config),
        "stage1": {"steps": len(losses1), "seconds": round(t1 - t0, 1), "first": losses1[:1], "last": losses1[-1:]},
        "stage2": {"steps": len(losses2), "seconds": round(t2 - t1, 1), "first": losses2[:1], "last": losses2[-1:]},
    }
    (out / "still_train_log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps(log, indent=1))
    print(f"saved STILL checkpoint to {out}")
    return 0


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF checkpoint folder (plain or STILL)")
    _add_data_args(p)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument(
        "--still",
        default=None,
        help="STILL options KEY=VALUE,...: override them on a STILL checkpoint, or linearize a plain one "
        "(e.g. 'topk=0,use_linear=false' = sliding window over the previous and current chunk)",
    )
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


@command("lm-eval", "perplexity of a HF causal LM (plain or STILL) on a text file")(_add_eval_args)
def run_lm_eval(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from mirrorla.still.train import perplexity

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args.model, args.dtype, _parse_overrides(args.still))
    blocks = _blocks(args, tokenizer)
    result = perplexity(model, blocks, args.batch_size, progress=not args.no_progress)
    cfg = getattr(model, "still_config", None)
    result.update(
        model=args.model, data=args.data, block_size=args.block_size, still=None if cfg is None else cfg.to_dict()
    )
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
