"""``mirrorla analyze``: per-layer, per-head attention diagnostics of a trained run or a named model.

The work is :func:`mirrorla.diagnostics.analyze_model` and :func:`mirrorla.diagnostics.report.write_report`;
this module turns arguments into a source (:mod:`mirrorla.diagnostics.sources`) and settings.
"""

from __future__ import annotations

import argparse
import functools
import time

from mirrorla.commands import Command, UsageError
from mirrorla.commands.options import check_out_folder, int_list, key_value, positive_int

__all__ = ["COMMANDS", "parse_points"]


def parse_points(text: str) -> tuple[tuple[float, float], ...]:
    """'0.5,0.5;0.25,0.75' → ((0.5, 0.5), (0.25, 0.75)): (row, col) fractions of the token grid."""
    points = []
    for part in text.split(";"):
        try:
            r, c = (float(v) for v in part.split(","))
        except ValueError:
            raise UsageError(
                f"--query-points: {part!r} is not 'row,col'; give fractions of the grid, e.g. 0.5,0.5;0.25,0.75"
            ) from None
        if not (0 <= r <= 1 and 0 <= c <= 1):
            raise UsageError(f"--query-points: ({r}, {c}) must be fractions in [0, 1] of the grid's height and width")
        points.append((r, c))
    return tuple(points)


def add_analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        help="a run folder, its checkpoints/ folder or a checkpoint file of train, sr train or lra train; or a "
        "comparison folder (compare, sr compare, lra compare --out): every run with a checkpoint is analysed and "
        "one table sets the measures beside the scores; or weights shipped with mirrorla, "
        "pretrained:vit_micro_mirror.fmnist (`mirrorla models --pretrained`); leave out with --model",
    )
    g = p.add_argument_group("a model instead of a run")
    g.add_argument("--model", help="vit, a mirrorla model or a timm model name (random weights unless --weights)")
    g.add_argument("--attention", help="a registered attention for --model (default: the model's own)")
    g.add_argument(
        "--attn-opt", type=key_value, action="append", default=[], metavar="KEY=VALUE", help="an option of --attention"
    )
    g.add_argument("--weights", help="a .safetensors or torch state-dict file for --model")
    g.add_argument("--image-size", type=positive_int, help="input size of --model (default: the model's)")
    g.add_argument("--in-chans", type=positive_int, default=3, help="input channels of --model")
    g = p.add_argument_group("inputs and measures")
    g.add_argument(
        "--images",
        help="an image file or a folder of images (default: the run's evaluation images; Fashion-MNIST for --model; "
        "the test photos for an SR run)",
    )
    g.add_argument("--num-images", type=positive_int, default=16, help="inputs analysed")
    g.add_argument("--batch-size", type=positive_int, default=16, help="inputs per forward pass")
    g.add_argument("--queries", type=positive_int, default=256, help="query rows sampled per input, layer and head")
    g.add_argument("--topk", type=float, default=0.05, help="top-k mass counts this fraction of the keys")
    g.add_argument(
        "--exact-rank-limit",
        type=positive_int,
        default=2048,
        help="softmax maps up to this many keys get an exact effective rank, larger ones an estimate",
    )
    g.add_argument(
        "--query-points",
        default="0.5,0.5;0.25,0.25;0.75,0.75",
        help="(row,col) grid fractions of the query tokens whose attention maps are drawn, ';'-separated",
    )
    g.add_argument("--ema", action="store_true", help="analyse the run's EMA weights")
    g.add_argument(
        "--seeds",
        type=int_list,
        help="comma-separated seeds of a comparison's runs to analyse (default: every finished run)",
    )
    g.add_argument("--seed", type=int, default=0, help="query sampling seed")
    g.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True, help="write the PNG figures")
    g.add_argument("--threads", type=positive_int, help="torch CPU threads")
    g.add_argument("--out", default="runs/analyze", help="output folder (analysis.json, summary.md, figures)")
    g.add_argument("--overwrite", action="store_true", help="write into an --out that already holds files")


def _one_writer(run):
    """Run the command holding the lock of its --out (a second analysis into it is refused), with write errors
    (disk full, read-only) as one line; see :func:`mirrorla.engine.run_folder.claim_output_folder`."""
    from mirrorla.commands.train import user_errors

    @functools.wraps(run)
    @user_errors
    def wrapper(args: argparse.Namespace) -> int:
        from mirrorla.engine.run_folder import claim_output_folder

        check_out_folder(args.out)
        with claim_output_folder(args.out, "analyze"):
            return run(args)

    return wrapper


@_one_writer
def run_analyze(args: argparse.Namespace) -> int:
    import torch

    from mirrorla.diagnostics import AnalyzeConfig, analyze_model
    from mirrorla.diagnostics.report import write_report
    from mirrorla.diagnostics.runs import is_comparison
    from mirrorla.diagnostics.sources import from_model_name, from_run

    if (args.source is None) == (args.model is None):
        raise UsageError("give either a run (folder, checkpoints/ or checkpoint file) or --model NAME, not both")
    if args.source is not None and (args.attention or args.attn_opt or args.weights or args.image_size):
        raise UsageError("--attention, --attn-opt, --weights and --image-size describe --model; a run knows its own")
    if not 0 < args.topk <= 1:
        raise UsageError(f"--topk must be a fraction in (0, 1], got {args.topk}")
    if args.in_chans not in (1, 3):
        raise UsageError(f"--in-chans must be 1 (gray) or 3 (RGB): images are read as such, got {args.in_chans}")
    if args.figures:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("the figures need matplotlib: pip install -e '.[train]', or pass --no-figures")
    _check_out(args.out, args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = AnalyzeConfig(
            queries=args.queries,
            topk_fraction=args.topk,
            exact_rank_limit=args.exact_rank_limit,
            query_points=parse_points(args.query_points),
            seed=args.seed,
        )
        if args.source is not None and is_comparison(args.source):
            return _analyze_comparison(args, cfg)
        if args.source is not None:
            source = from_run(args.source, args.num_images, args.images, args.batch_size, ema=args.ema)
        else:
            source = from_model_name(
                args.model,
                args.attention,
                dict(args.attn_opt),
                args.weights,
                args.images,
                args.num_images,
                args.batch_size,
                args.image_size,
                args.in_chans,
            )
        t0 = time.perf_counter()
        result = analyze_model(source.model, _with_progress(source.batches), cfg, source.forward)
    except (ValueError, FileNotFoundError, TypeError, KeyError) as err:
        raise UsageError(str(err).strip("'\"")) from err
    except (RuntimeError, MemoryError) as err:  # the allocator's own error, when an estimate missed
        from mirrorla.memory import is_allocation_error

        if not is_allocation_error(err):
            raise
        raise UsageError(
            f"out of memory ({str(err).splitlines()[0][:160]}); analyse fewer or smaller inputs (--num-images, "
            "--batch-size, a smaller image for --images)"
        ) from None
    written = write_report(result, args.out, source.header, source.display, figures=args.figures)
    seconds = time.perf_counter() - t0
    print(f"{len(result['layers'])} layers analysed in {seconds:.1f} s; mean {_mean_line(result['mean'])}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _with_progress(batches):
    """The input batches behind a progress bar on stderr: a whole SR image can take minutes per pass."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(list(batches), desc="analyze", unit="input batch", file=sys.stderr, leave=False, dynamic_ncols=True)


def _analyze_comparison(args: argparse.Namespace, cfg) -> int:
    """Every run of a comparison on the same inputs; per run a folder, then comparison.md/.json."""
    import json
    from pathlib import Path

    from mirrorla.diagnostics import analyze_model
    from mirrorla.diagnostics.report import write_comparison_figure, write_report
    from mirrorla.diagnostics.runs import comparison_runs, comparison_table
    from mirrorla.diagnostics.sources import from_run
    from mirrorla.engine.checkpoint import atomic_write_bytes, remove_temp_files

    runs = comparison_runs(args.source, list(args.seeds) if args.seeds is not None else None)
    out = Path(args.out)
    rows = []
    t0 = time.perf_counter()
    for run in runs:
        source = from_run(run["run"], args.num_images, args.images, args.batch_size, ema=args.ema)
        result = analyze_model(source.model, _with_progress(source.batches), cfg, source.forward)
        name = f"{run['attention']}-seed{run['seed']}"
        if (out / name).is_dir():  # under the lock of --out: what a killed analysis left there
            remove_temp_files(out / name)
        write_report(result, out / name, source.header, source.display, figures=args.figures)
        rows.append({**run, "run": str(run["run"]), "mean": result["mean"], "folder": name})
        print(f"[analyze] {name}: {run['score_label']} {run['score']}, " + _mean_line(result["mean"]), flush=True)
    table, data = comparison_table(rows)
    header = (
        f"# Attention diagnostics of {args.source}\n\n{len(rows)} runs, each on the same inputs ({args.num_images} "
        f"per run, {cfg.queries} sampled queries per input and head). Measures: model means (over layers and heads); "
        "per attention the mean over the analysed seeds. Per-run details: the sub-folders.\n\n"
    )
    atomic_write_bytes(out / "comparison.md", (header + table).encode())
    atomic_write_bytes(out / "comparison.json", json.dumps({"runs": rows, **data}, indent=2).encode())
    written = ["comparison.md", "comparison.json"]
    if args.figures and any(c["spearman"] is not None for c in data["correlation_with_score"].values()):
        written.append(write_comparison_figure(rows, data, out / "comparison.png").name)
    print(table)
    print(f"{len(rows)} runs analysed in {time.perf_counter() - t0:.0f} s; wrote {out}/{', '.join(written)}")
    return 0


def _mean_line(mean: dict) -> str:
    shown = ("entropy_norm", "effective_rank", "discarded_energy_q")
    return ", ".join(f"{k} {mean[k]:.3f}" for k in shown if mean[k] is not None)


def _check_out(out: str, overwrite: bool) -> None:
    if overwrite:
        return
    check_out_folder(out)
    from pathlib import Path

    if (Path(out) / "analysis.json").exists() or (Path(out) / "comparison.json").exists():
        raise UsageError(f"{out} already holds an analysis; pass --overwrite or choose another --out")


COMMANDS = [
    Command(
        "analyze",
        "attention diagnostics per layer and head (entropy, rank, discarded energy, dead dims, maps, PCA)",
        add_analyze_args,
        run_analyze,
    )
]
