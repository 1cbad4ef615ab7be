"""Figures of a long-range comparison: accuracy per attention, learning curves, step cost, accuracy by length."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from mirrorla.engine.checkpoint import save_figure

__all__ = ["plot_task", "plot_accuracy_vs_length", "plot_examples"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_task(out: Path, results: dict[str, Any]) -> list[Path]:
    """``accuracy.png``, ``curves.png``, ``cost.png`` and (lengths varying) ``accuracy_by_length.png`` in ``out``."""
    plt = _pyplot()
    methods = results["methods"]
    names = list(methods)
    written = []

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
    means = [methods[n]["top1_mean"] for n in names]
    stds = [methods[n]["top1_std"] or 0.0 for n in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
    ax.axhline(results["majority_top1"], color="k", ls="--", lw=1, label="majority class")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set(ylabel="eval top-1 % (mean ± std)", title=f"{results['task']}: accuracy per attention")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(out / "accuracy.png")
    save_figure(fig, written[-1], dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in names:
        runs = list(methods[n]["runs"].values())
        steps = runs[0]["curve_steps"]
        curve = [statistics.fmean(r["curve_top1"][i] for r in runs) for i in range(len(steps))]
        ax.plot(steps, curve, marker="o", label=n)
    ax.axhline(results["majority_top1"], color="k", ls="--", lw=1, label="majority class")
    ax.set(xlabel="training step", ylabel="eval top-1 % (mean over seeds)", title=f"{results['task']}: learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    written.append(out / "curves.png")
    save_figure(fig, written[-1], dpi=120)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(names) + 2), 4))
    a1.bar(range(len(names)), [methods[n]["step_s"] for n in names], color="tab:orange")
    a1.set(ylabel="seconds per training step", title="time per step")
    mem = [(methods[n].get("peak_memory_bytes") or 0) / 2**20 for n in names]
    a2.bar(range(len(names)), mem, color="tab:green")
    a2.set(ylabel="peak MB per training step", title="memory per step")
    for a in (a1, a2):
        a.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        a.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{results['task']}: cost of one training step")
    fig.tight_layout()
    written.append(out / "cost.png")
    save_figure(fig, written[-1], dpi=120)

    if any(r["by_length"] for m in methods.values() for r in m["runs"].values()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for n in names:
            rows = _pooled_buckets([row for r in methods[n]["runs"].values() for row in r["by_length"]])
            ax.plot([(lo + hi) / 2 for lo, hi, _ in rows], [acc for _, _, acc in rows], marker="o", label=n)
        ax.axhline(results["majority_top1"], color="k", ls="--", lw=1, label="majority class")
        ax.set(
            xlabel="sequence length (bucket centre, tokens)",
            ylabel="eval top-1 %",
            title=f"{results['task']}: accuracy by length",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        written.append(out / "accuracy_by_length.png")
        save_figure(fig, written[-1], dpi=120)
    return written


def _pooled_buckets(rows: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """Rows {lo, hi, count, top1} of several seeds → (lo, hi, accuracy over all their examples), by bucket."""
    pooled: dict[tuple[int, int], list[float]] = {}
    for row in rows:
        acc = pooled.setdefault((row["lo"], row["hi"]), [0.0, 0.0])
        acc[0] += row["top1"] * row["count"]
        acc[1] += row["count"]
    return [(lo, hi, s / c) for (lo, hi), (s, c) in sorted(pooled.items())]


def plot_accuracy_vs_length(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Accuracy against sequence length: ListOps length buckets (one panel) and the Pathfinder sizes of the job
    (another), one line per attention."""
    plt = _pyplot()
    tasks = summary["per_task"]
    listops = [t for t in tasks if t.startswith("listops")]
    pathfinder = sorted((t for t in tasks if t.startswith("pathfinder")), key=lambda t: tasks[t]["max_len"])
    panels = [("ListOps: length buckets", listops), ("Pathfinder: image sizes", pathfinder)]
    panels = [(title, ts) for title, ts in panels if ts]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, ts) in zip(axes[0], panels, strict=True):
        for name in summary["attentions"]:
            if title.startswith("ListOps"):
                rows = _pooled_buckets(tasks[ts[0]]["methods"][name]["by_length"])
                xs, ys = [(lo + hi) / 2 for lo, hi, _ in rows], [acc for _, _, acc in rows]
            else:
                xs = [tasks[t]["max_len"] for t in ts]
                ys = [tasks[t]["methods"][name]["top1_mean"] for t in ts]
            ax.plot(xs, ys, marker="o", label=name)
        if title.startswith("Pathfinder"):
            ax.set_xscale("log", base=2)
        ax.set(xlabel="sequence length (tokens)", ylabel="eval top-1 %", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_examples(path: str | os.PathLike, dataset: Any, grid: tuple[int, int], count: int = 8) -> None:
    """The first ``count`` sequences of an image task (Pathfinder, sequential image) drawn on their pixel grid,
    each titled with its label: what the generator made."""
    import torch

    plt = _pyplot()
    count = min(count, len(dataset))
    x, y = dataset.get_batch(torch.arange(count))
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < count:
            ax.imshow(x[i].reshape(grid).numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"label {int(y[i])}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
