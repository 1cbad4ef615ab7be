"""Print the Markdown tables of docs/results/mirrorla-study.md from the files the study's commands wrote.

    python docs/results/mirrorla-study/tables.py runs/study > tables.md

Reads ``<study>/<folder>/results.json`` of each ``mirrorla compare`` and ``<study>/analyze-<folder>/comparison.json``
of each ``mirrorla analyze``; a missing folder is reported as missing, nothing is filled in.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

ROWS = {
    "linear_relu": "R0 ReLU",
    "mirror_block": "R1 + block reflection",
    "mirror_block_var": "R2 + variance modulation",
    "mirror": "R3 + cross-head = MirrorLA",
    "mirror_dwc": "R3 + DWC",
    "flatten": "FLatten",
    "pola": "PolaFormer",
    "nala": "NaLaFormer",
    "softmax": "softmax",
}
MEASURES = (
    ("entropy_norm", "entropy/log M"),
    ("topk_mass", "top-5% mass"),
    ("effective_rank", "eff. rank"),
    ("discarded_energy_q", "discarded q"),
    ("discarded_energy_k", "discarded k"),
    ("dead_dims_q", "dead q"),
    ("dead_dims_k", "dead k"),
    ("rank_correlation", "rank corr."),
    ("empty_rows", "empty rows"),
)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _runs(results: dict, name: str) -> dict[str, dict]:
    return results["methods"][name]["runs"]


def _stats(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _spearman(x: list[float], y: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else float("nan")


def ablation(study: Path, folder: str) -> None:
    results = _load(study / folder / "results.json")
    print(f"\n### {folder}\n")
    if results is None:
        print(f"(missing: {study / folder}/results.json)")
        return
    seeds = results["seeds"]
    print(
        "| row | attention | top-1 % (mean ± std) | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | params | train img/s |"
    )
    print("|---|---|---:|" + "---:|" * len(seeds) + "---:|---:|")
    for name, label in ROWS.items():
        if name not in results["methods"]:
            continue
        method = results["methods"][name]
        runs = method["runs"]
        top1 = [runs[str(s)]["final_top1"] for s in seeds if str(s) in runs]
        speed = statistics.median(runs[str(s)]["train_img_s"] for s in seeds if str(s) in runs)
        cells = " | ".join(f"{runs[str(s)]['final_top1']:.2f}" if str(s) in runs else "–" for s in seeds)
        print(f"| {label} | `{name}` | {_stats(top1)} | {cells} | {method['params'] / 1e3:.1f}K | {speed:.0f} |")
    paired(results)
    curve_stability(results)


def paired(results: dict, against: tuple[str, ...] = ("linear_relu", "mirror")) -> None:
    """Each row minus R0 and minus R3 on the same seed (same data order, same initialisation outside the
    attention): the mean difference, the per-seed differences and on how many seeds the row is ahead."""
    seeds = [str(s) for s in results["seeds"]]
    methods = results["methods"]
    present = [a for a in against if a in methods]
    if not present:
        return
    print("\nPaired differences in top-1 points (the row minus the reference, seed by seed; ahead = seeds won):\n")
    print("| row | " + " | ".join(f"− {ROWS[a].split(' ')[0]} (per seed) | ahead" for a in present) + " |")
    print("|---|" + "---|---:|" * len(present))
    for name, label in ROWS.items():
        if name not in methods:
            continue
        cells = []
        for ref in present:
            common = [s for s in seeds if s in methods[name]["runs"] and s in methods[ref]["runs"]]
            diffs = [methods[name]["runs"][s]["final_top1"] - methods[ref]["runs"][s]["final_top1"] for s in common]
            if name == ref or not diffs:
                cells += ["–", "–"]
                continue
            each = " / ".join(f"{d:+.2f}" for d in diffs)
            cells += [f"{statistics.mean(diffs):+.2f} ({each})", f"{sum(d > 0 for d in diffs)}/{len(diffs)}"]
        print(f"| {label} | " + " | ".join(cells) + " |")


def curve_stability(results: dict) -> None:
    """Spearman correlation between the attentions' ranking (mean top-1 over seeds) at epoch e and at the end."""
    names = list(results["methods"])
    curves = {}
    for name in names:
        runs = list(results["methods"][name]["runs"].values())
        epochs = len(runs[0]["curve_top1"])
        curves[name] = [statistics.mean(r["curve_top1"][e] for r in runs) for e in range(epochs)]
    epochs = len(next(iter(curves.values())))
    final = [curves[n][-1] for n in names]
    marks = [e for e in (3, 5, 8, 10, 12, 13, 14) if e <= epochs]
    cells = " | ".join(f"{_spearman([curves[n][e - 1] for n in names], final):.2f}" for e in marks)
    print("\nRanking stability (Spearman ρ of the rows' mean top-1 at epoch e with the final ranking):\n")
    print("| epoch | " + " | ".join(str(e) for e in marks) + " |")
    print("|---|" + "---:|" * len(marks))
    print(f"| ρ | {cells} |")


def variants(study: Path, title: str, rows: list[tuple[str, str, str]]) -> None:
    """rows: (label, folder, attention) — one line per variant: top-1 over its seeds, and the diagnostics'
    means over the same seeds where ``analyze-<folder>`` exists."""
    shown = (("entropy_norm", "entropy/log M"), ("effective_rank", "eff. rank"), ("discarded_energy_q", "disc. q"),
             ("discarded_energy_k", "disc. k"))  # fmt: skip
    print(f"\n### {title}\n")
    print("| variant | top-1 % (mean ± std) | per seed | train img/s | " + " | ".join(t for _, t in shown) + " |")
    print("|---|---:|---|---:|" + "---:|" * len(shown))
    for label, folder, name in rows:
        results = _load(study / folder / "results.json")
        if results is None or name not in results["methods"]:
            print(f"| {label} | (missing: {folder}) | | |" + " |" * len(shown))
            continue
        runs = _runs(results, name)
        top1 = [runs[s]["final_top1"] for s in sorted(runs)]
        speed = statistics.median(r["train_img_s"] for r in runs.values())
        per_seed = " / ".join(f"{v:.2f}" for v in top1)
        diag = _load(study / f"analyze-{folder}" / "comparison.json")
        entry = diag["attentions"].get(name) if diag else None
        cells = " | ".join("–" if not entry or entry.get(m) is None else f"{entry[m]:.3f}" for m, _ in shown)
        print(f"| {label} | {_stats(top1)} | {per_seed} | {speed:.0f} | {cells} |")


def diagnostics(study: Path, folder: str) -> None:
    data = _load(study / f"analyze-{folder}" / "comparison.json")
    print(f"\n### Diagnostics: {folder}\n")
    if data is None:
        print(f"(missing: {study}/analyze-{folder}/comparison.json)")
        return
    label = data["score_label"]
    print(f"| attention | {label} | " + " | ".join(t for _, t in MEASURES) + " |")
    print("|---|---:|" + "---:|" * len(MEASURES))
    for name, e in data["attentions"].items():
        cells = " | ".join("–" if e.get(m) is None else f"{e[m]:.3f}" for m, _ in MEASURES)
        print(f"| `{name}` | {e['score']:.2f} | {cells} |")
    corr = data["correlation_with_score"]
    shown = [(m, t) for m, t in MEASURES if m in corr and corr[m]["spearman"] is not None]
    print(
        f"\nSpearman ρ with {label} across the attentions: "
        + ", ".join(f"{t} {corr[m]['spearman']:+.2f} (n={corr[m]['attentions']})" for m, t in shown)
    )


def main(study: Path) -> None:
    print("## Ablation and peers, 49 tokens (patch 4)")
    ablation(study, "p4")
    print("\n## Ablation and peers, 196 tokens (patch 2)")
    ablation(study, "p2")
    alphas = [("0", "p4-alpha-0.0"), ("0.05π", "p4-alpha-0.15707963"), ("0.1π (default)", "p4"),
              ("0.25π", "p4-alpha-0.78539816"), ("0.5π", "p4-alpha-1.57079633")]  # fmt: skip
    variants(study, "α initialisation (R3, 49 tokens)", [(f"alpha_init = {a}", f, "mirror") for a, f in alphas])
    variants(
        study,
        "Design options (R3, 49 tokens)",
        [
            ("default: variance per block, gradient through σ², θ ~ U[0, π)", "p4", "mirror"),
            ("detach_variance=True", "p4-detach", "mirror"),
            ("theta_init='zeros'", "p4-theta0", "mirror"),
            ("variance_axis='head'", "p4-varhead", "mirror"),
        ],
    )
    variants(
        study,
        "Sibling template (49 tokens)",
        [
            ("mirror_dwc + SiLU gate + LayerNorm + per-channel LePE", "p4-sibling", "mirror_dwc"),
            ("mirror_dwc (shared 5×5 DWC)", "p4", "mirror_dwc"),
            ("mirror", "p4", "mirror"),
            ("NaLaFormer (nala)", "p4", "nala"),
            ("PolaFormer (pola)", "p4", "pola"),
            ("FLatten", "p4", "flatten"),
        ],
    )
    six_seeds(study, "p4", 49)
    six_seeds(study, "p2", 196)
    for folder in ("p4", "p2"):
        diagnostics(study, folder)


def _six(study: Path, first: str, more: str, name: str) -> dict[str, float] | None:
    """Final top-1 by seed of ``name`` over two comparisons (seeds 0-2 and 3-5), or None if one is missing."""
    by_seed = {}
    for folder in (first, more):
        results = _load(study / folder / "results.json")
        if results is None or name not in results["methods"]:
            return None
        by_seed.update({s: r["final_top1"] for s, r in _runs(results, name).items()})
    return by_seed


def six_seeds(study: Path, folder: str = "p4", tokens: int = 49) -> None:
    """R0, R1, R3 (and at 49 tokens R3 with α = 0.25π) over seeds 0-5: ``<folder>`` holds seeds 0-2,
    ``<folder>-seeds345`` seeds 3-5. The claims that rested on 3 seeds."""
    more = f"{folder}-seeds345"
    rows = {
        "R0 ReLU": _six(study, folder, more, "linear_relu"),
        "R1 + block reflection": _six(study, folder, more, "mirror_block"),
        "R3 = MirrorLA (α = 0.1π)": _six(study, folder, more, "mirror"),
    }
    if folder == "p4":
        rows["R3, alpha_init = 0.25π"] = _six(study, "p4-alpha-0.78539816", "p4-alpha-0.78539816-seeds345", "mirror")
    print(f"\n### Six seeds ({tokens} tokens)\n")
    missing = [label for label, v in rows.items() if v is None]
    if missing:
        print(f"(missing: {', '.join(missing)}; needs {study / more} with their seeds 3-5)")
        return
    seeds = sorted(set.intersection(*(set(v) for v in rows.values())), key=int)
    print("| row | top-1 % (mean ± std) | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---:|" + "---:|" * len(seeds))
    for label, v in rows.items():
        print(f"| {label} | {_stats([v[s] for s in seeds])} | " + " | ".join(f"{v[s]:.2f}" for s in seeds) + " |")
    print("\n| paired difference | mean (per seed) | ahead |\n|---|---|---:|")
    for a, b in (("R1 + block reflection", "R0 ReLU"), ("R3 = MirrorLA (α = 0.1π)", "R0 ReLU"),
                 ("R1 + block reflection", "R3 = MirrorLA (α = 0.1π)"),
                 ("R3, alpha_init = 0.25π", "R3 = MirrorLA (α = 0.1π)")):  # fmt: skip
        if a not in rows:
            continue
        diffs = [rows[a][s] - rows[b][s] for s in seeds]
        each = " / ".join(f"{d:+.2f}" for d in diffs)
        print(f"| {a} − {b} | {statistics.mean(diffs):+.2f} ({each}) | {sum(d > 0 for d in diffs)}/{len(diffs)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study"))
