"""``mirrorla compare``: the same small ViT, budget and seeds for every attention; one table.

For each attention the job builds the project's small ViT (timm ``VisionTransformer`` with the
attention from the registry, :func:`mirrorla.engine.model.create_classifier`), counts parameters and
MACs, trains it once per seed with :func:`mirrorla.engine.train` and evaluates it. Inference
throughput is measured at the end, for all attentions together in interleaved rounds. It writes to the output directory:

- ``results.md``   the Markdown table (also printed): top-1 mean ± std over seeds, params, MACs,
                   training and evaluation images/s,
- ``results.json`` every number: per-seed histories, the configuration and the environment,
- ``accuracy_curves.png`` and ``accuracy_vs_throughput.png``,
- ``runs/<attention>/seed<k>/`` each run's metrics and ``result.json``; with ``--resume`` finished
  runs with the same settings are reused, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mirrorla.engine.checkpoint import atomic_write_bytes
from mirrorla.engine.config import TrainConfig
from mirrorla.engine.model import (
    check_attentions,
    count_macs,
    count_params,
    create_classifier,
    measure_throughput_rounds,
)
from mirrorla.engine.trainer import TrainingDivergedError, environment_summary, train

__all__ = ["CompareConfig", "DEFAULT_ATTENTIONS", "PRESETS", "run_compare", "format_table"]

#: Softmax, ReLU linear attention, the peer methods, MirrorLA and its ablation rows (METHODS.md §2.8).
DEFAULT_ATTENTIONS = (
    "softmax", "linear_relu", "flatten", "pola", "nala", "l2vit_lga",
    "mirror", "mirror_block", "mirror_block_var", "mirror_cross",
)  # fmt: skip

#: Budgets. ``quick`` ≈ 5 minutes on 2 CPU cores; ``default`` took 187 minutes of 1-thread run time for
#: the ten default attentions on a 2-core VM (docs/training.md: timings and how to split it into shards).
#: Model: ViT, patch 4 on 28×28 → 49 tokens + cls.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(seeds=(0,), epochs=3, train_subset=5000, eval_subset=2000),
    "default": dict(seeds=(0, 1, 2), epochs=3, train_subset=None, eval_subset=None),
}
BASE = TrainConfig(
    embed_dim=64, depth=4, num_heads=2, patch_size=4, mlp_ratio=2.0, batch_size=128, lr=1e-3, warmup_epochs=0.5,
    label_smoothing=0.1, clip_grad=1.0, save_checkpoints=False, progress=False,
)  # fmt: skip


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: ``base`` fixes everything but the attention and the seed."""

    attentions: tuple[str, ...] = DEFAULT_ATTENTIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    base: TrainConfig = field(default_factory=lambda: BASE)
    out_dir: str = "runs/compare"
    resume: bool = False
    throughput_batch: int = 128
    throughput_warmup: int = 5
    throughput_iters: int = 10
    throughput_rounds: int = 5
    preset: str = "custom"
    #: Training runs at once, each a process with ``base.threads`` (default: cores // jobs) threads.
    #: ``None`` = one per CPU core on a CPU, 1 on CUDA.
    jobs: int | None = 1

    def __post_init__(self) -> None:
        if not self.attentions:
            raise ValueError("attentions must name at least one registered attention")
        if len(set(self.attentions)) != len(self.attentions):
            raise ValueError(f"attentions contains duplicates: {self.attentions}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.jobs is not None and (not isinstance(self.jobs, int) or self.jobs < 1):
            raise ValueError(f"jobs must be a positive int or None (one per CPU core), got {self.jobs!r}")
        for name in ("throughput_batch", "throughput_warmup", "throughput_iters", "throughput_rounds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def _require(module: str, purpose: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{purpose} need the package {module}: pip install 'mirrorla[train]'", name=module)


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def run_compare(cc: CompareConfig, datasets=None) -> dict[str, Any]:
    """Run the comparison; returns the dict written to ``results.json``."""
    from mirrorla.data import build_datasets

    check_attentions(list(cc.attentions))
    _require("matplotlib", "the figures")  # fail now, not after hours of training
    base = cc.base
    if base.threads:
        torch.set_num_threads(base.threads)
    out = Path(cc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if datasets is None:
        datasets = build_datasets(
            base.dataset,
            data_dir=base.data_dir,
            image_size=base.image_size,
            augment=base.augment,
            train_subset=base.train_subset,
            eval_subset=base.eval_subset,
            download=base.download,
        )
    info = datasets[2]
    jobs = _resolve_jobs(cc)
    if jobs > 1:  # train every run in worker processes first; the loop below then reuses their results
        _train_in_parallel(cc, base, datasets, out, jobs)
    results: dict[str, Any] = {
        "preset": cc.preset,
        "attentions": list(cc.attentions),
        "seeds": list(cc.seeds),
        "config": base.to_dict(),
        "dataset": info.__dict__,
        "environment": environment_summary(),
        "throughput_protocol": (
            f"eval mode, batch {cc.throughput_batch}, {cc.throughput_warmup} warm-up forwards, then "
            f"{cc.throughput_rounds} rounds of {cc.throughput_iters} timed forwards with the attentions taking "
            f"turns, median over rounds, {torch.get_num_threads()} threads"
        ),
        "methods": {},
    }
    probes: dict[str, torch.nn.Module] = {}  # seed-0 initialisations, timed after training
    for name in cc.attentions:
        cfg = base.replace(attention=name)
        torch.manual_seed(0)
        probe = probes[name] = create_classifier(cfg, info.num_classes, info.in_chans, info.image_size)
        macs, counter = count_macs(probe, info.in_chans, info.image_size)
        method: dict[str, Any] = {
            "params": count_params(probe),
            "macs": macs,
            "mac_counter": counter,
            "eval_img_s": None,  # measured below, all attentions together
            "runs": {},
        }
        for seed in cc.seeds:
            run_cfg = cfg.replace(seed=seed, out_dir=str(out / "runs" / name / f"seed{seed}"))
            method["runs"][str(seed)] = _run_one(run_cfg, datasets, cc.resume or jobs > 1)
            _report(name, seed, method["runs"][str(seed)])
        runs = list(method["runs"].values())
        method["top1_mean"], method["top1_std"] = _mean_std([r["final_top1"] for r in runs])
        method["train_img_s"] = statistics.median(r["train_img_s"] for r in runs)
        results["methods"][name] = method
        _write_outputs(out, results)  # partial results survive an interruption
    # Inference throughput last, the attentions taking turns, so that load changes on a shared machine
    # (and the training just finished) do not favour whichever attention was timed in a quiet moment.
    rounds = measure_throughput_rounds(
        probes, info.in_chans, info.image_size, cc.throughput_batch, cc.throughput_warmup, cc.throughput_iters,
        cc.throughput_rounds,
    )  # fmt: skip
    for name, values in rounds.items():
        results["methods"][name]["eval_img_s"] = statistics.median(values)
        results["methods"][name]["eval_img_s_rounds"] = values
    results["wall_s"] = time.perf_counter() - t_start
    _write_outputs(out, results, figures=True)
    return results


def _report(name: str, seed: int, r: dict[str, Any]) -> None:
    print(f"[compare] {name} seed {seed}: top-1 {r['final_top1']:.2f}%  ({r['wall_s']:.0f} s)", flush=True)


def _resolve_jobs(cc: CompareConfig) -> int:
    if cc.jobs is not None:
        return cc.jobs
    device = cc.base.device
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, (os.cpu_count() or 1) // (cc.base.threads or 1))


def _train_in_parallel(cc: CompareConfig, base: TrainConfig, datasets, out: Path, jobs: int) -> None:
    """Train every (attention, seed) run not already finished in ``jobs`` worker processes.

    Each worker gets ``base.threads`` threads, or cores // jobs: for a model this small, separate
    1-thread processes use a CPU better than one process with many threads.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = base.threads or max(1, (os.cpu_count() or 1) // jobs)
    tasks = []
    for name in cc.attentions:
        for seed in cc.seeds:
            run_dir = str(out / "runs" / name / f"seed{seed}")
            cfg = base.replace(attention=name, seed=seed, threads=threads, out_dir=run_dir)
            if not (cc.resume and _saved_result(cfg) is not None):
                tasks.append(cfg)
    if not tasks:
        return
    print(f"[compare] training {len(tasks)} runs in {jobs} processes with {threads} thread(s) each", flush=True)
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch's thread pools
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(datasets,)) as pool:
        futures = {pool.submit(_worker_run, cfg): cfg for cfg in tasks}
        for future in as_completed(futures):
            cfg = futures[future]
            try:
                r = future.result()
            except Exception as exc:
                for f in futures:
                    f.cancel()
                # Leaving the pool waits for the runs already going; their results stay for --resume.
                msg = f"run {cfg.attention} seed {cfg.seed} failed in a worker process: {exc}"
                same_kind = isinstance(exc, (ValueError, TrainingDivergedError))  # errors the CLI reports in one line
                raise (type(exc) if same_kind else RuntimeError)(msg) from exc
            _report(cfg.attention, cfg.seed, r)


_WORKER_DATASETS = None


def _worker_init(datasets) -> None:
    global _WORKER_DATASETS
    _WORKER_DATASETS = datasets


def _worker_run(cfg: TrainConfig) -> dict[str, Any]:
    return _run_one(cfg, _WORKER_DATASETS, resume=False)


def _saved_result(cfg: TrainConfig) -> dict[str, Any] | None:
    """The finished run's ``result.json`` if it was made with exactly ``cfg``'s settings, else None."""
    path = Path(cfg.out_dir) / "result.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("result_key") != json.loads(json.dumps(cfg.result_key())) or saved.get("epochs") != cfg.epochs:
        return None
    if "threads" not in saved:  # results written before threads were recorded: the run's own config
        config = Path(cfg.out_dir) / "config.json"
        saved["threads"] = json.loads(config.read_text()).get("threads") if config.is_file() else None
    return saved


def _run_one(cfg: TrainConfig, datasets, resume: bool) -> dict[str, Any]:
    path = Path(cfg.out_dir) / "result.json"
    if resume and (saved := _saved_result(cfg)) is not None:
        return saved
    t0 = time.perf_counter()
    out = train(cfg, datasets)
    history = out["history"]
    result = {
        "result_key": cfg.result_key(),
        "epochs": cfg.epochs,
        "final_top1": history[-1]["eval_top1"],
        "best_top1": max(h["eval_top1"] for h in history),
        "final_eval_loss": history[-1]["eval_loss"],
        # Epoch 0 includes one-off start-up costs; the median over epochs is the steady rate.
        "train_img_s": statistics.median(h["train_img_s"] for h in history),
        "curve_top1": [h["eval_top1"] for h in history],
        "curve_train_loss": [h["train_loss"] for h in history],
        "wall_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
    }
    atomic_write_bytes(path, json.dumps(result, indent=2).encode())
    return result


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_table(results: dict[str, Any]) -> str:
    """The Markdown table of a ``results`` dict."""
    n_seeds = len(results["seeds"])
    lines = [
        f"| attention | top-1 % (mean ± std, {n_seeds} seed{'s' if n_seeds > 1 else ''}) | params | MACs | "
        "train img/s | eval img/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in results["methods"].items():
        acc = f"{m['top1_mean']:.2f} ± {m['top1_std']:.2f}" if m["top1_std"] is not None else f"{m['top1_mean']:.2f}"
        lines.append(
            f"| {name} | {acc} | {_human(m['params'])} | {_human(m['macs'])} | {m['train_img_s']:.0f} | "
            f"{'–' if m['eval_img_s'] is None else format(m['eval_img_s'], '.0f')} |"
        )
    return "\n".join(lines)


def _train_threads(results: dict[str, Any]) -> str:
    threads = {r.get("threads") for m in results["methods"].values() for r in m["runs"].values()}
    return ", ".join(sorted("unknown" if t is None else str(t) for t in threads)) or "–"


def _write_outputs(out: Path, results: dict[str, Any], figures: bool = False) -> None:
    cfg, info, env = results["config"], results["dataset"], results["environment"]
    header = (
        f"Dataset {info['name']} ({info['train_size']} train / {info['eval_size']} eval images, "
        f"{info['image_size']}×{info['image_size']}); ViT embed {cfg['embed_dim']}, depth {cfg['depth']}, "
        f"heads {cfg['num_heads']}, patch {cfg['patch_size']}; {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"AdamW lr {cfg['lr']}, seeds {results['seeds']}. Machine: {env['cpu_count']} CPUs, torch {env['torch']}; "
        f"training threads per run: {_train_threads(results)}. Top-1 = final-epoch accuracy on the evaluation "
        f"split. Train img/s: median over epochs, then over seeds. MACs per image: "
        f"{next(iter(results['methods'].values()))['mac_counter'] if results['methods'] else ''}. "
        f"Eval img/s: {results['throughput_protocol']}."
    )
    table = format_table(results)
    atomic_write_bytes(out / "results.md", (header + "\n\n" + table + "\n").encode())
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
    if figures:
        print("\n" + table + "\n", flush=True)
        _plot(out, results)


def _plot(out: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in results["methods"].items():
        curves = [r["curve_top1"] for r in m["runs"].values()]
        mean = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
        ax.plot(range(1, len(mean) + 1), mean, marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="eval top-1 % (mean over seeds)", title="Accuracy per epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in results["methods"].items():
        ax.errorbar(m["eval_img_s"], m["top1_mean"], yerr=m["top1_std"] or 0, fmt="o", capsize=3, label=name)
        ax.annotate(name, (m["eval_img_s"], m["top1_mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="evaluation images/s", ylabel="eval top-1 % (mean ± std)", title="Accuracy vs throughput")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_throughput.png", dpi=120)
    plt.close(fig)
