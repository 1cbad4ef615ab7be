"""``mirrorla linearize`` and ``mirrorla lm-eval``: STILL on a Hugging Face causal-LM checkpoint folder.

mirrorla linearize --model PATH --data PATH --out PATH      # stage 1 + stage 2, save the STILL model
mirrorla lm-eval   --model PATH --data PATH                 # perplexity of a plain or STILL checkpoint

Both need the ``[llm]`` extra (transformers, peft); without it they say so in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import time
from pathlib import Path

from mirrorla.commands import Command, UsageError
from mirrorla.commands.lines import add_json_option, print_json
from mirrorla.commands.options import check_out_folder, positive_float, positive_int

__all__ = ["COMMANDS", "require_llm_extra"]


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (see :func:`mirrorla.engine.checkpoint.atomic_write_bytes`; imports torch, so
    only when a command runs)."""
    from mirrorla.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


_DTYPES = ("float32", "bfloat16", "float16")
#: What ``pip install "mirrorla[llm]"`` adds (see pyproject.toml).
LLM_PACKAGES = ("transformers", "peft", "safetensors")


def require_llm_extra(command: str) -> None:
    """``UsageError`` naming the missing package and the install command when the [llm] extra is absent."""
    for package in LLM_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError as err:
            raise UsageError(
                f'{command} needs the package {package}, which is not installed ({err}): pip install "mirrorla[llm]"'
            ) from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=".txt/.jsonl file or folder (jsonl: 'text' or alpaca fields)")
    p.add_argument("--block-size", type=positive_int, default=1024, help="tokens per training/eval sequence")
    p.add_argument("--max-blocks", type=positive_int, default=None, help="use at most this many blocks (default: all)")
    p.add_argument("--dtype", choices=_DTYPES, default="float32", help="dtype of the model's weights")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def _blocks(args, tokenizer):
    from mirrorla.still.data import read_texts, token_blocks

    return token_blocks(read_texts(args.data), tokenizer, args.block_size, args.max_blocks)


def _resolve(model: str) -> str:
    """A local checkpoint folder for ``--model`` (a GGUF file or known name is dequantised once into the cache)."""
    from mirrorla.still.pretrained import resolve_model

    try:
        return str(resolve_model(model))
    except ValueError as err:
        raise UsageError(f"--model: {err}") from None


def _add_linearize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="Llama-family causal LM: a HF checkpoint folder, a .gguf file, or a known name (smollm2-135m)",
    )
    p.add_argument("--out", required=True, help="output folder for the STILL checkpoint")
    _add_data_args(p)
    p.add_argument("--chunk-size", type=positive_int, default=64, help="STILL chunk length (tokens)")
    p.add_argument(
        "--topk",
        type=int,
        default=4,
        help="tokens per earlier chunk and head kept for exact softmax attention (0 to --chunk-size; 0: window and "
        "linear branch only)",
    )
    p.add_argument("--feature-dim", type=positive_int, default=128, help="feature map width of the linear branch")
    p.add_argument(
        "--linear",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the linear branch (--no-linear: window + selected chunks only)",
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="blocks per step")
    p.add_argument("--grad-accum", type=positive_int, default=8, help="steps per optimiser update")
    p.add_argument("--stage1-steps", type=positive_int, default=None, help="optimiser steps (default: 2 epochs)")
    p.add_argument("--stage2-steps", type=positive_int, default=None, help="optimiser steps (default: 2 epochs)")
    p.add_argument("--stage1-lr", type=positive_float, default=1e-2, help="attention-transfer learning rate")
    p.add_argument("--stage2-lr", type=positive_float, default=1e-4, help="LoRA fine-tuning learning rate")
    p.add_argument("--lora-rank", type=positive_int, default=8, help="LoRA rank (alpha = 2 × rank)")
    p.add_argument("--seed", type=int, default=0, help="random seed")


def run_linearize(args: argparse.Namespace) -> int:
    require_llm_extra("mirrorla linearize")
    check_out_folder(args.out)
    import torch
    from transformers import AutoTokenizer

    from mirrorla.still.cli import load_model
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
    folder = _resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder, args.dtype)
    linearize(model, chunk_size=args.chunk_size, topk=args.topk, feature_dim=args.feature_dim, use_linear=args.linear)
    blocks = _blocks(args, tokenizer)
    print(f"data: {len(blocks)} blocks of {args.block_size} tokens; STILL {model.still_config}")
    t0 = time.perf_counter()
    losses1 = attention_transfer(model, blocks, train_config, progress=args.progress)
    t1 = time.perf_counter()
    model, losses2 = lora_finetune(model, blocks, train_config, progress=args.progress)
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
    _write_text(out / "still_train_log.json", json.dumps(log, indent=1))
    print(json.dumps(log, indent=1))
    print(f"saved STILL checkpoint to {out}")
    return 0


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="HF checkpoint folder (plain or STILL), a .gguf file, or a known name (smollm2-135m)",
    )
    _add_data_args(p)
    p.add_argument("--batch-size", type=positive_int, default=1, help="blocks per forward")
    p.add_argument(
        "--still",
        default=None,
        help="STILL options KEY=VALUE,...: override them on a STILL checkpoint, or linearize a plain one "
        "(e.g. 'topk=0,use_linear=false' = sliding window over the previous and current chunk)",
    )
    add_json_option(p)


def run_lm_eval(args: argparse.Namespace) -> int:
    require_llm_extra("mirrorla lm-eval")
    import torch
    from transformers import AutoTokenizer

    from mirrorla.still.cli import load_model, parse_overrides
    from mirrorla.still.train import perplexity

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = _resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder, args.dtype, parse_overrides(args.still))
    blocks = _blocks(args, tokenizer)
    cfg = getattr(model, "still_config", None)
    kind = "plain softmax attention" if cfg is None else f"STILL ({cfg.to_dict()})"
    print(
        f"evaluating {args.model} ({kind}) on {args.data}: {len(blocks)} blocks of {args.block_size} tokens; "
        f"cpu, {torch.get_num_threads()} threads",
        flush=True,
    )
    result = perplexity(model, blocks, args.batch_size, progress=args.progress)
    result.update(
        model=args.model, data=args.data, block_size=args.block_size, still=None if cfg is None else cfg.to_dict()
    )
    print(
        f"perplexity {result['ppl']:.3f} (NLL {result['nll']:.4f} per token) over {result['tokens']:,} tokens "
        f"in {result['seconds']:.0f} s"
    )
    print_json(args, result)
    return 0


COMMANDS = [
    Command(
        "linearize",
        'linearize a HF causal LM with STILL: attention transfer, then LoRA; save the result (needs "mirrorla[llm]")',
        _add_linearize_args,
        run_linearize,
    ),
    Command(
        "lm-eval",
        'perplexity of a HF causal LM (plain or STILL) on a text file (needs "mirrorla[llm]")',
        _add_eval_args,
        run_lm_eval,
    ),
]
