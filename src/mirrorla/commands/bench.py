"""``mirrorla bench ops`` and ``mirrorla bench models``: run a sweep, print tables, write JSON/PNG.

Examples::

    mirrorla bench ops --quick                       # ~1 minute on a laptop CPU; writes runs/bench/
    mirrorla bench ops --threads 2 --out docs/results/efficiency
    mirrorla bench models --resolutions 224,384,512,1024

The sweeps themselves are in :mod:`mirrorla.bench`; torch is imported when the command runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
from pathlib import Path

from mirrorla.commands import Command, UsageError
from mirrorla.commands.options import check_out_folder, positive_float, positive_int

__all__ = ["COMMANDS"]

_DTYPES = ("float32", "bfloat16", "float16")


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sweep, 3 repeats, one worker (about a minute on CPU)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu' or 'cuda[:i]'")
    p.add_argument("--dtype", default="float32", choices=_DTYPES, help="tensor and parameter dtype")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--batch", type=positive_int, default=None, help="batch size (default: ops 1; models 1 on CPU, 8 on CUDA)"
    )
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats after warm-up (median/min/max)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per case and mode")
    p.add_argument(
        "--max-case-seconds",
        type=positive_float,
        default=120.0,
        help="skip a case whose predicted run time (extrapolated from smaller sizes) is longer",
    )
    p.add_argument("--out", default="runs/bench", help="output folder for the JSON, Markdown and PNG files")
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each case in its own worker process (--no-isolate: all in one)",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar")
    p.add_argument(
        "--gemm-size", type=positive_int, default=2048, help="size of the square matmul that measures the GEMM peak"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the inputs")


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_what", metavar="{ops,models}", required=True)
    from mirrorla.commands import HelpFormatter as fmt

    ops = sub.add_parser("ops", help="attention layers and cores vs SDPA over token counts", formatter_class=fmt)
    _common(ops)
    ops.add_argument(
        "--sizes",
        type=_ints,
        default=None,
        help="comma-separated token counts N (default: 196, 784, 3136, 4096, 16384, 65536; --quick 196, 1024)",
    )
    ops.add_argument("--dim", type=positive_int, default=384, help="channels C")
    ops.add_argument("--heads", type=positive_int, default=6, help="heads H")
    ops.add_argument("--methods", default="*", help="comma-separated registry names or patterns ('mirror*'); '*' = all")
    ops.add_argument(
        "--core",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the attention cores on their own, apart from the layers",
    )
    ops.add_argument("--fit-from", type=positive_int, default=4096, help="fit scaling exponents over N >= this")
    models = sub.add_parser("models", help="whole-model images/s and peak memory vs resolution", formatter_class=fmt)
    _common(models)
    models.add_argument(
        "--models",
        default=None,
        help="comma-separated timm names, optionally 'name:attention' (default: softmax ViT-S, "
        "ViT-S with --attention, the pyramid backbone with --attention when available)",
    )
    models.add_argument("--attention", default="mirror", help="registry attention of the default linear models")
    models.add_argument(
        "--resolutions",
        type=_ints,
        default=None,
        help="comma-separated input sizes (default: 224, 384, 512, 768, 1024, 1536, 2048; --quick 224, 320)",
    )


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from mirrorla.bench.machine import describe_machine, resolve_device
    from mirrorla.bench.memory import CPU_METHOD, CUDA_METHOD

    check_out_folder(args.out)
    device = resolve_device(args.device)
    if args.threads is None:
        args.threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.isolate = min(args.repeats, 3), False
        args.max_case_seconds = min(args.max_case_seconds, 10.0)
    settings = {
        "device": str(device),
        "dtype": args.dtype,
        "threads": args.threads,
        "repeats": args.repeats,
        "min_repeats": min(3, args.repeats),
        "warmup": args.warmup,
        "max_case_seconds": args.max_case_seconds,
        "seed": args.seed,
        "gemm_size": args.gemm_size,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(device)
    machine["torch_threads"] = args.threads
    header = {
        "command": "mirrorla " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "",
        "machine": machine,
        "memory_method": CUDA_METHOD if device.type == "cuda" else CPU_METHOD,
        "macs_note": "forward matmul/conv multiply-accumulates (FLOPs/2) counted on the meta device with "
        "torch.utils.flop_counter; elementwise work not counted; SDPA core analytic 2·B·H·N²·D",
    }
    if args.bench_what == "ops":
        return _run_ops(args, settings, header, out)
    return _run_models(args, settings, header, out)


def _select_methods(spec: str) -> list[str]:
    from mirrorla.registry import list_attentions

    names = list_attentions()
    chosen = []
    for pat in (p.strip() for p in spec.split(",") if p.strip()):
        hits = [n for n in names if fnmatch.fnmatch(n, pat)]
        if not hits:
            raise UsageError(f"--methods: no registered attention matches {pat!r}; registered: {', '.join(names)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _run_ops(args, settings, header, out: Path) -> int:
    from mirrorla.bench import ops as ops_cases
    from mirrorla.bench import report
    from mirrorla.bench.worker import run_cases
    from mirrorla.registry import create_attention

    sizes = args.sizes or list(ops_cases.QUICK_SIZES if args.quick else ops_cases.DEFAULT_SIZES)
    methods = _select_methods(args.methods)
    settings.update(batch=args.batch or 1, dim=args.dim, heads=args.heads)
    groups = ops_cases.plan_ops_cases(methods, sizes, core=args.core)
    print(
        f"mirrorla bench ops: {len(methods)} attentions + sdpa + projections, N = {sizes}, "
        f"B={settings['batch']} C={args.dim} H={args.heads} {args.dtype} on {settings['device']}, "
        f"{args.threads} threads",
        flush=True,
    )
    results, gemm = run_cases("ops", groups, settings, isolate=args.isolate, progress=args.progress)
    for r in results:
        r.update(batch=settings["batch"], dim=args.dim, heads=args.heads, dtype=args.dtype, device=settings["device"])
    linear = [m for m in methods if getattr(create_attention(m, args.dim, num_heads=args.heads), "is_linear", False)]
    gemm_gflops = gemm["gflops_best"] if gemm else None
    metrics = {"fwd": "fwd ms", "fwdbwd": "fwd+bwd ms", "mem_fwd": "MiB fwd", "mem_fwdbwd": "MiB fwd+bwd"}
    exp_md, exps = report.exponent_table(results, args.fit_from, metrics)
    targets = report.evaluate_targets(results, gemm_gflops, linear)
    cross = {m: report.crossovers(results, m) for m in ("fwd", "fwdbwd")}
    payload = dict(
        header,
        kind="ops",
        settings=settings,
        gemm=gemm,
        linear_methods=linear,
        results=results,
        exponents={"fit_from": args.fit_from, "values": exps},
        targets=targets,
        crossover_vs_softmax_layer=cross,
    )
    report.write_json(out / "ops.json", payload)
    subtitle = f"B={settings['batch']} C={args.dim} H={args.heads} {args.dtype} {settings['device']}"
    pngs = report.plot_ops(results, out, args.fit_from, subtitle)
    md = _ops_markdown(payload, exp_md, pngs)
    (out / "ops.md").write_text(md)
    print(md)
    print(f"wrote {out / 'ops.json'}, {out / 'ops.md'}, " + ", ".join(pngs))
    return 0


def _ops_markdown(payload, exp_md, pngs) -> str:
    from mirrorla.bench import report

    res, gemm = payload["results"], payload["gemm"]
    m = payload["machine"]
    parts = [
        f"Command: `{payload['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
        f"device {m['device_name']}, torch {m['torch']}, load average {m['load_average_1_5_15']}, "
        f"{m['date_utc']} UTC  ",
        f"GEMM peak ({gemm['size']}³ {gemm['dtype']}): best {gemm['gflops_best']:.1f} GFLOP/s, median "
        f"{gemm['gflops_median']:.1f} GFLOP/s"
        if gemm
        else "GEMM peak: not measured",
        "",
        report.pivot_tables(
            res,
            {
                "fwd": "Forward latency, median ms",
                "fwdbwd": "Forward+backward latency, median ms",
                "mem_fwdbwd": "Peak memory, forward+backward, MiB above the inputs",
            },
        ),
        f"**Scaling exponents** (log-log slope over N ≥ {payload['exponents']['fit_from']:,})\n",
        exp_md,
        "",
        "**Crossover vs the softmax layer** (smallest N from which a layer is faster)\n",
        "| method | forward | forward+backward |",
        "|---|---|---|",
    ]
    cross = payload["crossover_vs_softmax_layer"]
    for method in cross["fwd"]:
        f, b = cross["fwd"][method], cross["fwdbwd"].get(method, {})
        parts.append(
            f"| {method} | {f.get('n') or '–'} ({f.get('note', '')}) | {b.get('n') or '–'} ({b.get('note', '')}) |"
        )
    parts += ["", "**Targets**\n", report.targets_table(payload["targets"]), ""]
    parts += ["**Every case**\n", report.detail_table(res, gemm["gflops_best"] if gemm else None), ""]
    parts += [f"![{Path(p).stem}]({Path(p).name})" for p in pngs]
    return "\n".join(parts) + "\n"


def _run_models(args, settings, header, out: Path) -> int:
    import torch

    from mirrorla.bench import models as model_cases
    from mirrorla.bench import report
    from mirrorla.bench.worker import run_cases

    device = torch.device(settings["device"])
    specs = (
        [s.strip() for s in args.models.split(",") if s.strip()]
        if args.models
        else model_cases.default_model_specs(args.attention)
    )
    resolutions = args.resolutions or list(
        model_cases.QUICK_RESOLUTIONS if args.quick else model_cases.DEFAULT_RESOLUTIONS
    )
    settings.update(batch=args.batch or (8 if device.type == "cuda" else 1))
    print(
        f"mirrorla bench models: {specs} at {resolutions}, batch {settings['batch']}, {args.dtype} on "
        f"{settings['device']}, {args.threads} threads",
        flush=True,
    )
    groups = model_cases.plan_model_cases(specs, resolutions)
    results, gemm = run_cases("models", groups, settings, isolate=args.isolate, progress=args.progress)
    for r in results:
        r.update(batch=settings["batch"], dtype=args.dtype, device=settings["device"])
    metrics = {"fwd": "ms/batch", "mem_fwd": "MiB fwd"}
    exp_md, exps = report.exponent_table([dict(r, N=r["N"] ** 2) for r in results], 512 * 512, metrics)
    payload = dict(header, kind="models", settings=settings, gemm=gemm, results=results, exponents=exps)
    report.write_json(out / "models.json", payload)
    subtitle = f"batch {settings['batch']} {args.dtype} {settings['device']}"
    png = report.plot_models(results, out, subtitle)
    m = payload["machine"]
    md = "\n".join(
        [
            f"Command: `{payload['command']}`  ",
            f"Machine: {m['cpu_model']}, {m['torch_threads']} torch threads, device {m['device_name']}, "
            f"torch {m['torch']}, load average {m['load_average_1_5_15']}, {m['date_utc']} UTC",
            "",
            report.pivot_tables(
                results,
                {"images_per_s": "Images/s (inference)", "mem_fwd": "Peak memory, forward, MiB"},
                size_label="R",
            ),
            "**Scaling exponents vs pixels (R ≥ 512)**\n",
            exp_md,
            "",
            report.detail_table(results, gemm["gflops_best"] if gemm else None),
            "",
            f"![models]({Path(png).name})",
        ]
    )
    (out / "models.md").write_text(md + "\n")
    print(md)
    print(f"wrote {out / 'models.json'}, {out / 'models.md'}, {png}")
    return 0


COMMANDS = [
    Command("bench", "efficiency benchmarks: latency, peak memory, MACs and scaling vs softmax", _add_bench_args,
            run_bench),
]  # fmt: skip
