"""``mirrorla train`` and ``mirrorla eval``.

``train`` runs unchanged under ``torchrun --nproc_per_node=N -m mirrorla.cli train ...`` (DDP).
Every option maps to a :class:`~mirrorla.engine.config.TrainConfig` field of the same name.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import shlex
import time
from pathlib import Path
from typing import Any

from mirrorla.commands import Command, Interrupted, UsageError
from mirrorla.commands.lines import (
    add_json_option,
    data_words,
    eval_line,
    is_main_process,
    print_json,
    say,
    start_line,
    summary_line,
    where,
)
from mirrorla.commands.options import (
    GivenOnly,
    add_train_config_options,
    check_out_folder,
    device_name,
    given_config_fields,
    positive_int,
)
from mirrorla.engine.config import TrainConfig

__all__ = ["COMMANDS", "config_from_args", "check_attention_options", "check_device", "user_errors", "load_datasets"]


def user_errors(run):
    """Turn the engine's errors about bad input (settings, data, folders, checkpoints, a diverging run, a
    full disk) into a :class:`UsageError`: one line, exit status 2. Other errors keep their traceback."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from mirrorla.engine.checkpoint import CheckpointError, output_write_error
        from mirrorla.engine.trainer import TrainingDivergedError

        try:
            return run(args)
        except (ValueError, FileNotFoundError, CheckpointError, TrainingDivergedError) as err:
            raise UsageError(str(err)) from err
        except OSError as err:  # disk full, read-only file system, permission denied: the path and what to do
            explained = output_write_error(err)
            if explained is None:
                raise
            raise UsageError(str(explained)) from err

    return wrapper


#: Arguments the model passes to every attention layer itself; an --attn-opt cannot set them.
MODEL_SET_OPTIONS = (
    "dim", "num_heads", "num_prefix_tokens", "qkv_bias", "qk_norm", "proj_bias", "attn_drop", "proj_drop",
    "norm_layer", "scale_norm", "device", "dtype",
)  # fmt: skip


def _attention_option_names(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        keywords = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        names += [n for n in keywords if n not in names and not n.startswith("_")]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def check_attention_options(attention: str | None, options: dict[str, Any], dim: int, num_heads: int) -> None:
    """``UsageError`` for an ``--attn-opt`` the attention does not take, or one the model sets itself."""
    if not options:
        return
    if attention is None:
        raise UsageError(f"--attn-opt {', '.join(options)} needs an --attention (not 'none')")
    from mirrorla.registry import create_attention, get_attention_entry

    try:
        entry = get_attention_entry(attention)
    except ValueError as err:
        raise UsageError(str(err)) from err
    valid = [n for n in _attention_option_names(entry.cls) if n not in MODEL_SET_OPTIONS]
    feature_map = entry.defaults.get("feature_map")
    if isinstance(feature_map, str):  # options of the named feature map are layer keywords too (alpha_init, ...)
        from mirrorla.feature_maps import feature_map_options

        valid += sorted(feature_map_options(feature_map) - set(valid))
    for key in options:
        if key in MODEL_SET_OPTIONS:
            raise UsageError(f"--attn-opt {key}: the model sets {key} of its attention layers itself; leave it out")
        if key not in valid:
            raise UsageError(f"--attn-opt {key}: attention {attention!r} has no option {key!r}; its options: "
                             f"{', '.join(valid) or 'none'}")  # fmt: skip
    try:
        create_attention(attention, dim, num_heads=num_heads, **options)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--attn-opt {', '.join(f'{k}={v!r}' for k, v in options.items())}: {err}") from err


def check_device(name: str) -> None:
    """``UsageError`` now, before any data is read, for a ``--device`` this machine lacks."""
    from mirrorla.engine.distributed import resolve_device

    try:
        resolve_device(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def load_datasets(cfg: TrainConfig):
    """(train, eval, info) of ``cfg``, built by its task; a subset larger than its split raises there."""
    from mirrorla.tasks import create_task

    return create_task(cfg.task, cfg).build_datasets(cfg)


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    add_train_config_options(p, d)
    add_run_output_options(p, d, "runs/train")
    add_json_option(p)


def add_run_output_options(p: argparse.ArgumentParser, d: TrainConfig, default_out: str) -> None:
    """--out, --resume, --overwrite, --checkpoints, --keep-checkpoints of a training run (defaults from ``d``)."""
    g = GivenOnly(p.add_argument_group("output"))
    g.add_argument(
        "--out",
        dest="out_dir",
        help=f"run folder for metrics and checkpoints (default: {default_out}, or the resumed run's folder); "
        "a new run needs an empty or new folder, or --overwrite",
    )
    g.add_argument(
        "--resume",
        help="continue from a run folder or checkpoint file with that run's settings, in that run's folder; "
        "options given here override them, and any that would change the result are refused",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start the new run even if --out holds files: the previous run's outputs there are deleted",
    )
    g.add_argument(
        "--checkpoints",
        dest="save_checkpoints",
        action=argparse.BooleanOptionalAction,
        default=d.save_checkpoints,
        help="write a checkpoint after every epoch",
    )
    g.add_argument(
        "--keep-checkpoints", type=positive_int, default=d.keep_checkpoints, help="how many epochs' checkpoints to keep"
    )


def config_from_args(
    args: argparse.Namespace, base: TrainConfig | None = None, default_out: str = "runs/train"
) -> TrainConfig:
    """The TrainConfig of parsed ``train`` (or ``sr train``) arguments.

    The namespace holds only the options given on the command line (see
    :class:`~mirrorla.commands.options.GivenOnly`); a new run takes the others from ``base``
    (default: :class:`~mirrorla.engine.config.TrainConfig`'s defaults). With ``--resume``, the resumed
    run's saved settings are the base and every option given overrides them, also one given at its default value
    (``mirrorla train --resume DIR`` alone continues the run as it was started);
    :func:`~mirrorla.engine.train` then refuses those that change the result. The run continues in
    the folder that holds the checkpoint, which may be a copy of the one its saved settings name.
    """
    given = given_config_fields(args)
    resume = given.pop("resume", None)
    if not resume:
        return (base or TrainConfig()).replace(**{"out_dir": default_out, **given})
    if given.get("overwrite"):
        raise ValueError(
            f"--resume {resume} continues the run in its folder and --overwrite replaces a run with a new one: "
            "pass one of them"
        )
    from mirrorla.engine.checkpoint import load_checkpoint
    from mirrorla.engine.run_folder import resumed_run_folder

    saved = load_checkpoint(resume)["state"]["config"]
    folder = resumed_run_folder(resume)
    own_folder = {"out_dir": str(folder)} if folder is not None else {}
    return TrainConfig.from_dict({**saved, "overwrite": False, **own_folder, **given, "resume": resume})


def _interrupted_train(cfg: TrainConfig, argv: list[str]) -> Interrupted:
    """What an interrupted ``train`` kept, and the command that continues it."""
    from mirrorla.engine.checkpoint import CheckpointError, load_checkpoint

    folder = cfg.out_dir
    if folder is None and cfg.resume:
        from mirrorla.engine.run_folder import resumed_run_folder

        folder = str(resumed_run_folder(cfg.resume) or "")
    try:
        checkpoint = load_checkpoint(folder) if folder and cfg.save_checkpoints else None
    except (CheckpointError, ValueError, OSError):  # none yet (FileNotFoundError is an OSError)
        checkpoint = None
    if checkpoint is None or checkpoint["state"] is None:
        again = "mirrorla " + shlex.join([a for a in argv if a != "--overwrite"] + ["--overwrite"])
        return Interrupted(f"interrupted; no checkpoint was saved in {folder}. Start again with: {again}")
    return Interrupted(
        f"interrupted; the checkpoint of epoch {checkpoint['state']['epoch'] + 1}/{cfg.epochs} is saved in {folder} "
        f"({Path(checkpoint['path']).name}). "
        f"Continue with: mirrorla train --resume {shlex.quote(str(folder))}"
    )


@user_errors
def run_train(args: argparse.Namespace) -> int:
    from mirrorla.engine import train

    cfg = config_from_args(args)
    check_out_folder(cfg.out_dir)
    check_attention_options(cfg.attention, cfg.attention_kwargs, cfg.embed_dim, cfg.num_heads)
    check_device(cfg.device)
    datasets = load_datasets(cfg)
    say(start_line(cfg, datasets[2]))
    t0 = time.perf_counter()
    try:
        out = train(cfg, datasets)
    except KeyboardInterrupt:
        raise _interrupted_train(cfg, getattr(args, "_argv", ["train"])) from None
    say(summary_line(out["final"], "top1", out["run_dir"], time.perf_counter() - t0))
    if is_main_process():
        print_json(args, out["final"])
    return 0


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="run folder, checkpoints/ folder, .safetensors or .state.pt file, or weights shipped with mirrorla: "
        "pretrained:vit_micro_mirror.fmnist (`mirrorla models --pretrained`)",
    )
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights stored in the checkpoint")
    p.add_argument("--data-dir", default=None, help="where the data is (default: the folder recorded in the run)")
    p.add_argument(
        "--eval-subset",
        type=positive_int,
        default=None,
        help="evaluate on a fixed random subset of this size (default: the run's)",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--throughput", action="store_true", help="also report MACs and inference images/s")
    add_json_option(p)


@user_errors
def run_eval(args: argparse.Namespace) -> int:
    from mirrorla.data import build_datasets
    from mirrorla.engine import count_macs, create_classifier, evaluate, load_checkpoint
    from mirrorla.engine.checkpoint import checkpoint_config
    from mirrorla.engine.distributed import setup_distributed
    from mirrorla.engine.model import measure_throughput

    ckpt = load_checkpoint(args.checkpoint, weights_only=True)
    cfg = checkpoint_config(ckpt, args.checkpoint).replace(device=args.device)
    if cfg.task != "classification":
        raise UsageError(f"{args.checkpoint} is a {cfg.task} run; evaluate it with `mirrorla sr eval`")
    changes: dict[str, Any] = {}
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    if args.eval_subset is not None:
        changes["eval_subset"] = args.eval_subset
    cfg = cfg.replace(**changes)
    env = setup_distributed(cfg.device)
    _, eval_set, info = build_datasets(
        cfg.dataset,
        data_dir=cfg.data_dir,
        image_size=cfg.image_size,
        augment=False,
        train_subset=1,
        eval_subset=cfg.eval_subset,
        download=cfg.download,
    )
    kind = "EMA weights" if args.ema else "weights"
    print(
        f"evaluating {cfg.model} with attention {cfg.attention} ({kind} of {args.checkpoint}) on "
        f"{data_words(info, eval_only=True)}; {where(cfg)}",
        flush=True,
    )
    model = create_classifier(cfg, info.num_classes, info.in_chans, info.image_size)
    weights = ckpt["ema"] if args.ema else ckpt["model"]
    if weights is None:
        raise ValueError(f"{ckpt['path']} holds no EMA weights (the run had --ema-decay 0)")
    from mirrorla.engine.weights import describe_settings, load_checked_weights

    load_checked_weights(model, weights, ckpt["path"], describe_settings(cfg))
    model.to(env.device)
    result: dict[str, Any] = {
        "checkpoint": str(ckpt["path"]),
        "weights": "ema" if args.ema else "model",
        "eval_subset": cfg.eval_subset,
        "batch_size": args.batch_size,
    }
    result.update(evaluate(model, eval_set, cfg, env, batch_size=args.batch_size))
    if args.throughput:
        result["macs"], result["mac_counter"] = count_macs(model, info.in_chans, info.image_size)
        result["eval_img_s"] = measure_throughput(model, info.in_chans, info.image_size)
    line = eval_line("result", {f"eval_{k}": v for k, v in result.items()})
    if args.throughput:
        line += f"; {result['macs'] / 1e6:.2f}M MACs per image, {result['eval_img_s']:.0f} images/s"
    print(line)
    print_json(args, result)
    return 0


COMMANDS = [
    Command(
        "train",
        "train a model (default: the small ViT on Fashion-MNIST); runs under torchrun for DDP",
        add_train_args,
        run_train,
    ),
    Command("eval", "evaluate a trained checkpoint on its dataset's evaluation split", add_eval_args, run_eval),
]
