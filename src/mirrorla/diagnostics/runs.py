"""Diagnostics of every run of a comparison (``mirrorla analyze <compare --out folder>``), beside its accuracy.

A comparison folder holds ``runs/<attention>/seed<k>/`` (``compare``, ``sr compare``, ``lra compare``); each run
with a checkpoint is analysed on the same inputs, and one table puts the mean measures of each attention next to
its score, with the rank correlation of every measure with the score across the attentions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mirrorla.diagnostics.analyze import HEAD_MEASURES
from mirrorla.diagnostics.measures import spearman

__all__ = ["is_comparison", "comparison_runs", "comparison_table", "SCORE_KEYS"]

#: The score a run's result.json records, by task: (key, label).
SCORE_KEYS = (("final_top1", "top-1 %"), ("test_psnr", "PSNR dB"), ("final_accuracy", "accuracy %"))


def is_comparison(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a comparison's output folder (it has ``runs/<attention>/seed<k>/``)."""
    runs = Path(path) / "runs"
    return runs.is_dir() and any(runs.glob("*/seed*/config.json"))


def _score(result: dict[str, Any]) -> tuple[float | None, str]:
    for key, label in SCORE_KEYS:
        if result.get(key) is not None:
            return float(result[key]), label
    return None, "score"


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or a ValueError that names it (a truncated or hand-edited file)."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"cannot read {path}: not valid JSON ({err}); the file is truncated or corrupt: restore it, or rerun "
            "the comparison with --resume to write it again"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"cannot read {path}: expected a JSON object, got a {type(data).__name__}")
    return data


def comparison_runs(path: str | os.PathLike, seeds: list[int] | None) -> list[dict[str, Any]]:
    """The finished runs with a checkpoint: attention, seed, folder, score. Ordered by attention as in the
    comparison's results.json (else by name), then seed."""
    root = Path(path)
    order: list[str] = []
    results = root / "results.json"
    if results.is_file():
        order = list(_read_json(results).get("methods", {}))
    found = []
    for run in sorted((root / "runs").glob("*/seed*")):
        seed = run.name[4:]
        if not seed.isdigit() or (seeds is not None and int(seed) not in seeds):
            continue
        result_file = run / "result.json"
        if not result_file.is_file() or not (run / "checkpoints").is_dir():
            continue
        score, label = _score(_read_json(result_file))
        found.append(
            {"attention": run.parent.name, "seed": int(seed), "run": run, "score": score, "score_label": label}
        )
    if not found:
        raise ValueError(
            f"{root} has no finished run with a checkpoint (runs/<attention>/seed<k>/checkpoints); comparisons "
            "keep each run's last checkpoint since this version, earlier ones must be trained again"
        )
    rank = {name: i for i, name in enumerate(order)}
    found.sort(key=lambda r: (rank.get(r["attention"], len(rank)), r["attention"], r["seed"]))
    return found


def comparison_table(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of per-attention means (over the analysed seeds) of the model-mean measures and score.

    ``rows``: one per analysed run, ``{"attention", "seed", "score", "score_label", "mean": {measure: value}}``.
    """
    by_attention: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_attention.setdefault(row["attention"], []).append(row)
    label = rows[0]["score_label"]
    summary = {}
    for name, runs in by_attention.items():
        entry = {"seeds": [r["seed"] for r in runs], "score": _mean([r["score"] for r in runs])}
        entry.update({m: _mean([r["mean"].get(m) for r in runs]) for m in HEAD_MEASURES})
        summary[name] = entry
    columns = [m for m in HEAD_MEASURES if any(e[m] is not None for e in summary.values())]
    lines = [
        f"| attention | seeds | {label} | " + " | ".join(columns) + " |",
        "|---|---|---:|" + "---:|" * len(columns),
    ]
    for name, e in summary.items():
        cells = [_fmt(e[m]) for m in columns]
        seeds = ",".join(map(str, e["seeds"]))
        lines.append(f"| {name} | {seeds} | {_fmt(e['score'], 2)} | " + " | ".join(cells) + " |")
    correlations = {}
    for m in columns:
        pairs = [(e["score"], e[m]) for e in summary.values() if e["score"] is not None and e[m] is not None]
        if len(pairs) >= 3:
            x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
            y = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
            value = float(spearman(x, y))
            correlations[m] = {"spearman": None if value != value else value, "attentions": len(pairs)}
    if correlations:
        lines.append(
            f"\nSpearman rank correlation with {label} across the attentions (n = attentions with both numbers):\n"
        )
        lines.append("| measure | ρ | n |\n|---|---:|---:|")
        for m, c in correlations.items():
            lines.append(f"| {m} | {_fmt(c['spearman'], 2)} | {c['attentions']} |")
    data = {"score_label": label, "attentions": summary, "correlation_with_score": correlations}
    return "\n".join(lines) + "\n", data


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
