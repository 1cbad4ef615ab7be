"""STILL on a real pretrained LM (SmolLM2-135M-Instruct, GGUF Q4_1 dequantised to fp32), end to end on CPU.

Stages, each stored in ``OUT/results.json`` as soon as it finishes (a rerun skips what is there; the two
training stages also resume step by step from ``OUT/stage1.pt`` / ``OUT/stage2.pt``):

    meta        machine, versions, commit, settings
    ppl_base    perplexity of the untouched model, of STILL untrained, of sliding-window softmax only
    equivalence cached decoding vs full recomputation on the real model (max |logit difference|)
    stage1      attention transfer (NP-Maps + g_proj against the teacher's softmax attention)
    stage2      LoRA fine-tuning; the merged STILL model is saved to OUT/still
    ppl_still   perplexity of trained STILL: default ratio (top-4 of 64), two other ratios, plain linear
    generation  greedy generation agreement with the untouched model over a fixed prompt set
    decode      time per decoded token and cache bytes vs context length (KV cache vs STILL state);
                ``decode_partial`` holds the lengths measured so far while it runs

equivalence and decode run on a freshly linearized model: what they measure does not depend on the
values the NP-Maps learn.

    python scripts/still/real_model.py --out runs/still-real --train runs/still-real/pydoc/train.txt \\
        --val runs/still-real/pydoc/val.txt

Every perplexity uses the same held-out blocks (the first ``--eval-blocks`` blocks of ``--val``, never
trained on); ``scripts/still/real_model_report.py`` turns the JSON into docs/results/still.md's section.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# A fixed prompt set: instruction-style questions (the model is an instruct model) and openings of
# held-out documentation pages (added at run time from the validation text).
PROMPTS = [
    "The capital of France is",
    "Here is a short explanation of what a Python list is:",
    "Question: What is the boiling point of water at sea level?\nAnswer:",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "The three primary colours are",
]


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {msg}", flush=True)


def save_results(path: Path, results: dict) -> None:
    from mirrorla.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(results, indent=1).encode())


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def meta(args) -> dict:
    import transformers

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {torch.get_num_threads()} torch thread(s)",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": args.model,
        "weights": "GGUF Q4_1 (4-bit) values dequantised to fp32, not the bf16 release",
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }


def perplexity_entry(model, blocks, label: str) -> dict:
    from mirrorla.still.train import perplexity

    t0, c0 = time.perf_counter(), time.process_time()
    result = perplexity(model, blocks, progress=False)
    result["cpu_seconds"] = time.process_time() - c0
    cfg = getattr(model, "still_config", None)
    result["still"] = None if cfg is None else cfg.to_dict()
    log(f"  {label}: ppl {result['ppl']:.3f} (nll {result['nll']:.4f}, {time.perf_counter() - t0:.0f} s)")
    return result


def with_still(model, **options):
    """A copy of a STILL model whose layers use other evaluation-time options (no new weights)."""
    from mirrorla.still.config import StillConfig
    from mirrorla.still.hf import still_layers

    other = copy.deepcopy(model)
    cfg = StillConfig.from_kwargs(**{**other.still_config.to_dict(), **options})
    for layer in still_layers(other):
        layer.still_config = cfg
    other.still_config = cfg
    return other


@torch.no_grad()
def greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def _agreement(rows: list[dict]) -> dict:
    total = sum(r["tokens"] for r in rows)
    return {
        "prompts": len(rows),
        "token_agreement": sum(r["agree"] for r in rows) / total if total else None,
        "identical": sum(r["first_divergence"] is None for r in rows),
        "mean_first_divergence": statistics.mean(
            r["tokens"] if r["first_divergence"] is None else r["first_divergence"] for r in rows
        )
        if rows
        else None,
    }


def generation(
    original, still, tokenizer, val_blocks, n_new: int, n_long: int = 4, long_tokens: int = 320, window: int = 128
) -> dict:
    """Greedy continuations of the short fixed prompts and of ``n_long`` held-out prompts of ``long_tokens``.

    While prompt + continuation fit in two chunks (``window`` tokens), STILL attends to every token
    exactly and must reproduce the original (a sanity check); the long prompts are where it differs.
    """
    prompts = [tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS]
    first_long = max(0, len(val_blocks) - n_long)
    prompts += [val_blocks[i : i + 1, :long_tokens] for i in range(first_long, len(val_blocks))]
    rows = []
    for ids in prompts:
        a = greedy(original, ids, n_new)
        b = greedy(still, ids, n_new)
        n = min(len(a), len(b))
        agree = sum(x == y for x, y in zip(a[:n], b[:n], strict=True))
        first = next((i for i in range(n) if a[i] != b[i]), None)
        rows.append(
            {
                "prompt": tokenizer.decode(ids[0]),
                "prompt_tokens": ids.shape[1],
                "beyond_window": ids.shape[1] + n_new > window,
                "original": tokenizer.decode(a),
                "still": tokenizer.decode(b),
                "tokens": n,
                "agree": agree,
                "first_divergence": first,
            }
        )
        log(f"  prompt {len(rows)} ({ids.shape[1]} tokens): {agree}/{n} tokens agree, first divergence {first}")
    return {
        "new_tokens": n_new,
        "window": window,
        "rows": rows,
        "long": _agreement([r for r in rows if r["beyond_window"]]),
        "short": _agreement([r for r in rows if not r["beyond_window"]]),
    }


def cache_bytes(cache) -> int:
    from mirrorla.still.hf import StillCacheLayer

    total = 0
    for layer in cache.layers:
        if isinstance(layer, StillCacheLayer):
            total += layer.state.nbytes() if layer.state is not None else 0
        elif getattr(layer, "keys", None) is not None:
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def cache_kwarg(model, cache) -> dict:
    from mirrorla.still.hf import cache_kwargs

    return cache_kwargs(model, cache)


@torch.no_grad()
def decode_cost(model, ids: torch.Tensor, n_decode: int) -> dict:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    # CPU time of this (one-thread) process as well as wall time: on a shared machine the wall time
    # includes waiting for a core, the CPU time does not.
    t0, c0 = time.perf_counter(), time.process_time()
    out = model(input_ids=ids, **cache_kwarg(model, cache), use_cache=True, logits_to_keep=1)
    prefill, prefill_cpu = time.perf_counter() - t0, time.process_time() - c0
    token = out.logits[:, -1:].argmax(-1)
    times, cpu_times = [], []
    for _ in range(n_decode):
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(input_ids=token, **cache_kwarg(model, cache), use_cache=True)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        token = out.logits[:, -1:].argmax(-1)
    return {
        "length": ids.shape[1],
        "prefill_s": prefill,
        "prefill_cpu_s": prefill_cpu,
        "decode_ms_per_token": 1e3 * statistics.median(times),
        "decode_cpu_ms_per_token": 1e3 * statistics.median(cpu_times),
        "cache_mib": cache_bytes(cache) / 2**20,
    }


def crossover(rows: list[dict], key: str) -> int | None:
    """The shortest measured length from which STILL's ``key`` stays below softmax's, or None."""
    by_length = {}
    for row in rows:
        by_length.setdefault(row["length"], {})[row["model"]] = row[key]
    lengths = sorted(by_length)
    for i, n in enumerate(lengths):
        if all(by_length[m]["still"] < by_length[m]["softmax"] for m in lengths[i:]):
            return n
    return None


@torch.no_grad()
def equivalence(model, ids: torch.Tensor, prefill: int) -> dict:
    from transformers import DynamicCache

    full = model(input_ids=ids, use_cache=False).logits
    cache = DynamicCache(config=model.config)
    parts = [model(input_ids=ids[:, :prefill], **cache_kwarg(model, cache), use_cache=True).logits]
    for t in range(prefill, ids.shape[1]):
        parts.append(model(input_ids=ids[:, t : t + 1], **cache_kwarg(model, cache), use_cache=True).logits)
    diff = (torch.cat(parts, 1) - full).abs().max().item()
    return {
        "tokens": ids.shape[1],
        "prefill": prefill,
        "max_abs_logit_diff": diff,
        "logit_scale": full.abs().max().item(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="short name, HF folder or .gguf file")
    p.add_argument("--train", required=True, help="training text (.txt/.jsonl/folder)")
    p.add_argument("--val", required=True, help="held-out text, never trained on")
    p.add_argument("--out", required=True, help="run folder (results.json, checkpoints, the STILL model)")
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--train-blocks", type=int, default=400, help="training blocks tokenised (cap)")
    p.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks for perplexity")
    p.add_argument("--stage1-steps", type=int, default=24)
    p.add_argument("--stage2-steps", type=int, default=12)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--ratios", default="4,2,8", help="top-k per 64-token chunk: default first, then the others")
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--lengths", default="1024,2048,4096,8192", help="context lengths of the decode-cost run")
    p.add_argument("--decode", type=int, default=8, help="decoded tokens per length (median time reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated stages to run (default: all missing)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from mirrorla.still.data import read_texts, token_blocks
    from mirrorla.still.hf import linearize, load_linearized, save_linearized
    from mirrorla.still.pretrained import load_pretrained
    from mirrorla.still.train import LinearizeConfig, attention_transfer, lora_finetune

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    only = None if args.only is None else set(args.only.split(","))

    section_start = [time.perf_counter(), time.process_time()]

    def start_section() -> None:
        section_start[:] = [time.perf_counter(), time.process_time()]

    def todo(stage: str) -> bool:
        start_section()
        return stage not in results and (only is None or stage in only)

    def done(stage: str, value: dict) -> None:
        wall, cpu = time.perf_counter() - section_start[0], time.process_time() - section_start[1]
        results[stage] = value | {"section_seconds": wall, "section_cpu_seconds": cpu}
        save_results(path, results)

    t_start = time.perf_counter()
    original, tokenizer = load_pretrained(args.model, progress=True)
    original.eval()
    val = token_blocks(read_texts(args.val), tokenizer, args.block_size, args.eval_blocks)
    train = token_blocks(read_texts(args.train), tokenizer, args.block_size, args.train_blocks)
    log(
        f"model {args.model}: {sum(p.numel() for p in original.parameters()) / 1e6:.1f} M parameters; "
        f"train {tuple(train.shape)}, held-out {tuple(val.shape)} blocks"
    )
    if "meta" not in results:
        done(
            "meta",
            meta(args) | {"train_blocks": len(train), "eval_blocks": len(val), "eval_tokens": val[:, 1:].numel()},
        )
    else:  # a resumed run: record the code it ran with
        results["meta"].setdefault("resumed", []).append({"commit": git_commit(), "date": meta(args)["date"]})
        save_results(path, results)
    ratios = [int(r) for r in args.ratios.split(",")]

    if todo("ppl_base"):
        log("perplexity: original, STILL untrained, sliding window only")
        untrained = linearize(copy.deepcopy(original), topk=ratios[0])
        window = linearize(copy.deepcopy(original), topk=0, use_linear=False)
        done(
            "ppl_base",
            {
                "original": perplexity_entry(original, val, "original"),
                "still_untrained": perplexity_entry(untrained, val, "STILL untrained"),
                "window_only": perplexity_entry(window, val, "sliding window only"),
            },
        )
        del untrained, window

    # Decoding correctness does not depend on what the NP-Maps learned (the same operations run on other
    # values), so it is checked on the freshly linearized model, before the training stages.
    untrained = linearize(copy.deepcopy(original), topk=ratios[0])
    if todo("equivalence"):
        log("cached decoding vs full recomputation on the real model (STILL, untrained maps)")
        done("equivalence", equivalence(untrained, val[:1, :200], 180))

    del untrained

    still_dir = out / "still"
    config = LinearizeConfig(
        batch_size=1, grad_accum=args.grad_accum, stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps
    )
    progress = lambda info: log(  # noqa: E731
        f"  {info['stage']} step {info['step']}/{info['steps']} loss {info['loss']:.4g} "
        f"elapsed {info['elapsed_s']:.0f} s, ETA {info['eta_s']:.0f} s"
    )
    if not (still_dir / "still_config.json").is_file() and (only is None or "stage1" in only or "stage2" in only):
        start_section()
        model = linearize(copy.deepcopy(original), topk=ratios[0])
        t0 = time.perf_counter()
        log(f"stage 1: {config.stage1_steps} steps x {config.grad_accum} block(s) of {args.block_size} tokens")
        losses1 = attention_transfer(
            model, train, config, progress=False, checkpoint=out / "stage1.pt", on_step=progress
        )
        t1 = time.perf_counter()
        if "stage1" not in results:
            done("stage1", {"steps": len(losses1), "losses": losses1, "seconds_this_run": t1 - t0})
        log(f"stage 2: {config.stage2_steps} steps")
        start_section()
        model, losses2 = lora_finetune(
            model, train, config, progress=False, checkpoint=out / "stage2.pt", on_step=progress
        )
        done("stage2", {"steps": len(losses2), "losses": losses2, "seconds_this_run": time.perf_counter() - t1})
        save_linearized(model, still_dir, tokenizer)
        del model
    if not (still_dir / "still_config.json").is_file():
        log("no trained STILL model yet; stopping")
        return 0
    still = load_linearized(still_dir).eval()

    if todo("ppl_still"):
        log("perplexity: trained STILL at each ratio, plain linear attention")
        variants = [(f"topk{k}", dict(topk=k), f"STILL top-{k}/64") for k in ratios]
        variants.append(("plain_linear", dict(use_softmax=False), "plain linear"))
        entries = results.get("ppl_still_partial", {})  # variants finished by an earlier, stopped run
        for key, options, label in variants:
            if key not in entries:
                entries[key] = perplexity_entry(with_still(still, **options), val, label)
                results["ppl_still_partial"] = entries
                save_results(path, results)
        results.pop("ppl_still_partial", None)
        done("ppl_still", entries)

    if todo("generation"):
        log(f"greedy generation, {args.gen_tokens} new tokens per prompt")
        window = 2 * still.still_config.chunk_size
        done("generation", generation(original, still, tokenizer, val, args.gen_tokens, window=window))

    # Decoding cost does not depend on what the NP-Maps learned (the same operations run on other values);
    # it is measured last, on a freshly linearized model, as the longest stage.
    fresh = linearize(copy.deepcopy(original), topk=ratios[0])
    if todo("decode"):
        lengths = [int(n) for n in args.lengths.split(",")]
        text = token_blocks(read_texts(args.val), tokenizer, max(lengths), 1)
        rows = []
        for n in lengths:
            for name, model in (("softmax", original), ("still", fresh)):
                row = decode_cost(model, text[:, :n], args.decode) | {"model": name}
                rows.append(row)
                partial = {"rows": rows, "decode_tokens": args.decode, "complete": False}
                results["decode_partial"] = partial  # kept if the run stops before the last length
                save_results(path, results)
                log(
                    f"  {name} {n}: prefill {row['prefill_s']:.1f} s, {row['decode_ms_per_token']:.1f} ms/token "
                    f"(CPU {row['prefill_cpu_s']:.1f} s, {row['decode_cpu_ms_per_token']:.1f} ms), "
                    f"cache {row['cache_mib']:.2f} MiB"
                )
        done(
            "decode",
            {
                "rows": rows,
                "decode_tokens": args.decode,
                "crossover_time": crossover(rows, "decode_ms_per_token"),
                "crossover_cpu_time": crossover(rows, "decode_cpu_ms_per_token"),
                "crossover_memory": crossover(rows, "cache_mib"),
            },
        )
        results.pop("decode_partial", None)
        save_results(path, results)

    results["meta"]["seconds_last_run"] = time.perf_counter() - t_start
    save_results(path, results)
    log(f"done; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
