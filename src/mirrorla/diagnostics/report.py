"""The files of ``mirrorla analyze``: ``analysis.json`` (every number), PNG figures and ``summary.md``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from mirrorla.diagnostics.analyze import HEAD_MEASURES, PCA_MAPS
from mirrorla.engine.checkpoint import atomic_write_bytes, save_figure

__all__ = ["write_report", "summary_markdown", "FIGURES"]

FIGURES = ("attention_maps.png", "pca.png", "measures.png")

#: Column titles of the summary table.
_TITLES = {
    "entropy": "entropy (nats)",
    "entropy_norm": "entropy / log M",
    "top1_mass": "top-1 mass",
    "topk_mass": "top-k mass",
    "attention_distance": "attn. distance",
    "effective_rank": "eff. rank",
    "discarded_energy_q": "discarded q",
    "discarded_energy_k": "discarded k",
    "dead_dims_q": "dead dims q",
    "dead_dims_k": "dead dims k",
    "rank_correlation": "rank corr.",
    "empty_rows": "empty rows",
}


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def summary_markdown(result: dict[str, Any], header: str) -> str:
    """The Markdown summary: one row per layer (mean over heads), then the PCA view's numbers."""
    lines = [f"# Attention diagnostics\n\n{header}\n"]
    settings = result["settings"]
    lines.append(
        f"Mean over heads, pooled over the inputs; {settings['queries']} sampled queries per input and head, "
        f"top-k = ⌈{settings['topk_fraction']:g}·M⌉ keys. Definitions: docs/analysis.md. "
        "– = not defined for this attention.\n"
    )
    columns = list(HEAD_MEASURES)
    lines.append("| layer | method | tokens | " + " | ".join(_TITLES[c] for c in columns) + " |")
    lines.append("|---|---|---:|" + "---:|" * len(columns))
    for layer in result["layers"]:
        cells = [_fmt(layer["mean"][c]) for c in columns]
        lines.append(f"| {layer['layer']} | {layer['method']} | {layer['tokens']} | " + " | ".join(cells) + " |")
    cells = [_fmt(result["mean"][c]) for c in columns]
    lines.append("| **all layers** | | | " + " | ".join(cells) + " |")
    lines.append(
        "\nPCA view (MirrorLA Fig. 1): softmax(φ(Q)φ(K)ᵀ/√D) of the first input, head 0, for φ = identity, "
        "ReLU and the layer's own map; share of variance on the first two principal components "
        "(PC1 + PC2) and the effective rank of that matrix.\n"
    )
    lines.append("| layer | " + " | ".join(f"{m}: PC1+PC2 | {m}: eff. rank" for m in PCA_MAPS) + " |")
    lines.append("|---|" + "---:|" * (2 * len(PCA_MAPS)))
    for layer in result["layers"]:
        if layer["pca"] is None:
            continue
        cells = []
        for name in PCA_MAPS:
            m = layer["pca"]["maps"][name]
            cells += [_fmt(sum(m["explained_variance"])), _fmt(m["effective_rank"])]
        lines.append(f"| {layer['layer']} | " + " | ".join(cells) + " |")
    if result["skipped"]:
        lines.append("\nNot measured: " + "; ".join(f"{s['layer']} ({s['reason']})" for s in result["skipped"]))
    rank_methods = sorted({m for layer in result["layers"] for m in layer["effective_rank_method"]})
    lines.append(f"\nEffective rank: {', '.join(rank_methods)}.")
    return "\n".join(lines) + "\n"


def write_report(
    result: dict[str, Any],
    out_dir: str | os.PathLike,
    header: str = "",
    image: Tensor | None = None,
    figures: bool = True,
) -> list[Path]:
    """Write ``analysis.json``, ``summary.md`` and (``figures``) the PNGs into ``out_dir``; returns the paths.

    ``image``: the first input as (C, H, W) in [0, 1] (or any range: it is rescaled), shown beside the
    attention maps.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in result.items() if k != "figures"}
    data["header"] = header
    written = [out / "analysis.json", out / "summary.md"]
    atomic_write_bytes(written[0], json.dumps(data, indent=2).encode())
    atomic_write_bytes(written[1], summary_markdown(result, header).encode())
    if figures:
        written += _plot(result, out, image)
    return written


def _plot(result: dict[str, Any], out: Path, image: Tensor | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    figs = result["figures"]
    with_maps = [(name, f) for name, f in figs.items() if f["maps"] is not None]
    if with_maps:
        points = with_maps[0][1]["points"]
        cols = len(points) + (1 if image is not None else 0)
        fig, axes = plt.subplots(len(with_maps), cols, figsize=(2.6 * cols, 2.2 * len(with_maps)), squeeze=False)
        for row, (name, f) in enumerate(with_maps):
            start = 0
            if image is not None:
                _show_image(axes[row][0], image, f["grid"], f["points"])
                axes[row][0].set_ylabel(name, fontsize=7)
                start = 1
            for j, (r, c) in enumerate(f["points"]):
                ax = axes[row][start + j]
                im = ax.imshow(f["maps"][j].numpy(), cmap="viridis")
                # Each map is scaled to its own range: the bar says how much a near-uniform map really varies.
                bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
                bar.ax.tick_params(labelsize=5)
                bar.formatter.set_powerlimits((-2, 2))
                bar.update_ticks()
                bar.ax.yaxis.get_offset_text().set_fontsize(5)
                ax.plot([c], [r], marker="x", color="red", markersize=6)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"query ({r}, {c})", fontsize=8)
                if image is None and j == 0:
                    ax.set_ylabel(name, fontsize=7)
        fig.suptitle(
            "attention of query tokens over the grid (head mean, first input; colour bar: attention weight)", fontsize=9
        )
        fig.tight_layout()
        written.append(out / "attention_maps.png")
        save_figure(fig, written[-1], dpi=110)
    with_pca = [(name, f) for name, f in figs.items() if f["pca"] is not None]
    if with_pca:
        fig, axes = plt.subplots(
            len(with_pca), len(PCA_MAPS), figsize=(2.6 * len(PCA_MAPS), 2.4 * len(with_pca)), squeeze=False
        )
        for row, (name, f) in enumerate(with_pca):
            tokens = f["pca"]["queries"]
            for j, map_name in enumerate(PCA_MAPS):
                m = f["pca"]["maps"][map_name]
                xy = m["coords"].numpy()
                ax = axes[row][j]
                ax.scatter(xy[:, 0], xy[:, 1], c=tokens, cmap="viridis", s=8)
                share = sum(m["explained_variance"])
                ax.set_title(f"{map_name}: PC1+2 {share:.2f}, rank {m['effective_rank']:.1f}", fontsize=7)
                ax.tick_params(labelsize=6)
                if j == 0:
                    ax.set_ylabel(name, fontsize=7)
        fig.suptitle("PCA of softmax(φ(Q)φ(K)ᵀ/√D) rows, colour = token index (first input, head 0)", fontsize=9)
        fig.tight_layout()
        written.append(out / "pca.png")
        save_figure(fig, written[-1], dpi=110)
    written.append(out / "measures.png")
    _plot_measures(result, written[-1], plt)
    return written


def _show_image(ax, image: Tensor, grid, points) -> None:
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray")
    else:
        ax.imshow(img[:3].permute(1, 2, 0).numpy())
    if grid is not None:
        sy, sx = img.shape[1] / grid[0], img.shape[2] / grid[1]
        for r, c in points:
            ax.plot([(c + 0.5) * sx], [(r + 0.5) * sy], marker="x", color="red", markersize=6)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_measures(result: dict[str, Any], path: Path, plt) -> None:
    shown = ("entropy_norm", "topk_mass", "effective_rank", "discarded_energy_q", "dead_dims_q", "rank_correlation")
    layers = result["layers"]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 2.6))
    x = list(range(len(layers)))
    for ax, name in zip(axes, shown, strict=True):
        for h in range(max(len(layer["heads"]) for layer in layers)):
            ys = [layer["heads"][h][name] if h < len(layer["heads"]) else None for layer in layers]
            ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o", markersize=3, label=f"head {h}")
        ax.set_title(_TITLES[name], fontsize=8)
        ax.set_xlabel("layer", fontsize=7)
        ax.set_xticks(x)  # layers are whole numbers: no 0.5 ticks
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_comparison_figure(rows: list[dict[str, Any]], data: dict[str, Any], path: str | os.PathLike) -> Path:
    """``comparison.png`` of ``mirrorla analyze <comparison>``: the score against each measure that has a rank
    correlation with it (not constant across the attentions), one panel each; a small dot per analysed run, a
    labelled marker per attention (the means of ``data``, :func:`~mirrorla.diagnostics.runs.comparison_table`),
    and Spearman's ρ across the attentions in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [m for m, c in data["correlation_with_score"].items() if c["spearman"] is not None]
    if not measures:
        raise ValueError(
            "no measure has a rank correlation with the score (it needs 3 attentions with both, and a measure "
            "that is not the same for all of them)"
        )
    cols = min(4, len(measures))
    nrows = -(-len(measures) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.7 * nrows), squeeze=False)
    label = data["score_label"]
    colours, markers = plt.get_cmap("tab10"), "osD^vP*X"
    names = list(data["attentions"])
    for i, measure in enumerate(measures):
        ax = axes[i // cols][i % cols]
        for j, name in enumerate(names):
            runs = [r for r in rows if r["attention"] == name and r["score"] is not None]
            xs = [r["mean"].get(measure) for r in runs]
            pts = [(x, r["score"]) for x, r in zip(xs, runs, strict=True) if x is not None]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=8, color=colours(j % 10), alpha=0.45, linewidths=0)
            entry = data["attentions"][name]
            if entry[measure] is not None and entry["score"] is not None:
                # Names go into one legend below the panels: written beside close points they overlap.
                ax.scatter([entry[measure]], [entry["score"]], s=30, color=colours(j % 10), marker=markers[j % 8],
                           edgecolors="black", linewidths=0.5, label=name)  # fmt: skip
        c = data["correlation_with_score"][measure]
        ax.set_title(f"{_TITLES.get(measure, measure)}: ρ = {c['spearman']:+.2f} (n = {c['attentions']})", fontsize=8)
        ax.tick_params(labelsize=6)
        if i % cols == 0:
            ax.set_ylabel(label, fontsize=7)
    for k in range(len(measures), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"{label} against each measure (model means; small dots: runs, large: attention means)", fontsize=9)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    labels = list(handles)
    fig.tight_layout()
    fig.legend([handles[n] for n in labels], labels, loc="lower center", ncol=min(5, len(labels)), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, -0.05 - 0.035 * (-(-len(labels) // 5))))  # fmt: skip
    out = Path(path)
    save_figure(fig, out, dpi=110, bbox_inches="tight")
    return out
