"""``mirrorla compare``: every option of ``train`` (the same option groups), plus the comparison's own.

The work is :func:`mirrorla.engine.compare.run_compare`; this module only turns arguments into a
:class:`~mirrorla.engine.config.CompareConfig`.
"""

from __future__ import annotations

import argparse
import shlex

from mirrorla.commands import Command, Interrupted
from mirrorla.commands.options import (
    add_comparison_options,
    add_train_config_options,
    check_comparison_out,
    check_out_folder,
    given_config_fields,
    positive_int,
    preset_out,
)
from mirrorla.commands.train import check_attention_options, check_device, user_errors
from mirrorla.engine.config import BASE, DEFAULT_ATTENTIONS, PRESETS, CompareConfig, TrainConfig, describe_preset

__all__ = ["COMMANDS", "compare_config_from_args"]

#: Options whose default is the preset's.
PRESET_FIELDS = ("epochs", "train_subset", "eval_subset")


def _preset_default(field: str) -> str:
    def words(value):
        return "all" if value is None else str(value)

    return f"the preset's: {words(PRESETS['default'][field])}, with --quick {words(PRESETS['quick'][field])}"


def add_compare_args(p: argparse.ArgumentParser) -> None:
    g = add_comparison_options(
        p,
        quick_help=f"the ~5-minute CPU preset: {describe_preset('quick')} (without it: {describe_preset('default')})",
        attentions=DEFAULT_ATTENTIONS,
        seeds_help="comma-separated seeds (default: the preset's: 0,1,2; --quick 0)",
        out="runs/compare",
    )
    g.add_argument("--throughput-iters", type=positive_int, default=10, help="timed forwards per round for eval img/s")
    g.add_argument(
        "--throughput-rounds",
        type=positive_int,
        default=5,
        help="eval img/s is the median over this many rounds, the attentions taking turns (after training)",
    )
    add_train_config_options(
        p,
        BASE,
        exclude=("attention", "seed", "progress"),
        shown={f: _preset_default(f) for f in PRESET_FIELDS},
        help_override={"threads": "torch CPU threads per training process (default: cores // jobs)"},
    )


def compare_config_from_args(
    args: argparse.Namespace,
    base: TrainConfig = BASE,
    presets: dict[str, dict] = PRESETS,
    preset_fields: tuple[str, ...] = PRESET_FIELDS,
    **own: object,
) -> CompareConfig:
    """The comparison of parsed ``compare`` (or ``sr compare``) arguments: ``base``, then the preset's
    ``preset_fields`` and seeds, then every option given; ``own``: the command's own CompareConfig fields."""
    preset = presets[args.preset]
    # --resume, --overwrite and --progress are the comparison's (CompareConfig), not its runs' (TrainConfig):
    # the runs print no epoch bars of their own, the job has one bar over all runs.
    given = {k: v for k, v in given_config_fields(args).items() if k not in ("resume", "overwrite", "progress")}
    return CompareConfig(
        attentions=tuple(a.strip() for a in args.attentions.split(",") if a.strip()),
        seeds=args.seeds if args.seeds is not None else preset["seeds"],
        base=base.replace(**{**{f: preset[f] for f in preset_fields}, **given}),
        out_dir=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        jobs=args.jobs,
        preset=args.preset,
        progress=args.progress,
        **own,
    )


def _interrupted(cc: CompareConfig, argv: list[str]) -> Interrupted:
    from mirrorla.engine.compare import finished_runs

    done, total = finished_runs(cc)
    again = [a for a in argv if a != "--overwrite"]
    again += [] if "--resume" in again else ["--resume"]
    return Interrupted(
        f"interrupted; {done} of {total} runs are finished and kept in {cc.out_dir}/runs (unfinished ones continue "
        "from their last epoch checkpoint). "
        f"Continue with: mirrorla {shlex.join(again)}"
    )


@user_errors
def run_compare_cmd(args: argparse.Namespace) -> int:
    from mirrorla.engine.compare import run_compare

    args.out = preset_out(args)
    check_out_folder(args.out)
    check_comparison_out(args.out, args.resume, args.overwrite)
    cc = compare_config_from_args(
        args, throughput_iters=args.throughput_iters, throughput_rounds=args.throughput_rounds
    )
    for name in cc.attentions:
        check_attention_options(name, cc.base.attention_kwargs, cc.base.embed_dim, cc.base.num_heads)
    check_device(cc.base.device)
    try:
        results = run_compare(cc)
    except KeyboardInterrupt:
        raise _interrupted(cc, getattr(args, "_argv", ["compare"])) from None
    print(
        f"wrote {args.out}/results.md, results.json, accuracy_curves.png, accuracy_vs_throughput.png "
        f"({results['wall_s']:.0f} s)"
    )
    return 0


COMMANDS = [
    Command(
        "compare",
        "train the same small ViT with each attention and print the comparison table",
        add_compare_args,
        run_compare_cmd,
    )
]
