"""``mirrorla lra {generate,train,eval,compare}``: long-range sequence tasks (LRA-style) with any attention.

``lra train`` and ``lra compare`` take the options of ``train``/``compare`` that apply to a sequence model
(data, optimisation, run) with :data:`~mirrorla.engine.config.LRA_BASE`'s defaults; the work is the one
training loop with the ``long_range`` task, :mod:`mirrorla.engine.lra` and :mod:`mirrorla.engine.lra_compare`.
Time and memory per step from 1K to 16K tokens: ``mirrorla bench lra``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from mirrorla.commands import Interrupted, UsageError, command_family
from mirrorla.commands.compare import compare_config_from_args
from mirrorla.commands.lines import add_json_option, print_json, say, start_line, summary_line
from mirrorla.commands.options import (
    GivenOnly,
    add_comparison_options,
    add_train_config_options,
    check_comparison_out,
    check_out_file,
    check_out_folder,
    device_name,
    positive_int,
    preset_out,
)
from mirrorla.commands.train import (
    _interrupted_train,
    add_run_output_options,
    check_attention_options,
    check_device,
    config_from_args,
    user_errors,
)
from mirrorla.engine.config import (
    LRA_BASE,
    LRA_DEFAULT_ATTENTIONS,
    LRA_DEFAULT_TASKS,
    LRA_PRESETS,
    LRA_TASK_BUDGETS,
    TrainConfig,
)

__all__ = ["COMMANDS", "task_budget"]

#: The LRA-style tasks (mirrorla.data.lra.LRA_TASKS; listed here so that --help imports no torch).
TASK_NAMES = ("listops", "pathfinder32", "pathfinder64", "pathfinder128", "image", "text", "retrieval")

#: TrainConfig fields a sequence model does not read (its size comes from --model).
_NOT_SEQUENCE = (
    "download", "image_size", "augment", "workers", "embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio",
    "drop_path", "mixup", "cutmix", "mixup_switch_prob", "scale", "degradation", "eval_data_dir",
)  # fmt: skip

_LRA_HELP = {
    "dataset": "the task: listops (generated), pathfinder32/64/128 (generated), image (Fashion-MNIST as a 1,024-pixel "
    "sequence), text or retrieval (your copy of LRA's IMDB/AAN TSV files in --data-dir: they cannot be "
    "obtained offline)",
    "data_dir": "a folder with LRA TSV files (text, retrieval; listops reads basic_train.tsv and basic_test.tsv, "
    "the names in LRA's release, from it instead of generating)",
    "train_subset": "training sequences (generated tasks generate this many)",
    "eval_subset": "evaluation sequences",
    "model": "seq_tiny (width 32), seq_small (64, LRA's small config) or seq_base (128, 4 layers)",
    "batch_size": "sequences per step and process",
}


def add_lra_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """--layout, --difficulty, --max-len, --data-seed of a long-range run."""
    g = GivenOnly(p.add_argument_group("long-range task"))
    g.add_argument(
        "--layout",
        choices=["1d", "2d"],
        default=d.layout,
        help="1d: the tokens as one sequence (grid (1, L)); 2d: image tasks on their pixel grid (a separate variant)",
    )
    g.add_argument(
        "--difficulty", choices=["easy", "medium", "hard"], default=d.difficulty, help="Pathfinder's path length "
        "and distractors"
    )  # fmt: skip
    g.add_argument(
        "--max-len", type=positive_int, default=None, help="longest sequence of listops/text/retrieval (default: "
        "the task's: listops 2000, as LRA)"
    )  # fmt: skip
    g.add_argument("--data-seed", type=int, default=d.data_seed, help="seed of the generated data")


def _add_lra_train_args(p: argparse.ArgumentParser) -> None:
    add_train_config_options(
        p,
        LRA_BASE,
        exclude=_NOT_SEQUENCE,
        help_override=_LRA_HELP,
        shown={f: "the task's budget (LRA_TASK_BUDGETS)" for f in ("epochs", "train_subset", "eval_subset")},
    )
    add_lra_options(p, LRA_BASE)
    add_run_output_options(p, LRA_BASE, "runs/lra-train")
    add_json_option(p)


def _check_options(cfg: TrainConfig) -> None:
    from mirrorla.models.sequence import SEQ_SIZES

    size = SEQ_SIZES.get(cfg.model.removeprefix("seq_"))
    if size is None or not cfg.model.startswith("seq_"):
        raise UsageError(f"--model must be one of {', '.join('seq_' + s for s in SEQ_SIZES)}, got {cfg.model!r}")
    if cfg.attention is None:
        raise UsageError("the sequence model needs an --attention (`mirrorla list`)")
    if cfg.dataset not in TASK_NAMES:
        raise UsageError(f"--dataset must be a long-range task ({', '.join(TASK_NAMES)}), got {cfg.dataset!r}")
    check_attention_options(cfg.attention, cfg.attention_kwargs, size.embed_dim, size.num_heads)
    check_device(cfg.device)


def task_budget(preset: str, task: str) -> dict:
    """The budget fields of ``task`` in ``preset`` (:data:`LRA_TASK_BUDGETS`), falling back to ``default``."""
    budgets = LRA_TASK_BUDGETS.get(preset, {})
    return dict(budgets.get(task) or LRA_TASK_BUDGETS["default"].get(task) or {})


@user_errors
def _run_lra_train(args: argparse.Namespace) -> int:
    from mirrorla.engine import train
    from mirrorla.engine.lra import accuracy_by_length, majority_baseline, predict
    from mirrorla.tasks import create_task

    base = LRA_BASE.replace(**task_budget("default", getattr(args, "dataset", LRA_BASE.dataset)))
    cfg = config_from_args(args, base, "runs/lra-train")
    check_out_folder(cfg.out_dir)
    _check_options(cfg)
    datasets = create_task(cfg.task, cfg).build_datasets(cfg)
    say(start_line(cfg, datasets[2]))
    t0 = time.perf_counter()
    try:
        out = train(cfg, datasets)
    except KeyboardInterrupt:
        raise _interrupted_train(cfg, getattr(args, "_argv", ["lra", "train"])) from None
    eval_set, info = datasets[1], datasets[2]
    preds, labels = predict(out["model"], eval_set, cfg.batch_size)
    print(f"majority class: {majority_baseline(info.label_counts):.2f}%")
    if bool(eval_set.lengths.min() != eval_set.lengths.max()):
        _print_by_length(accuracy_by_length(preds, labels, eval_set.lengths))
    say(summary_line(out["final"], "top1", out["run_dir"], time.perf_counter() - t0))
    print_json(args, out["final"])
    return 0


def _print_by_length(rows: list[dict]) -> None:
    print("| length | sequences | top-1 % |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['lo']}–{r['hi']} | {r['count']} | {r['top1']:.2f} |")


def _add_lra_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder, checkpoints/ folder or .safetensors file of a long-range run")
    p.add_argument("--data-dir", default=None, help="the TSV folder, if the run read one from another place")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("--ema", action="store_true", help="use the EMA weights stored in the checkpoint")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sequences per forward")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N")


@user_errors
def _run_lra_eval(args: argparse.Namespace) -> int:
    from mirrorla.engine.lra import accuracy_by_length, load_trained_sequence_model, majority_baseline, predict
    from mirrorla.tasks import create_task

    check_out_file(args.json, "--json")
    model, cfg, _ = load_trained_sequence_model(args.checkpoint, args.device, ema=args.ema)
    if args.data_dir:
        cfg = cfg.replace(data_dir=args.data_dir)
    _, eval_set, info = create_task(cfg.task, cfg).build_datasets(cfg)
    preds, labels = predict(model, eval_set, args.batch_size)
    top1 = 100.0 * float((preds == labels).float().mean())
    rows = accuracy_by_length(preds, labels, eval_set.lengths)
    print(f"{cfg.model} with {cfg.attention} on {cfg.dataset} ({len(eval_set)} evaluation sequences)")
    print(f"top-1 {top1:.2f}%  (majority class {majority_baseline(info.label_counts):.2f}%)")
    _print_by_length(rows)
    if args.json:
        from mirrorla.engine.checkpoint import atomic_write_bytes

        record = {"checkpoint": str(args.checkpoint), "task": cfg.dataset, "top1": top1, "by_length": rows}
        atomic_write_bytes(Path(args.json), json.dumps(record, indent=2).encode())
    return 0


def _add_lra_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=TASK_NAMES, help="the task whose data to generate (or read) and cache")
    p.add_argument("--train-size", type=positive_int, default=None, help="training sequences (default: the task's)")
    p.add_argument("--eval-size", type=positive_int, default=None, help="evaluation sequences (default: the task's)")
    p.add_argument("--difficulty", choices=["easy", "medium", "hard"], default="medium", help="Pathfinder only")
    p.add_argument("--max-len", type=positive_int, default=None, help="listops/text/retrieval sequence length")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generator")
    p.add_argument("--data-dir", default=None, help="a folder of LRA TSV files (text, retrieval, listops)")
    p.add_argument(
        "--show",
        default=None,
        metavar="FILE",
        help="also write the first 8 training examples as a PNG (image tasks) or print the first one (listops)",
    )


@user_errors
def _run_lra_generate(args: argparse.Namespace) -> int:
    import time

    from mirrorla.engine.lra import majority_baseline
    from mirrorla.tasks import create_task

    t0 = time.perf_counter()
    cfg = LRA_BASE.replace(
        dataset=args.task,
        data_dir=args.data_dir,
        train_subset=args.train_size,
        eval_subset=args.eval_size,
        data_seed=args.data_seed,
        max_len=args.max_len,
        difficulty=args.difficulty,
    )
    train_set, eval_set, info = create_task(cfg.task, cfg).build_datasets(cfg)
    lengths = train_set.lengths.float()
    print(
        f"{info.task}: {info.train_size} training / {info.eval_size} evaluation sequences, {info.num_classes} classes, "
        f"vocabulary {info.vocab_size}, max_len {info.max_len}; lengths {int(lengths.min())}–{int(lengths.max())} "
        f"(mean {lengths.mean():.0f}); majority class {majority_baseline(info.label_counts):.2f}% "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    for record in info.files:
        print(f"  {record['path']}")
    if args.show:
        _show(args.show, train_set, info)
    return 0


def _show(path: str, train_set, info) -> None:
    import torch

    if info.grid is not None:
        from mirrorla.engine.lra_figures import plot_examples

        plot_examples(path, train_set, info.grid)
        print(f"wrote {path}")
        return
    x, y = train_set.get_batch(torch.arange(1))
    if info.task == "listops":
        from mirrorla.data.lra.listops import LISTOPS_VOCAB

        names = {i: t for t, i in LISTOPS_VOCAB.items()}
        text = " ".join(names[int(t)] for t in x[0] if int(t) != info.pad_id)
    else:
        text = bytes(int(t) - 1 for t in x.flatten() if int(t) > 0).decode("utf-8", errors="replace")
    print(f"first training example (label {int(y[0])}): {text[:400]}{' …' if len(text) > 400 else ''}")


def _add_lra_compare_args(p: argparse.ArgumentParser) -> None:
    g = add_comparison_options(
        p,
        quick_help="a smoke run of minutes, not a result (tiny per-task budgets)",
        attentions=LRA_DEFAULT_ATTENTIONS,
        seeds_help="comma-separated seeds (default: 0; the CPU budget of the results is one seed per run)",
        out="runs/lra-compare",
    )
    g.add_argument(
        "--tasks",
        default=",".join(LRA_DEFAULT_TASKS),
        help=f"comma-separated tasks, each in its own sub-folder, then a summary table ({', '.join(TASK_NAMES)})",
    )
    g.add_argument(
        "--cost-rounds", type=positive_int, default=3, help="timed training steps per attention for the step cost"
    )
    add_train_config_options(
        p,
        LRA_BASE,
        exclude=(*_NOT_SEQUENCE, "dataset", "attention", "seed", "progress"),
        help_override=_LRA_HELP,
        shown={f: "the task's budget (LRA_TASK_BUDGETS)" for f in ("epochs", "train_subset", "eval_subset")},
    )
    add_lra_options(p, LRA_BASE)


def _tasks(args: argparse.Namespace) -> list[dict]:
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise UsageError(f"--tasks takes distinct names from {', '.join(TASK_NAMES)}, got {args.tasks!r}")
    given = {f: getattr(args, f) for f in ("epochs", "train_subset", "eval_subset", "max_len") if hasattr(args, f)}
    specs = []
    for name in names:
        budget = {**task_budget(args.preset, name), **given}
        if name not in ("listops", "text", "retrieval"):
            budget["max_len"] = None  # images have their fixed length; --max-len is for the text-like tasks
        specs.append(
            {"label": name + ("-2d" if getattr(args, "layout", "1d") == "2d" else ""), "dataset": name, **budget}
        )
    return specs


@user_errors
def _run_lra_compare(args: argparse.Namespace) -> int:
    from mirrorla.engine.lra_compare import run_lra_suite

    args.out = preset_out(args)
    check_out_folder(args.out)
    check_comparison_out(args.out, args.resume, args.overwrite)
    tasks = _tasks(args)
    cc = compare_config_from_args(args, LRA_BASE.replace(progress=False, save_checkpoints=False), LRA_PRESETS, ())
    for spec in tasks:
        for name in cc.attentions:
            _check_options(cc.base.replace(attention=name, dataset=spec["dataset"]))
    try:
        summary = run_lra_suite(cc, tasks, cost_rounds=args.cost_rounds)
    except KeyboardInterrupt:
        again = [a for a in getattr(args, "_argv", ["lra", "compare"]) if a != "--overwrite"]
        again += [] if "--resume" in again else ["--resume"]
        kept = ", ".join(f"{cc.out_dir}/{spec['label']}/runs" for spec in tasks)
        raise Interrupted(
            f"interrupted; finished runs are kept in {kept}. Continue with: mirrorla {shlex.join(again)}"
        ) from None
    folders = ", ".join(f"{args.out}/{label}/" for label in summary["tasks"])
    both = f"; the summary over tasks: {args.out}/summary.md" if len(summary["tasks"]) > 1 else ""
    print(f"wrote results.md, results.json and figures to {folders}{both}")
    return 0


_SUBCOMMANDS = {
    "generate": (
        "generate (or read) a task's data and cache it; print its facts",
        _add_lra_generate_args,
        _run_lra_generate,
    ),
    "train": (
        "train the sequence model on one task (default: seq_tiny with mirror on listops)",
        _add_lra_train_args,
        _run_lra_train,
    ),
    "eval": ("score a trained long-range checkpoint: top-1 and accuracy by length", _add_lra_eval_args, _run_lra_eval),
    "compare": (
        "train the sequence model with each attention on each task; per-task tables and figures, LRA summary table",
        _add_lra_compare_args,
        _run_lra_compare,
    ),
}


COMMANDS = [
    command_family(
        "lra",
        "long-range sequence tasks (ListOps, Pathfinder, sequential image; LRA TSVs): generate, train, eval, compare",
        _SUBCOMMANDS,
    )
]
