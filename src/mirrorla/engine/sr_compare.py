"""``mirrorla sr compare``: the same SR network, budget and seeds for every attention; bicubic as the floor.

For each (attention, seed) the job trains the SR network with :func:`mirrorla.engine.train` (task
``super_resolution``), then scores every whole test image in one pass (PSNR/SSIM on Y, border = scale;
:func:`mirrorla.engine.sr.evaluate_images`) and writes the run's ``result.json``. With ``resume``, finished
runs with the same settings and data are reused, as in ``mirrorla compare`` (the run folders, their
checks and the worker processes are that command's). After training, with the seed-0 network of every
attention: latency of one forward pass on the largest test image (whole image, no tiling; the
attentions take turns over rounds, median), then its peak memory, then the figures. Outputs in the folder:

- ``results.md``: the table (mean ± std over seeds of the test-set mean PSNR and SSIM, PSNR per test
  image, params, MACs, latency, peak memory) and the bicubic row;
- ``results.json``: every number, per image and seed, the configuration, data files and machine;
- ``crops.png`` (HR, bicubic and each attention on a crop of every test image) and ``psnr_vs_latency.png``;
- ``runs/<attention>/seed<k>/``: each run's metrics, checkpoint and ``result.json``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mirrorla.engine import compare as _cmp
from mirrorla.engine.checkpoint import write_result_json
from mirrorla.engine.config import CompareConfig, TrainConfig, quick_note
from mirrorla.engine.model import count_macs, count_params
from mirrorla.engine.sr import evaluate_images, load_trained_sr, mean_scores, upscale
from mirrorla.engine.trainer import describe_provenance, environment_summary, train

__all__ = ["run_sr_compare", "format_sr_table", "MAC_SIZE"]

#: Sub-folder of a run folder with its outputs on the whole test images (PNG).
SR_IMAGES = "sr_images"
#: LR side at which MACs are counted (softmax's explicit attention matrix must fit in memory).
MAC_SIZE = 64


def _test_pairs(cfg: TrainConfig, info) -> list:
    from mirrorla.data.sr import load_pairs

    return load_pairs(info.eval_source, "test", cfg.scale, cfg.degradation)


def _run_one(cfg: TrainConfig, datasets) -> dict[str, Any]:
    """Train one run, score the whole test images, write its ``result.json``."""
    t0 = time.perf_counter()
    out = train(cfg, datasets, label=_cmp.run_label(cfg))
    history, model = out["history"], out["model"].eval()
    _cmp._say(f"{_cmp.run_label(cfg)} scoring the whole test images (one pass each)")
    rows = evaluate_images(model, _test_pairs(cfg, datasets[2]), cfg.scale, save_dir=Path(cfg.out_dir) / SR_IMAGES)
    test = mean_scores(rows)
    result = {
        "result_key": cfg.result_key(),
        "epochs": cfg.epochs,
        "test_psnr": test["psnr"],
        "test_ssim": test["ssim"],
        "test_images": rows,
        "final_crop_psnr": history[-1]["eval_psnr"],
        "curve_crop_psnr": [h["eval_psnr"] for h in history],
        "curve_train_loss": [h.get("train_loss") for h in history],
        "train_img_s": _cmp.median_known(h.get("train_img_s") for h in history),
        "wall_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "data_files": list(datasets[2].files),
        "provenance": out["provenance"],
        "summary": f"test PSNR {test['psnr']:.2f} dB, SSIM {test['ssim']:.4f}",
    }
    write_result_json(Path(cfg.out_dir) / "result.json", result)
    return result


def run_sr_compare(cc: CompareConfig, latency_rounds: int = 3) -> dict[str, Any]:
    """Run the SR comparison of ``cc`` (``cc.base.task`` must be ``super_resolution``); returns results.json."""
    from mirrorla.tasks import create_task

    if cc.base.task != "super_resolution":
        raise ValueError(f"run_sr_compare needs a super_resolution base configuration, got task {cc.base.task!r}")
    # Checkpoints always: the efficiency measurements and figures use each attention's trained seed-0 network.
    cc = dataclasses.replace(cc, base=cc.base.replace(save_checkpoints=True, keep_checkpoints=1))
    base = cc.base
    out = _cmp.start_job(cc)
    t_start = time.perf_counter()
    datasets = create_task(base.task, base).build_datasets(base)
    info = datasets[2]
    pairs = _test_pairs(base, info)
    methods = _cmp.train_runs(cc, out, datasets, _run_one, "sr compare")
    results: dict[str, Any] = {
        "attentions": list(cc.attentions),
        "seeds": list(cc.seeds),
        "preset": cc.preset,
        "config": base.to_dict(),
        "dataset": info.__dict__,
        "environment": environment_summary(),
        "bicubic": _summarise_rows(evaluate_images(None, pairs, base.scale)),
        "methods": methods,
    }
    for m in methods.values():
        _summarise(m)
    _efficiency(cc, out, results, pairs, latency_rounds)
    results["wall_s"] = time.perf_counter() - t_start
    _write(out, results, pairs)
    return results


def _summarise_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"images": rows, **mean_scores(rows)}


def _summarise(method: dict[str, Any]) -> None:
    runs = list(method["runs"].values())
    for key in ("psnr", "ssim"):
        method[f"{key}_mean"], method[f"{key}_std"] = _cmp._mean_std([r[f"test_{key}"] for r in runs])
    names = [row["image"] for row in runs[0]["test_images"]]
    method["psnr_per_image"] = {
        n: statistics.fmean(r["test_images"][i]["psnr"] for r in runs) for i, n in enumerate(names)
    }
    method["train_img_s"] = _cmp.median_known(r["train_img_s"] for r in runs)


def _seed0_folder(cc: CompareConfig, out: Path, name: str) -> Path:
    return Path(_cmp._run_config(cc, out, name, cc.seeds[0]).out_dir)


def _bar(total: int, what: str, enabled: bool):
    """A progress bar (stderr) over the ``total`` whole-image forward passes of a phase; None when disabled."""
    if not enabled:
        return None
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="pass", file=sys.stderr, dynamic_ncols=True, leave=False)


def _step(bar, name: str) -> None:
    if bar is not None:
        bar.set_postfix_str(name, refresh=False)
        bar.update(1)


def _efficiency(cc: CompareConfig, out: Path, results: dict[str, Any], pairs, rounds: int) -> None:
    """Params, MACs at :data:`MAC_SIZE`², latency and peak memory on the largest test image (seed-0 nets)."""
    from mirrorla.bench.memory import exact_cpu_accounting, measure_peak_memory

    largest = max(pairs, key=lambda p: p.lr.shape[1] * p.lr.shape[2])
    models = {name: load_trained_sr(_seed0_folder(cc, out, name))[0] for name in cc.attentions}
    x = largest.lr
    tokens = x.shape[1] * x.shape[2]
    _cmp._say(
        f"[sr compare] timing each network on the whole image {largest.name} ({tokens:,} tokens per attention "
        f"layer): 1 warm-up, {rounds} timed and 1 memory pass per attention (softmax's take minutes each)"
    )
    bar = _bar(len(models) * (rounds + 2), "whole-image timing", cc.progress)
    for name, model in models.items():
        m = results["methods"][name]
        m["params"] = count_params(model)
        m["macs"], m["mac_counter"] = count_macs(model, 3, MAC_SIZE)
        upscale(model, x)  # warm-up
        _step(bar, name)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):  # the attentions take turns, so load changes do not favour one of them
        for name, model in models.items():
            t0 = time.perf_counter()
            upscale(model, x)
            times[name].append(time.perf_counter() - t0)
            _step(bar, name)
    exact = exact_cpu_accounting()  # after all timings: it makes allocation slower
    for name, model in models.items():
        m = results["methods"][name]
        m["latency_s"] = statistics.median(times[name])
        m["latency_rounds_s"] = times[name]
        m["peak_memory_bytes"] = measure_peak_memory(lambda model=model: _discard(upscale(model, x)), "cpu")
        _step(bar, name)
    if bar is not None:
        bar.close()
    results["efficiency_protocol"] = (
        f"seed-0 network of each attention, one forward pass on the whole test image {largest.name} "
        f"(LR {tuple(largest.lr.shape[1:])}, {largest.lr.shape[1] * largest.lr.shape[2]} tokens per attention), "
        f"batch 1, no tiling; 1 warm-up, then {rounds} rounds with the attentions taking turns, median; "
        f"{torch.get_num_threads()} threads. Peak memory: the process's resident-set high-water mark during "
        f"one forward{'' if exact else ' (approximate: allocator not switched to exact accounting)'}. "
        f"MACs at {MAC_SIZE}×{MAC_SIZE} LR input."
    )


def _discard(_: object) -> None:
    """Drop a result inside the measured call (measure_peak_memory wants a call that returns nothing)."""


def _fmt_mean_std(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_sr_table(results: dict[str, Any]) -> str:
    """The Markdown table: one row per attention and the bicubic floor."""
    images = list(results["bicubic"]["images"])
    names = [r["image"] for r in images]
    n = len(results["seeds"])
    head = (
        f"| method | PSNR-Y dB (mean ± std, {n} seed{'s' * (n > 1)}) | SSIM-Y | "
        + " | ".join(names)
        + " | params | MACs | latency s | peak memory MB |"
    )
    lines = [head, "|---" + "|---:" * (len(names) + 6) + "|"]
    bic = results["bicubic"]
    lines.append(
        f"| bicubic | {bic['psnr']:.2f} | {bic['ssim']:.4f} | "
        + " | ".join(f"{r['psnr']:.2f}" for r in images)
        + " | – | – | – | – |"
    )
    for name, m in results["methods"].items():
        mem = m.get("peak_memory_bytes")
        lines.append(
            f"| {name} | {_fmt_mean_std(m['psnr_mean'], m['psnr_std'], 2)} | "
            f"{_fmt_mean_std(m['ssim_mean'], m['ssim_std'], 4)} | "
            + " | ".join(f"{m['psnr_per_image'][k]:.2f}" for k in names)
            + f" | {_cmp._human(m['params'])} | {_cmp._human(m['macs'])} | {m['latency_s']:.2f} | "
            f"{'–' if mem is None else format(mem / 2**20, '.0f')} |"
        )
    return "\n".join(lines)


def _write(out: Path, results: dict[str, Any], pairs) -> None:
    cfg, info, env = results["config"], results["dataset"], results["environment"]
    header = (
        f"Super-resolution ×{cfg['scale']} ({cfg['degradation']} bicubic degradation), data {info['name']}: "
        f"{len(info['train_images'])} training images, test images {', '.join(info['eval_images'])} (whole, one "
        f"pass). Model {cfg['model']}; {cfg['epochs']} epochs of {info['train_size']} random {info['patch']}² LR "
        f"patches, batch {cfg['batch_size']}, AdamW lr {cfg['lr']}, seeds {results['seeds']}. PSNR/SSIM on Y "
        f"(BT.601), 8-bit output, {cfg['scale']} border pixels cropped; per-image columns: PSNR, mean over seeds. "
        f"Machine: {env['cpu_count']} CPUs, torch {env['torch']}, {describe_provenance(env)}. "
        f"Efficiency: {results['efficiency_protocol']}"
    )
    from mirrorla.engine.sr_figures import plot_crops, plot_psnr_latency

    seed = results["seeds"][0]
    outputs = {
        name: [out / "runs" / name / f"seed{seed}" / SR_IMAGES / f"{p.name}.png" for p in pairs]
        for name in results["methods"]
    }
    with _cmp.results_lock(out):  # one writer of the folder's results files at a time
        _cmp.write_results(out, header, format_sr_table(results), results, quick_note("sr compare", results["preset"]))
        plot_psnr_latency(out / "psnr_vs_latency.png", results)
        plot_crops(out / "crops.png", pairs, cfg["scale"], outputs)
