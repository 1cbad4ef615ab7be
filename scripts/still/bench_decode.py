"""Prefill and per-token decode cost of a softmax model (KV cache) and its STILL version (StillState).

For every prompt length N, each model runs in a fresh subprocess (so peak memory is its own): prefill
N tokens into a cache (logits of the last position only), then greedy-decode ``--decode`` tokens one
by one. Reported: prefill seconds, median seconds per decoded token, bytes held by the cache after
decoding (KV tensors, or the STILL state: selected tokens + ≤ 2 chunks + linear state), and the peak
resident-memory increase of the process over its level after loading the model.

    python scripts/still/bench_decode.py --softmax runs/still/base --still runs/still/still \
        --lengths 1024,2048,4096,8192,16384 --decode 32 --threads 1 --json runs/still/bench.json \
        --png runs/still/decode_cost.png

``--from-json FILE`` prints the table and draws the figure of an earlier run without measuring again.

Works on any Llama-family checkpoint folder and the STILL checkpoint made from it by ``mirrorla linearize``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


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


def measure(model_path: str, length: int, n_decode: int, threads: int, seed: int) -> dict:
    import torch
    from transformers import DynamicCache

    from mirrorla.still.cli import load_model

    torch.set_num_threads(threads)
    model = load_model(model_path)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))
    base_rss = _rss_kib()
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        t0 = time.perf_counter()
        out = model(input_ids=ids, **cache_kwarg(model, cache), use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - t0
        token = out.logits[:, -1:].argmax(-1)
        step_times = []
        for _ in range(n_decode):
            t0 = time.perf_counter()
            out = model(input_ids=token, **cache_kwarg(model, cache), use_cache=True)
            step_times.append(time.perf_counter() - t0)
            token = out.logits[:, -1:].argmax(-1)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model": model_path,
        "still": getattr(model, "still_config", None) is not None,
        "length": length,
        "prefill_s": prefill,
        "decode_ms_per_token": 1e3 * statistics.median(step_times),
        "cache_mib": cache_bytes(cache) / 2**20,
        "peak_rss_increase_mib": max(0, peak_kib - base_rss) / 1024,
        "tokens_in_cache": cache.get_seq_length(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--softmax", required=True, help="plain HF checkpoint folder")
    ap.add_argument("--still", required=True, help="STILL checkpoint folder (mirrorla linearize --out)")
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--decode", type=int, default=32, help="tokens decoded after the prefill")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--png", default=None, help="draw prefill, decode and cache curves here (needs matplotlib)")
    ap.add_argument("--from-json", default=None, help="report an earlier --json file instead of measuring")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.decode, args.threads, args.seed)
        print("RESULT " + json.dumps(result), flush=True)
        return

    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        report(saved["rows"], saved["machine"], saved["threads"], args.png)
        return

    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        for path in (args.softmax, args.still):
            cmd = [sys.executable, __file__, "--softmax", args.softmax, "--still", args.still, "--one", path]
            cmd += [str(length), "--decode", str(args.decode), "--threads", str(args.threads), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"measurement failed for {path} at {length}:\n{proc.stderr[-3000:]}")
            row = json.loads(lines[-1][len("RESULT ") :])
            rows.append(row)
            print(json.dumps(row), flush=True)

    if args.json:
        with open(args.json, "w") as f:
            from mirrorla.bench.machine import provenance

            record = {"machine": platform.platform(), "threads": args.threads, "provenance": provenance("cpu")}
            json.dump({**record, "rows": rows}, f, indent=1)
    report(rows, platform.platform(), args.threads, args.png)


def report(rows: list[dict], machine: str, threads: int, png: str | None) -> None:
    print(f"\nmachine: {machine}, threads={threads}")
    print("| tokens | model | prefill s | decode ms/token | cache MiB | peak RSS increase MiB |")
    print("|---:|---|---:|---:|---:|---:|")
    for row in rows:
        name = "STILL" if row["still"] else "softmax + KV cache"
        print(
            f"| {row['length']} | {name} | {row['prefill_s']:.2f} | {row['decode_ms_per_token']:.2f} | "
            f"{row['cache_mib']:.2f} | {row['peak_rss_increase_mib']:.0f} |"
        )
    if png:
        plot(rows, png, f"{machine}, {threads} thread(s)")


def plot(rows: list[dict], path: str, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("prefill_s", "prefill (s)"),
        ("decode_ms_per_token", "decode (ms / token)"),
        ("cache_mib", "cache after decoding (MiB)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for still, name, marker in ((False, "softmax + KV cache", "o"), (True, "STILL", "s")):
            pts = sorted((r["length"], r[key]) for r in rows if r["still"] == still)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Prefill and decode cost vs prompt length ({subtitle})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
