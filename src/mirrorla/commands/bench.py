"""``mirrorla bench ops``, ``targets``, ``models``, ``sr`` and ``lra``: run a sweep, print tables, write JSON/PNG.

Examples::

    mirrorla bench ops --quick                       # ~1 minute on a laptop CPU; writes runs/bench/
    mirrorla bench ops --threads 2 --out docs/results/efficiency
    mirrorla bench targets --threads 2 --repeats 5    # the efficiency targets, cases interleaved (~6 min on CPU)
    mirrorla bench models --resolutions 224,384,512,1024
    mirrorla bench sr --sizes 256 512 1024 --attentions softmax mirror   # whole-image SR, no tiling
    mirrorla bench lra --threads 1 --out docs/results/long-range/bench   # a training step, 1K to 16K tokens

The sweeps themselves are in :mod:`mirrorla.bench`; torch is imported when the command runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import importlib.util
import shlex
import sys
from pathlib import Path

from mirrorla.commands import Command, UsageError
from mirrorla.commands.options import (
    add_preset_out,
    check_out_folder,
    device_name,
    positive_float,
    positive_int,
    preset_out,
)

__all__ = ["COMMANDS"]


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (see :func:`mirrorla.engine.checkpoint.atomic_write_bytes`; imports torch, so
    only when a command runs)."""
    from mirrorla.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


_DTYPES = ("float32", "bfloat16", "float16")


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _output_sizes(text: str) -> list[tuple[int, int]]:
    """``"512"`` → [(512, 512)]; ``"768x512"`` → [(768, 512)] (W×H); commas separate several."""
    sizes = []
    for token in (t for t in text.replace(" ", "").lower().replace("×", "x").split(",") if t):
        w, sep, h = token.partition("x")
        try:
            size = (int(w), int(h) if sep else int(w))
        except ValueError:
            size = (0, 0)
        if min(size) <= 0:
            raise argparse.ArgumentTypeError(
                f"expected output sizes like 512 or 768x512 (positive integers, W x H), got {text!r}"
            )
        sizes.append(size)
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected output sizes like 512 or 768x512, got {text!r}")
    return sizes


def _shared(p: argparse.ArgumentParser, quick: str, repeats: str) -> None:
    """Options of every bench kind, ``bench targets`` included (``quick``, ``repeats``: their help)."""
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--device", type=device_name, default="auto", help="'auto' (CUDA if available), 'cpu' or 'cuda[:i]'")
    p.add_argument("--dtype", default="float32", choices=_DTYPES, help="tensor and parameter dtype")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=positive_int, default=5, help=repeats)
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per case and mode")
    add_preset_out(p, "runs/bench", "output folder for the JSON, Markdown and figure files")
    p.add_argument(
        "--gemm-size", type=positive_int, default=2048, help="size of the square matmul that measures the GEMM peak"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the inputs")


def _common(p: argparse.ArgumentParser, *, per_case_budget: bool = True) -> None:
    """Options of every sweep (ops, models, sr, lra); ``per_case_budget=False`` (sr) leaves out --batch and
    --max-case-seconds."""
    _shared(
        p, "tiny sweep, 3 repeats, one worker (about a minute on CPU)", "timed repeats after warm-up (median/min/max)"
    )
    if per_case_budget:
        p.add_argument(
            "--batch", type=positive_int, default=None, help="batch size (default: ops 1; models 1 on CPU, 8 on CUDA)"
        )
        p.add_argument(
            "--max-case-seconds",
            type=positive_float,
            default=120.0,
            help="skip a case whose predicted run time (extrapolated from smaller sizes) is longer",
        )
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each case in its own worker process (--no-isolate: all in one)",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar")


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_what", metavar="{ops,targets,models,sr,lra}", required=True)
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
    ops.add_argument(
        "--compiled",
        default="",
        help="comma-separated registry names or patterns whose layers and cores are also timed through "
        "torch.compile (inductor), as 'NAME (compiled)' beside the eager rows; the first call (compilation) "
        "is reported apart (default: none)",
    )
    ops.add_argument("--fit-from", type=positive_int, default=4096, help="fit scaling exponents over N >= this")
    targets = sub.add_parser(
        "targets",
        help="the efficiency targets (MirrorLA vs ReLU layer, vs projections, vs SDPA, GEMM share), cases interleaved",
        description="Times only the cases the efficiency targets read (projections, SDPA, the MirrorLA and ReLU "
        "linear layers and cores at --size; projections and both layers at --share-size), eager and compiled, "
        "in one process: each of --repeats rounds runs every case once, in an order that rotates, so load drift "
        "on a shared machine hits all cases alike. Prints the targets with the measured reason of each miss; "
        "writes targets.json and targets.md to --out. Peak memory is left to 'bench ops'.",
        formatter_class=fmt,
    )
    _shared(targets, "N 256 and 1,024, 3 rounds, no compiled cases", "interleaved rounds (median over rounds)")
    targets.add_argument("--dim", type=positive_int, default=384, help="channels C")
    targets.add_argument("--heads", type=positive_int, default=6, help="heads H")
    targets.add_argument("--size", type=positive_int, default=16384, help="N of the timing targets")
    targets.add_argument("--share-size", type=positive_int, default=65536, help="N of the GEMM-share target")
    targets.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the torch.compile'd layers and cores (inductor; the first call, compilation, is not timed)",
    )
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
    sr = sub.add_parser(
        "sr",
        help="whole-image super-resolution inference vs output size, no tiling: where softmax breaks",
        formatter_class=fmt,
    )
    _common(sr, per_case_budget=False)
    sr.set_defaults(repeats=3, out="runs/bench-sr")
    sr.add_argument("--model", default="sr_light", help="SR network: sr_tiny, sr_small or sr_light")
    sr.add_argument("--scale", type=positive_int, default=4, help="upscaling factor: 2, 3 or 4")
    sr.add_argument(
        "--sizes",
        type=_output_sizes,
        nargs="+",
        default=None,
        help="output sizes: a side of a square image (512) or WxH (768x512), multiples of --scale "
        "(default: 256 512 1024 1536 2048, --quick 64 128, rounded down to multiples of --scale)",
    )
    sr.add_argument(
        "--attentions",
        nargs="+",
        default=None,
        help="registry names or patterns ('mirror*') (default: softmax linear_relu flatten pola nala l2vit_lga "
        "mirror mirror_dwc)",
    )
    sr.add_argument(
        "--max-seconds",
        type=positive_float,
        default=60.0,
        help="time budget per image: a size predicted (from the smaller sizes) or measured to take longer "
        "ends the attention's sweep",
    )
    sr.add_argument(
        "--max-memory-gb",
        type=positive_float,
        default=None,
        help="peak-memory budget per image in GiB, used as --max-seconds is (default: 80%% of the memory "
        "available at the start: free CUDA memory, or MemAvailable on CPU)",
    )
    _add_lra_args(sub.add_parser(
        "lra",
        help="one training step of the long-range sequence model vs length (1K to 16K tokens): time and memory",
        description="Time (median seconds) and peak memory of one training step (forward, cross-entropy, "
        "backward, AdamW) of the sequence classifier with each attention, length by length, shortest first; "
        "fits log-log exponents and checks them: linear attentions <= 1.1, softmax time >= 1.7. Writes "
        "lra.json, lra.md and lra.png to --out.",
        formatter_class=fmt,
    ))  # fmt: skip


def _add_lra_args(lra: argparse.ArgumentParser) -> None:
    _common(lra)
    lra.set_defaults(out="runs/bench-lra", isolate=False, batch=1)
    for action in lra._actions:  # the shared texts name the other kinds' defaults
        if action.dest == "batch":
            action.help = "sequences per training step (default: 1)"
        elif action.dest == "isolate":
            action.help = "run each case in its own worker process (--no-isolate: one worker per length)"
        elif action.dest == "quick":
            action.help = "lengths 256, 512, 1024 with softmax and mirror, 3 repeats, budget 10 s (about a minute)"
        elif action.dest == "max_case_seconds":
            action.help = (
                "skip a case (and the longer lengths of its attention) whose predicted time, warm-up + timed "
                "repeats + memory step, is longer; predicted from the shorter lengths (default: %(default)s)"
            )
    lra.add_argument("--model", default="seq_tiny", help="sequence model: seq_tiny, seq_small or seq_base")
    lra.add_argument(
        "--lengths",
        type=_ints,
        nargs="+",
        default=None,
        help="sequence lengths L, comma- or space-separated (default: 1024 2048 4096 8192 16384; --quick 256 "
        "512 1024); 16384 = Pathfinder 128×128",
    )
    lra.add_argument(
        "--attentions",
        nargs="+",
        default=None,
        help="registry names or patterns ('mirror*') (default: softmax linear_relu flatten pola nala l2vit_lga "
        "mirror mirror_block mirror_block_var mirror_cross; --quick softmax mirror)",
    )
    lra.add_argument(
        "--max-memory-gb",
        type=positive_float,
        default=None,
        help="peak-memory budget per step in GiB: a length predicted or measured over it ends the attention's "
        "sweep (default: 80%% of the memory available at the start: free CUDA memory, or MemAvailable on CPU)",
    )


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from mirrorla.bench.machine import resolve_device

    args.out = preset_out(args)
    check_out_folder(args.out)
    if args.bench_what != "targets" and importlib.util.find_spec("matplotlib") is None:  # its figures: fail now
        raise ModuleNotFoundError("the bench figures need matplotlib", name="matplotlib")
    sr_cases = _plan_sr(args) if args.bench_what == "sr" else None  # bad input: one line, before any work
    lra_cases = _plan_lra(args) if args.bench_what == "lra" else None
    device = resolve_device(args.device)
    if args.threads is None:
        args.threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.isolate = min(args.repeats, 3), False
        if args.bench_what == "sr":
            args.max_seconds = min(args.max_seconds, 10.0)
        elif args.bench_what == "targets":
            args.size, args.share_size, args.compiled = 256, 1024, False
        else:
            args.max_case_seconds = min(args.max_case_seconds, 10.0)
    settings = {
        "device": str(device),
        "dtype": args.dtype,
        "threads": args.threads,
        "repeats": args.repeats,
        "min_repeats": min(3, args.repeats),
        "warmup": args.warmup,
        "max_case_seconds": getattr(args, "max_case_seconds", None),
        "seed": args.seed,
        "gemm_size": args.gemm_size,
    }
    from mirrorla.engine.run_folder import FolderLockedError, claim_output_folder

    try:  # one bench writes into --out at a time
        with claim_output_folder(args.out, f"bench {args.bench_what}") as out:
            return _run_kind(args, settings, device, out, sr_cases, lra_cases)
    except FolderLockedError as err:
        raise UsageError(str(err)) from None


def _run_kind(args: argparse.Namespace, settings: dict, device, out: Path, sr_cases, lra_cases) -> int:
    from mirrorla.bench.machine import describe_machine
    from mirrorla.bench.memory import CPU_METHOD, CUDA_METHOD

    machine = describe_machine(device)
    machine["torch_threads"] = args.threads
    header = {
        "command": "mirrorla " + " ".join(shlex.quote(a) for a in getattr(args, "_argv", sys.argv[1:])),
        "quick": args.quick,
        "machine": machine,
        "memory_method": CUDA_METHOD if device.type == "cuda" else CPU_METHOD,
        "macs_note": "forward matmul/conv multiply-accumulates (FLOPs/2) counted on the meta device with "
        "torch.utils.flop_counter; elementwise work not counted; SDPA core analytic 2·B·H·N²·D",
    }
    if args.bench_what == "ops":
        return _run_ops(args, settings, header, out)
    if args.bench_what == "targets":
        return _run_targets(args, settings, header, out)
    if args.bench_what == "sr":
        return _run_sr(args, sr_cases, settings, header, out)
    if args.bench_what == "lra":
        return _run_lra(args, lra_cases, settings, header, out)
    return _run_models(args, settings, header, out)


def _select_methods(spec: str, option: str = "--methods") -> list[str]:
    from mirrorla.registry import list_attentions

    names = list_attentions()
    chosen = []
    for pat in (p.strip() for p in spec.split(",") if p.strip()):
        hits = [n for n in names if fnmatch.fnmatch(n, pat)]
        if not hits:
            raise UsageError(f"{option}: no registered attention matches {pat!r}; registered: {', '.join(names)}")
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
    compiled = _select_methods(args.compiled) if args.compiled.strip() else []
    groups = ops_cases.plan_ops_cases(methods, sizes, core=args.core, compiled=compiled)
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
    _write_text(out / "ops.md", md)
    print(md)
    print(f"wrote {out / 'ops.json'}, {out / 'ops.md'}, " + ", ".join(pngs))
    return 0


def _quick_note() -> str:
    from mirrorla.engine.config import QUICK_NOTES

    return QUICK_NOTES["bench"]


def _command_and_machine(payload: dict) -> list[str]:
    """The first Markdown lines of a report: the command and the machine it ran on (and, for ``--quick``,
    that it is a smoke run)."""
    m = payload["machine"]
    return [
        f"Command: `{payload['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
        f"device {m['device_name']}, torch {m['torch']}, load average {m['load_average_1_5_15']}, "
        f"{m['date_utc']} UTC  ",
        *([f"{_quick_note()}  "] if payload.get("quick") else []),
    ]


def _run_targets(args, settings, header, out: Path) -> int:
    from mirrorla.bench import report
    from mirrorla.bench.machine import measure_gemm_peak
    from mirrorla.bench.targets import TARGET_METHODS, plan_target_cases, run_interleaved

    if args.share_size <= args.size:
        raise UsageError(f"--share-size ({args.share_size}) must be larger than --size ({args.size})")
    settings.update(batch=1, dim=args.dim, heads=args.heads)
    cases = plan_target_cases(args.size, args.share_size, args.compiled)
    print(
        f"mirrorla bench targets: {len(cases)} cases at N = {args.size:,} and {args.share_size:,}, "
        f"C={args.dim} H={args.heads} {args.dtype} on {settings['device']}, {args.threads} threads, "
        f"{args.repeats} interleaved rounds",
        flush=True,
    )
    import torch

    gemm = measure_gemm_peak(settings["device"], getattr(torch, args.dtype), args.gemm_size)
    results = run_interleaved(cases, settings, args.repeats, args.warmup, say=lambda m: print(m, flush=True))
    targets = report.evaluate_targets(
        results, gemm["gflops_best"], list(TARGET_METHODS), n1=args.size, n2=args.share_size
    )
    targets = [t for t in targets if not t["target"].startswith("max peak-memory")]  # bench ops measures memory
    payload = dict(header, kind="targets", settings=settings, gemm=gemm, results=results, targets=targets)
    rows = [
        "| kind | method | N | fwd ms (median [min–max]) | fwd+bwd ms (median [min–max]) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        cells = [
            f"{r[mode]['median_ms']:,.1f} [{r[mode]['min_ms']:,.1f}–{r[mode]['max_ms']:,.1f}]" if mode in r else "–"
            for mode in ("fwd", "fwdbwd")
        ]
        rows.append(f"| {r['kind']} | {r['method']} | {r['N']:,} | " + " | ".join(cells) + " |")
    md = "\n".join(
        [
            *_command_and_machine(payload),
            f"GEMM peak ({gemm['size']}³ {gemm['dtype']}): best {gemm['gflops_best']:.1f} GFLOP/s. "
            f"{args.repeats} interleaved rounds; every ratio below is of medians from the same rounds.",
            "",
            "**Targets** (peak memory: see `mirrorla bench ops`)\n",
            report.targets_table(targets),
            "",
            "**Cases**\n",
            *rows,
            "",
        ]
    )
    first = report.first_call_table(results)
    if first:
        md += "\n**First call of the compiled cases** (compilation included; not in the rounds)\n\n" + first + "\n"
    report.write_json(out / "targets.json", payload)
    _write_text(out / "targets.md", md)
    print(md)
    print(f"wrote {out / 'targets.json'}, {out / 'targets.md'}")
    return 0


def _ops_markdown(payload, exp_md, pngs) -> str:
    from mirrorla.bench import report

    res, gemm = payload["results"], payload["gemm"]
    parts = [
        *_command_and_machine(payload),
        f"GEMM peak ({gemm['size']}³ {gemm['dtype']}): best {gemm['gflops_best']:.1f} GFLOP/s, median "
        f"{gemm['gflops_median']:.1f} GFLOP/s; copy-bandwidth peak ({gemm.get('bandwidth_mib', '–')} MiB): best "
        f"{gemm.get('bandwidth_gbs_best', float('nan')):.1f} GB/s. Timing: "
        + ("CUDA events" if str(payload["settings"]["device"]).startswith("cuda") else "wall clock")
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
    first = report.first_call_table(res)
    if first:
        parts += ["**First call of the compiled cases** (compilation included; the timed runs come after)\n", first, ""]
    peaks = (gemm["gflops_best"], gemm.get("bandwidth_gbs_best")) if gemm else (None, None)
    parts += ["**Every case**\n", report.detail_table(res, *peaks), ""]
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
            f"torch {m['torch']}, load average {m['load_average_1_5_15']}, {m['date_utc']} UTC  ",
            *([_quick_note()] if payload.get("quick") else []),
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
    _write_text(out / "models.md", md + "\n")
    print(md)
    print(f"wrote {out / 'models.json'}, {out / 'models.md'}, {png}")
    return 0


def _attentions(args, default: tuple[str, ...]) -> list[str]:
    """The ``--attentions`` of ``bench sr`` / ``bench lra`` (registry names or patterns), else ``default``."""
    if args.attentions:
        return _select_methods(",".join(args.attentions), option="--attentions")
    return list(default)


def _memory_budget(device: str, max_memory_gb: float | None) -> tuple[int, str]:
    """The peak bytes allowed per image (sr) or step (lra), and where the number comes from."""
    import torch

    from mirrorla.bench.memory import available_memory_bytes

    if max_memory_gb is not None:
        return int(max_memory_gb * 2**30), "--max-memory-gb"
    free = available_memory_bytes(torch.device(device))
    if free is None:
        raise UsageError("cannot read the available memory of this machine; pass --max-memory-gb")
    return int(0.8 * free), f"80% of the {free / 2**30:.1f} GiB available at the start"


def _run_staged(
    args, cases: list[dict], settings: dict, count_macs, sweep, intro: tuple[str, str], **fields
) -> tuple[list[dict], dict]:
    """Say what runs (``intro``: the cases, the budget), count the MACs of ``cases``, measure the GEMM peak, run
    ``sweep`` (``run_sr_sweep`` or ``run_lra_sweep`` with its budget and settings bound) and add ``fields``, the
    dtype and the device to every record."""
    import torch

    from mirrorla.bench.machine import measure_gemm_peak

    what, budget_text = intro
    print(
        f"mirrorla bench {args.bench_what}: {what}, {args.dtype} on {settings['device']}, {args.threads} threads; "
        f"budget {budget_text}",
        flush=True,
    )
    device = torch.device(settings["device"])
    cases, build_errors = count_macs(cases)
    gemm = measure_gemm_peak(device, getattr(torch, args.dtype), size=args.gemm_size)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    results = sweep(
        cases,
        gemm_gflops=gemm["gflops_best"],
        build_errors=build_errors,
        isolate=args.isolate,
        progress=args.progress,
    )
    for r in results:
        r.update(fields, dtype=args.dtype, device=settings["device"])
    return results, gemm


def _write_outputs(out: Path, kind: str, payload: dict, png: str, markdown: str) -> int:
    """Write ``<kind>.json`` (with the paths of the files) and ``<kind>.md``, and print the Markdown."""
    from mirrorla.bench import report

    json_path, md_path = out / f"{kind}.json", out / f"{kind}.md"
    if payload.get("quick") and _quick_note() not in markdown:
        markdown = _quick_note() + "\n\n" + markdown
    payload["files"] = {"json": str(json_path), "markdown": str(md_path), "plot": png}
    report.write_json(json_path, payload)
    _write_text(md_path, markdown)
    print(markdown, end="")
    print(f"wrote {json_path}, {md_path}, {png}")
    return 0


def _plan_sr(args) -> list[dict]:
    """The SR cases of the command line; a bad model, scale, size or attention is a one-line UsageError."""
    from mirrorla.bench import sr
    from mirrorla.models.sr import SR_SCALES

    if args.model not in sr.SR_MODELS:
        raise UsageError(f"--model: unknown SR model {args.model!r}; valid models: {', '.join(sr.SR_MODELS)}")
    if args.scale not in SR_SCALES:
        raise UsageError(f"--scale: the SR network upscales by {', '.join(map(str, SR_SCALES))}, got {args.scale}")
    attentions = _attentions(args, sr.DEFAULT_ATTENTIONS)
    if args.sizes:
        sizes = [size for group in args.sizes for size in group]
    else:  # the default sides, rounded down to multiples of the scale
        sizes = [(n - n % args.scale,) * 2 for n in (sr.QUICK_SIZES if args.quick else sr.DEFAULT_SIZES)]
    try:
        return sr.plan_sr_cases(args.model, attentions, sizes, args.scale)
    except ValueError as err:
        raise UsageError(f"--sizes: {err}") from None


def _run_sr(args, cases: list[dict], settings: dict, header: dict, out: Path) -> int:
    from mirrorla.bench import report, sr

    max_memory, memory_source = _memory_budget(settings["device"], args.max_memory_gb)
    budget = sr.SRBudget(args.max_seconds, max_memory)
    settings.pop("max_case_seconds")
    settings.update(
        batch=1,
        min_repeats=1,
        model=args.model,
        scale=args.scale,
        sizes=list(dict.fromkeys(c["size"] for c in cases)),
        attentions=list(dict.fromkeys(c["method"] for c in cases)),
    )
    budget_out = {"max_seconds": budget.max_seconds, "max_memory_bytes": max_memory, "max_memory_source": memory_source}
    sweep = functools.partial(sr.run_sr_sweep, budget=budget, settings=settings)
    what = f"{args.model} x{args.scale}, {settings['attentions']} at output {settings['sizes']}, batch 1"
    budget_text = f"per image {budget.max_seconds:g} s and {max_memory / 2**30:.2f} GiB ({memory_source})"
    results, gemm = _run_staged(args, cases, settings, sr.count_sr_macs, sweep, (what, budget_text), batch=1)
    largest = sr.largest_within_budget(results)
    targets = sr.evaluate_sr_targets(results, largest)
    payload = dict(
        header,
        kind="sr",
        settings=settings,
        budget=budget_out,
        gemm=gemm,
        results=results,
        largest_within_budget=largest,
        targets=targets,
    )
    subtitle = f"{args.model} x{args.scale}, batch 1, {args.dtype}, {settings['device']}, {args.threads} threads"
    png = report.plot_sr(results, out, subtitle, budget.max_seconds, max_memory)
    m = payload["machine"]
    md = "\n".join(
        [
            f"Command: `{payload['command']}`  ",
            f"Machine: {m['cpu_model']}, {m['torch_threads']} torch threads, device {m['device_name']}, "
            f"torch {m['torch']}, load average {m['load_average_1_5_15']}, {m['date_utc']} UTC  ",
            f"Model: {args.model} x{args.scale} with global attention over all N = h·w LR pixels; batch 1, "
            f"{args.dtype}, one forward per image under torch.inference_mode(), no tiling.  ",
            f"Budget per image: {budget.max_seconds:g} s and {max_memory / 2**30:.2f} GiB ({memory_source}); a "
            "size predicted or measured over it ends that attention's sweep.  ",
            f"Latency: median of up to {args.repeats} timed forwards after {max(1, args.warmup)} warm-up; a case "
            f"whose warm-up took longer than {budget.max_seconds:g} s / {args.repeats} gets fewer, down to 1 (column "
            "'repeats' below). Peak memory: one more forward; " + payload["memory_method"] + ".",
            "",
            "**Latency · peak memory per image** (skipped: predicted seconds per image)\n",
            report.sr_pivot_table(results),
            "",
            "**Largest single-pass image within budget**\n",
            report.sr_largest_table(largest),
            "",
            "**Targets**\n",
            report.targets_table(targets),
            "",
            "**Every case**\n",
            report.sr_detail_table(results),
            "",
            f"![sr]({Path(png).name})",
        ]
    )
    return _write_outputs(out, "sr", payload, png, md + "\n")


def _plan_lra(args) -> list[dict]:
    """The cases of ``bench lra``; a bad model, length or attention is a one-line UsageError."""
    from mirrorla.bench import lra

    if args.model not in lra.LRA_MODELS:
        raise UsageError(f"--model: unknown sequence model {args.model!r}; valid models: {', '.join(lra.LRA_MODELS)}")
    attentions = _attentions(args, lra.QUICK_ATTENTIONS if args.quick else lra.DEFAULT_ATTENTIONS)
    if args.lengths:
        lengths = [n for group in args.lengths for n in group]
    else:
        lengths = list(lra.QUICK_LENGTHS if args.quick else lra.DEFAULT_LENGTHS)
    try:
        return lra.plan_lra_cases(args.model, attentions, lengths, args.batch or 1)
    except ValueError as err:
        raise UsageError(f"--lengths: {err}") from None


def _run_lra(args, cases: list[dict], settings: dict, header: dict, out: Path) -> int:
    import time

    from mirrorla.bench import lra, report
    from mirrorla.registry import get_attention_entry

    started = time.perf_counter()
    max_memory, memory_source = _memory_budget(settings["device"], args.max_memory_gb)
    budget = lra.StepBudget(args.max_case_seconds, max_memory)
    attentions = list(dict.fromkeys(c["method"] for c in cases))
    backend = lra.softmax_backend(settings["device"])
    settings.update(
        batch=cases[0]["batch"],
        model=args.model,
        lengths=list(dict.fromkeys(c["N"] for c in cases)),
        attentions=attentions,
        vocab_size=lra.VOCAB_SIZE,
        num_classes=lra.NUM_CLASSES,
        layout="1-D: hw = (1, L), no padding",
        optimizer=f"AdamW (mirrorla.engine.optim.create_optimizer) lr {lra.LR:g}, weight decay {lra.WEIGHT_DECAY:g}",
        softmax_backend=backend,
    )
    steps = lra.case_steps(settings)
    budget_out = {
        "max_case_seconds": budget.max_case_seconds,
        "steps_per_case_at_least": steps,
        "max_memory_bytes": max_memory,
        "max_memory_source": memory_source,
    }
    sweep = functools.partial(lra.run_lra_sweep, budget=budget, settings=settings)
    what = f"{args.model}, {attentions} at L = {settings['lengths']}, batch {settings['batch']}"
    budget_text = (
        f"per case {budget.max_case_seconds:g} s (≥ {steps} steps) and {max_memory / 2**30:.2f} GiB per step "
        f"({memory_source})"
    )
    results, gemm = _run_staged(args, cases, settings, lra.count_lra_macs, sweep, (what, budget_text))
    scaling = lra.lra_scaling(results)
    linear = [m for m in attentions if getattr(get_attention_entry(m).cls, "is_linear", False)]
    targets = lra.evaluate_lra_targets(scaling, linear, backend=lra.softmax_backend(settings["device"], short=True))
    wall = time.perf_counter() - started
    payload = dict(
        header,
        kind="lra",
        settings=settings,
        budget=budget_out,
        gemm=gemm,
        linear_attentions=linear,
        tolerances={
            "linear_max_exponent": lra.LINEAR_MAX_EXPONENT,
            "softmax_min_exponent": lra.SOFTMAX_MIN_EXPONENT,
            "why": "linear cost has exponent 1; fixed per-step costs pull short-length fits below 1, and ±10% "
            "timing noise at either end of a 16× range moves the slope by ≈ 0.03; 1.1 allows 16^0.1 ≈ 1.32× "
            "more than linear growth over 16× the tokens, far below a quadratic term's 16×",
        },
        results=results,
        scaling=scaling,
        targets=targets,
        wall_seconds=wall,
    )
    subtitle = f"{args.model}, batch {settings['batch']}, {args.dtype}, {settings['device']}, {args.threads} threads"
    png = report.plot_lra(results, scaling, out, subtitle)
    return _write_outputs(out, "lra", payload, png, _lra_markdown(args, payload, png))


def _lra_markdown(args, payload: dict, png: str) -> str:
    from mirrorla.bench import lra, report

    s, b = payload["settings"], payload["budget"]
    targets, linear = payload["targets"], payload["linear_attentions"]
    both = [name for name in linear if all(t["met"] for t in targets if t["target"].startswith(f"{name}: "))]
    others = [a for a in s["attentions"] if a not in linear and a != "softmax"]
    gemm = payload["gemm"]
    parts = [
        *_command_and_machine(payload),
        f"Wall time of the run: {payload['wall_seconds'] / 60:.1f} min. GEMM peak ({gemm['size']}³ {gemm['dtype']}): "
        f"best {gemm['gflops_best']:.1f} GFLOP/s.  ",
        f"Model: {s['model']} (mirrorla.models.create_model) with each attention, vocabulary {s['vocab_size']}, "
        f"{s['num_classes']} classes, {s['layout']}; batch {s['batch']}, {s['dtype']}.  ",
        f"One training step: forward, cross-entropy, backward, {s['optimizer']} step (AdamW's state created "
        "beforehand, so every step is a steady-state one), gradients set to None.  ",
        f"Seconds per step: median of up to {s['repeats']} timed steps after {max(1, s['warmup'])} warm-up (at "
        f"least {s['min_repeats']}; fewer than {s['repeats']} when they would take over a third of the budget). "
        "Peak memory per step: one more step, after every timing of its worker; " + payload["memory_method"] + ".  ",
        f"Budget per case: {b['max_case_seconds']:g} s for its ≥ {b['steps_per_case_at_least']} steps, and "
        f"{b['max_memory_bytes'] / 2**30:.2f} GiB per step ({b['max_memory_source']}); a length predicted or "
        "measured over it ends that attention's sweep.",
        "",
        "**Seconds per training step** (skipped: predicted)\n",
        report.lra_pivot_table(payload["results"], "time"),
        "",
        "**Peak memory per training step** (above the model, its optimiser state and the inputs)\n",
        report.lra_pivot_table(payload["results"], "memory"),
        "",
        "**Scaling** (exponent: least-squares log-log slope over every measured length; 1 = linear, 2 = quadratic)\n",
        report.lra_scaling_table(payload["scaling"]),
        "",
        f"**Targets** (linear attentions: time and memory exponents ≤ {lra.LINEAR_MAX_EXPONENT}; softmax ≥ "
        f"{lra.SOFTMAX_MIN_EXPONENT}; MISSED = not met)\n",
        report.targets_table(targets),
        "",
        f"Linear attentions meeting both targets: {len(both)} of {len(linear)}"
        + (f" ({', '.join(both)})" if both else "")
        + ".  ",
        f"Tolerance: {payload['tolerances']['why']}.  ",
        f"Softmax in this run: {s['softmax_backend']}.",
    ]
    if others:
        parts.append(f"No target for {', '.join(others)} (neither a linear attention nor the softmax reference).")
    parts += ["", "**Every case**\n", report.lra_detail_table(payload["results"]), "", f"![lra]({Path(png).name})"]
    return "\n".join(parts) + "\n"


COMMANDS = [
    Command("bench", "efficiency benchmarks: latency, peak memory, MACs and scaling vs softmax", _add_bench_args,
            run_bench),
]  # fmt: skip
