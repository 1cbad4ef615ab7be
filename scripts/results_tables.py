"""Regenerate, or check, every table in the docs that comes from a results file or from the code.

A generated table sits between two marker comments in a Markdown file::

    <!-- table: fashion-mnist/results -->
    | attention | ... |
    <!-- /table -->

The name after ``table:`` is a generator registered below (``TABLES``); it reads the committed results files
(``docs/results/...``) or runs the library's code and returns the table. Nothing is typed in by hand: a results
file that is missing is reported as ``(missing: path)`` in place of the table, never filled in.

    python scripts/results_tables.py --check          # exit 1 and list every table that differs (default)
    python scripts/results_tables.py --write          # rewrite the tables in place
    python scripts/results_tables.py --print NAME     # print one table
    python scripts/results_tables.py --list           # the registered tables and the files that use them

``tests/test_docs_tables.py`` runs the check in the default suite. Tables whose generator is expensive (it builds
ImageNet-size models to count their MACs) are listed in ``SLOW`` and skipped unless ``--slow`` is given; the
slow-marked test checks them.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("docs") / "results"
#: The Markdown files searched for markers.
DOC_GLOBS = ("README.md", "docs/*.md", "docs/results/*.md")
MARKER = re.compile(r"(<!-- table: (?P<name>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)

TABLES: dict[str, Callable[[Path], str]] = {}
#: Generators that build large models (seconds to minutes each); checked by the slow test.
SLOW: set[str] = set()


def table(name: str, slow: bool = False) -> Callable[[Callable[[Path], str]], Callable[[Path], str]]:
    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        if name in TABLES:
            raise ValueError(f"table {name!r} is registered twice")
        TABLES[name] = fn
        if slow:
            SLOW.add(name)
        return fn

    return register


class Missing(Exception):
    """A results file a table needs is not in the repository."""


def load(root: Path, relative: str | Path) -> dict:
    path = root / relative
    if not path.is_file():
        raise Missing(str(Path(relative)))
    return json.loads(path.read_text())


def _src(root: Path) -> None:
    """Import the library of this checkout, not an installed one."""
    src = str(root / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def _markdown(head: list[str], align: str, rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (docs/results/fashion-mnist.md, README.md)

FMNIST = RESULTS / "fashion-mnist"


@table("fashion-mnist/results")
def fashion_mnist_results(root: Path) -> str:
    """The comparison's own table (``results.md`` of ``mirrorla compare``), rendered by the same function."""
    _src(root)
    from mirrorla.engine.compare import format_table

    return format_table(load(root, FMNIST / "results.json"))


def _seed_rows(results: dict) -> list[list[str]]:
    rows = []
    seeds = [str(s) for s in results["seeds"]]
    for name, m in results["methods"].items():
        runs = m["runs"]
        top1 = [f"{runs[s]['final_top1']:.2f}" for s in seeds]
        speed = " / ".join(f"{runs[s]['train_img_s']:.0f}" for s in seeds)
        curve = " → ".join(f"{v:.2f}" for v in runs[seeds[0]]["curve_top1"])
        rows.append([name, *top1, speed, curve])
    return rows


@table("fashion-mnist/per-seed")
def fashion_mnist_per_seed(root: Path) -> str:
    results = load(root, FMNIST / "results.json")
    seeds = [str(s) for s in results["seeds"]]
    head = ["attention", *(f"seed {s}" for s in seeds), f"train img/s (seeds {' / '.join(seeds)})",
            f"top-1 per epoch, seed {seeds[0]}"]  # fmt: skip
    return _markdown(head, "l" + "r" * (len(seeds) + 1) + "l", _seed_rows(results))


def _identical(a: dict, b: dict) -> bool:
    """Every epoch's evaluation accuracy and training loss equal (bit for bit, as stored)."""
    return a["curve_top1"] == b["curve_top1"] and a["curve_train_loss"] == b["curve_train_loss"]


@table("fashion-mnist/weight-decay-fix")
def fashion_mnist_weight_decay_fix(root: Path) -> str:
    """After against before the weight-decay fix: both columns and the seeds whose curves are identical."""
    after = load(root, FMNIST / "results.json")["methods"]
    before = load(root, FMNIST / "before-weight-decay-fix" / "results.json")["methods"]
    rows = []
    for name, m in after.items():
        if name not in before:
            rows.append([name, _mean_std([r["final_top1"] for r in m["runs"].values()]), "–", "–", "–"])
            continue
        a = [r["final_top1"] for r in m["runs"].values()]
        b_runs = before[name]["runs"]
        b = [r["final_top1"] for r in b_runs.values()]
        same = [s for s, r in m["runs"].items() if s in b_runs and _identical(r, b_runs[s])]
        change = round(statistics.mean(a) - statistics.mean(b), 2) + 0.0  # + 0.0: no "-0.00"
        rows.append([name, _mean_std(a), _mean_std(b), f"{change:+.2f}", ", ".join(same) or "none"])
    head = ["attention", "after the fix", "before the fix (2026-11-23)", "change", "seeds that reproduce bit for bit"]
    return _markdown(head, "lrrrl", rows)


@table("fashion-mnist/mirror_dwc")
def fashion_mnist_mirror_dwc(root: Path) -> str:
    _src(root)
    from mirrorla.engine.compare import _human

    results = load(root, FMNIST / "mirror_dwc" / "results.json")
    threads = sorted({str(r.get("threads")) for m in results["methods"].values() for r in m["runs"].values()})
    rows = []
    for name, m in results["methods"].items():
        top1 = [r["final_top1"] for r in m["runs"].values()]
        rows.append([name, _mean_std(top1), " / ".join(f"{v:.2f}" for v in top1), _human(m["params"]),
                     _human(m["macs"]), f"{m['train_img_s']:.0f}"])  # fmt: skip
    n = len(results["seeds"])
    head = ["attention", f"top-1 % (mean ± std, {n} seeds)", "per seed", "params", "MACs",
            f"train img/s ({', '.join(threads)} thread{'s' if threads != ['1'] else ''})"]  # fmt: skip
    return _markdown(head, "lrlrrr", rows)


@table("fashion-mnist/macs-now")
def fashion_mnist_macs_now(root: Path) -> str:
    """The MACs and parameters the results file recorded at the producing commit, beside what this checkout's
    counter gives for the same models (``mirrorla compare``'s own count): a change of the counter or of a model
    shows here instead of silently disagreeing with the published column."""
    _src(root)
    import torch

    from mirrorla.engine import count_macs, count_params, create_classifier
    from mirrorla.engine.compare import _human
    from mirrorla.engine.config import TrainConfig

    results = load(root, FMNIST / "results.json")
    info = results["dataset"]
    known = set(TrainConfig.__dataclass_fields__)
    base = TrainConfig.from_dict({k: v for k, v in results["config"].items() if k in known})
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, m in results["methods"].items():
            model = create_classifier(base.replace(attention=name), info["num_classes"], info["in_chans"],
                                      info["image_size"])  # fmt: skip
            macs = count_macs(model, info["in_chans"], info["image_size"])[0]
            params = count_params(model)
            rows.append([name, _human(m["macs"]), _human(macs), f"{macs - m['macs']:+,}", _human(m["params"]),
                         _human(params)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    head = ["attention", "MACs recorded", "MACs counted now", "difference", "params recorded", "params now"]
    return _markdown(head, "lrrrrr", rows)


# ---------------------------------------------------------------------------------------------------------------
# Super-resolution (docs/results/super-resolution.md)

SR = RESULTS / "super-resolution"


@table("super-resolution/compare-x2")
def super_resolution_compare(root: Path) -> str:
    _src(root)
    from mirrorla.engine.sr_compare import format_sr_table

    return format_sr_table(load(root, SR / "compare-x2" / "results.json"))


@table("super-resolution/bench-x4")
def super_resolution_bench(root: Path) -> str:
    _src(root)
    from mirrorla.bench.report import sr_pivot_table

    return sr_pivot_table(load(root, SR / "bench-x4" / "sr.json")["results"])


# ---------------------------------------------------------------------------------------------------------------
# Long-range sequences (docs/results/long-range.md)

LRA = RESULTS / "long-range"


@table("long-range/summary")
def long_range_summary(root: Path) -> str:
    _src(root)
    from mirrorla.engine.lra_compare import format_summary_table

    return format_summary_table(load(root, LRA / "compare" / "summary.json"))


def _lra_task(folder: str) -> Callable[[Path], str]:
    def generate(root: Path) -> str:
        _src(root)
        from mirrorla.engine.lra_compare import format_lra_table

        return format_lra_table(load(root, LRA / folder / "results.json"))

    return generate


LRA_TASKS = {
    "listops": "compare/listops",
    "pathfinder32": "compare/pathfinder32",
    "pathfinder32-2d": "pathfinder32-easy-2d/pathfinder32-2d",
    "image-3-seeds": "image-3-seeds/image",
}
for _name, _folder in LRA_TASKS.items():
    table(f"long-range/{_name}")(_lra_task(_folder))


def _seconds(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _mib(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


@table("long-range/bench")
def long_range_bench(root: Path) -> str:
    """Seconds and peak MiB per training step at the shortest, a middle and the longest length, with the fitted
    exponents (``mirrorla bench lra``'s ``lra.json``)."""
    bench = load(root, LRA / "bench" / "lra.json")
    lengths = sorted({r["N"] for r in bench["results"]})
    shown = [lengths[0], lengths[len(lengths) // 2], lengths[-1]]
    cells = {(r["method"], r["N"]): r for r in bench["results"]}

    def step(method: str, n: int) -> str:
        r = cells.get((method, n))
        return "–" if r is None or r["status"] != "ok" else _seconds(r["step"]["median_ms"] / 1e3)

    def memory(method: str, n: int) -> str:
        r = cells.get((method, n))
        return "–" if r is None or r.get("mem_step_bytes") is None else _mib(r["mem_step_bytes"] / 2**20)

    k = [f"{n // 1024}K" if n % 1024 == 0 else f"{n:,}" for n in shown]
    head = ["attention", f"s/step {k[0]}", k[1], k[2], "time exponent", f"peak MiB {k[0]}", k[2], "memory exponent"]
    rows = []
    for method, fit in bench["scaling"].items():
        rows.append([method, *(step(method, n) for n in shown), f"{fit['time_exponent']:.2f}",
                     memory(method, shown[0]), memory(method, shown[-1]), f"{fit['memory_exponent']:.2f}"])  # fmt: skip
    return _markdown(head, "lrrrrrrr", rows)


# ---------------------------------------------------------------------------------------------------------------
# The MirrorLA study (docs/results/mirrorla-study.md): the tables its own tables.py prints, in order

STUDY = RESULTS / "mirrorla-study"
STUDY_TABLES = ("p4-ablation", "p4-paired", "p4-stability", "p2-ablation", "p2-paired", "p2-stability", "alpha",
                "design", "sibling", "six-seeds-49", "six-seeds-49-paired", "six-seeds-196", "six-seeds-196-paired",
                "diagnostics-p4", "diagnostics-p2")  # fmt: skip


@functools.lru_cache(maxsize=4)
def _study_output(root: Path) -> tuple[list[str], list[str]]:
    """(the Markdown tables ``tables.py`` prints, its ``(missing: ...)`` lines)."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("study_tables", root / STUDY / "tables.py")
    if spec is None or not (root / STUDY / "tables.py").is_file():
        raise Missing(str(STUDY / "tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        module.main(root / STUDY)
    tables, current = [], []
    for line in printed.getvalue().splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    missing = [line for line in printed.getvalue().splitlines() if "(missing:" in line]
    return tables, missing


def _study_table(index: int) -> Callable[[Path], str]:
    def generate(root: Path) -> str:
        tables, missing = _study_output(root)
        if missing or len(tables) != len(STUDY_TABLES):
            raise Missing("; ".join(missing) or f"{STUDY}: tables.py printed {len(tables)} tables")
        return tables[index]

    return generate


for _index, _name in enumerate(STUDY_TABLES):
    table(f"mirrorla-study/{_name}")(_study_table(_index))


# ---------------------------------------------------------------------------------------------------------------
# Efficiency (docs/results/efficiency.md)

EFFICIENCY = RESULTS / "efficiency"


def _ms(v: float) -> str:
    return f"{v:,.1f}".replace("-", "−")


def _official_peers(root: Path, folder: str, budget: bool) -> str:
    """scripts/bench_official_peers.py's JSON: medians, the ratio (bold when ≥ 1.3×), projections and ceiling;
    with ``budget`` also what ours spends beyond the projections and what 1.3× would leave for it."""
    rows = []
    for r in load(root, EFFICIENCY / folder / "official_peers.json")["results"]:
        ratio = r["official_ms"] / r["ours_ms"]
        cells = [r["peer"], f"{r['N']:,}", _ms(r["official_ms"]), _ms(r["ours_ms"]),
                 f"**{ratio:.2f}**" if ratio >= 1.3 else f"{ratio:.2f}", "yes" if ratio >= 1.3 else "no",
                 _ms(r["projections_ms"]), f"{r['official_ms'] / r['projections_ms']:.2f}"]  # fmt: skip
        if budget:
            cells += [_ms(r["ours_ms"] - r["projections_ms"]), _ms(r["official_ms"] / 1.3 - r["projections_ms"])]
        rows.append(cells)
    head = ["peer", "N", "official ms", "ours ms", "official / ours", "≥ 1.3×", "projections ms", "ceiling"]
    if budget:
        head += ["ours beyond projections ms", "budget for 1.3× ms"]
    lines = _markdown(head, "lrrrrcrr" + "rr" * budget, rows).splitlines()
    lines[1] = lines[1].replace("|---|---:|---:|---:|---:|---|", "|---|---:|---:|---:|---:|:---:|", 1)
    return "\n".join(lines)


table("efficiency/official-peers-2026-12-02b")(lambda root: _official_peers(root, "2026-12-02b", budget=True))
table("efficiency/official-peers-2026-12-02")(lambda root: _official_peers(root, "2026-12-02", budget=False))


@table("efficiency/mixed-precision")
def efficiency_mixed_precision(root: Path) -> str:
    """The table of scripts/bench_mixed_precision.py's own Markdown output, as it printed it."""
    return _report_table(root, EFFICIENCY / "2026-12-02" / "mixed_precision.md")


def _report_table(root: Path, path: Path, index: int = 0) -> str:
    """Table number ``index`` (0: the first) of a committed Markdown report, as the command printed it."""
    if not (root / path).is_file():
        raise Missing(str(path))
    lines = (root / path).read_text().splitlines()
    starts = [
        i for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
    ]
    first = starts[index]
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[first:end])


NEW_PEERS = EFFICIENCY / "official-peers-2026-12-08"
# scripts/bench_official_peers.py's reports for MLLA, RALA, MALA and Agent attention (docs/peers.md): the parity
# table of the first full run and the speed table of the final run.
table("peers/new-peers-parity")(lambda root: _report_table(root, NEW_PEERS / "official_new_peers.md", 1))
table("peers/new-peers-speed")(lambda root: _report_table(root, NEW_PEERS / "official_new_peers_final.md", 0))


#: ``mirrorla bench models`` method → (row of the images/s table, row of the memory table).
MODEL_LABELS = {
    "vit_small_patch16_224": ("ViT-S/16, softmax (`vit_small_patch16_224`)", "ViT-S softmax"),
    "vit_small_patch16_224:mirror": ("ViT-S/16, MirrorLA (`vit_small_patch16_224:mirror`)", "ViT-S MirrorLA"),
    "pvt_small_mirror": ("PVT-Small, MirrorLA in all stages (`pvt_small_mirror`)", "PVT-S MirrorLA"),
}


def _bench_models(root: Path, memory: bool) -> str:
    results = load(root, EFFICIENCY / "models.json")["results"]
    sizes = sorted({r["N"] for r in results})
    cells = {(r["method"], r["N"]): r for r in results}
    last = sizes[-1]
    rows = []
    for method in dict.fromkeys(r["method"] for r in results):
        label = MODEL_LABELS.get(method, (f"`{method}`", f"`{method}`"))[memory]
        row = [label]
        for n in sizes:
            r = cells.get((method, n))
            if r is None or r["status"] != "ok":
                row.append("–")
            elif memory:
                row.append(_mib(r["mem_fwd_bytes"] / 2**20))
            else:
                seconds = r["fwd"]["median_ms"] / 1e3
                row.append(f"{1 / seconds:.1f}" + (f" ({seconds:.1f} s)" if n == last else ""))
        rows.append(row)
    head = ["peak MiB, forward" if memory else "images/s", *(f"{n}²" for n in sizes)]
    return _markdown(head, "l" + "r" * len(sizes), rows)


table("efficiency/models-images-per-second")(lambda root: _bench_models(root, memory=False))
table("efficiency/models-peak-memory")(lambda root: _bench_models(root, memory=True))


# ---------------------------------------------------------------------------------------------------------------
# Numbers from the code: parameters and MACs (README.md, docs/models.md), as `mirrorla flops PATTERNS` prints them

FLOPS_README = ("deit_*_softmax", "deit_*_mirror", "pvt_*[!w]_softmax", "pvt_*_mirror", "l2vit_*")
FLOPS_ALL = ("deit_*", "pvt_*", "l2vit_*")


def flops_names(patterns: tuple[str, ...]) -> list[str]:
    """The model names ``mirrorla flops PATTERNS`` counts, in its order."""
    from mirrorla.models import list_models

    names: list[str] = []
    for pattern in patterns:
        names += [n for n in list_models(pattern) if n not in names]
    return names


def flops_table(root: Path, patterns: tuple[str, ...], img_size: int = 224) -> str:
    _src(root)
    import torch

    from mirrorla.models.flops import cost_table, model_cost

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # MAC counts do not depend on threads; one keeps a shared machine usable
    try:
        return cost_table([model_cost(name, img_size=img_size) for name in flops_names(patterns)])
    finally:
        torch.set_num_threads(threads)


table("models/flops-readme", slow=True)(lambda root: flops_table(root, FLOPS_README))
table("models/flops-all", slow=True)(lambda root: flops_table(root, FLOPS_ALL))


# ---------------------------------------------------------------------------------------------------------------
# The markers


def docs(root: Path) -> list[Path]:
    return sorted({p for pattern in DOC_GLOBS for p in root.glob(pattern)})


@functools.cache  # one generation per table and process: the results files do not change under it
def render(name: str, root: Path = ROOT) -> str:
    if name not in TABLES:
        raise KeyError(f"no table named {name!r}; registered: {', '.join(sorted(TABLES))}")
    try:
        return TABLES[name](root).rstrip("\n")
    except Missing as missing:
        return f"(missing: {missing}; this table is generated from that file and is not filled in by hand)"


def regenerate(text: str, root: Path = ROOT, skip: set[str] | frozenset[str] = frozenset()) -> str:
    """``text`` with every marked table replaced by what its generator prints (the ``skip`` ones kept)."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name in skip:
            return match[0]
        return f"{match[1]}{render(name, root)}\n{match[4]}"

    return MARKER.sub(replace, text)


def used(root: Path = ROOT) -> dict[str, list[str]]:
    """Table name → the files (relative to ``root``) whose markers name it."""
    found: dict[str, list[str]] = {}
    for path in docs(root):
        for match in MARKER.finditer(path.read_text()):
            found.setdefault(match["name"], []).append(str(path.relative_to(root)))
    return found


def stale(root: Path = ROOT, slow: bool = False) -> list[str]:
    """``file: table`` for every marked table whose text differs from what its generator prints."""
    skip = set() if slow else SLOW
    out = []
    for path in docs(root):
        text = path.read_text()
        for match in MARKER.finditer(text):
            if match["name"] in skip:
                continue
            if match["body"].rstrip("\n") != render(match["name"], root):
                out.append(f"{path.relative_to(root)}: {match['name']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="list the tables that differ and exit 1 (default)")
    mode.add_argument("--write", action="store_true", help="rewrite every marked table in place")
    mode.add_argument("--print", metavar="NAME", help="print one table")
    mode.add_argument("--list", action="store_true", help="the registered tables and the files that use them")
    parser.add_argument("--slow", action="store_true", help="include the tables that build large models")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    root = args.root
    if args.print:
        print(render(args.print, root))
        return 0
    if args.list:
        where = used(root)
        for name in sorted(TABLES):
            print(f"{name}{' (slow)' if name in SLOW else ''}: {', '.join(where.get(name, ['(unused)']))}")
        return 0
    if args.write:
        skip = set() if args.slow else SLOW
        for path in docs(root):
            text = path.read_text()
            new = regenerate(text, root, skip)
            if new != text:
                path.write_text(new)
                print(f"rewrote {path.relative_to(root)}")
        return 0
    differ = stale(root, args.slow)
    for line in differ:
        print(f"differs from its generator: {line}")
    if differ:
        print("run `python scripts/results_tables.py --write` (and review the diff) to regenerate them")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
