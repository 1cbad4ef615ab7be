"""``mirrorla train``, ``mirrorla eval`` and ``mirrorla compare``.

``train`` runs unchanged under ``torchrun --nproc_per_node=N -m mirrorla.cli train ...`` (DDP).
Every option maps to a :class:`~mirrorla.engine.config.TrainConfig` field of the same name.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

from mirrorla.cli import command

_DEFAULT = None  # filled lazily: importing the engine pulls in timm, which `mirrorla --help` need not pay for


def _defaults():
    global _DEFAULT
    if _DEFAULT is None:
        from mirrorla.engine.config import TrainConfig

        _DEFAULT = TrainConfig()
    return _DEFAULT


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _user_errors(run):
    """Print bad-input errors as one line (``mirrorla <cmd>: error: ...``) instead of a traceback."""
    import functools
    import sys

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from mirrorla.engine.checkpoint import CheckpointError, output_write_error
        from mirrorla.engine.trainer import TrainingDivergedError

        try:
            return run(args)
        except (ValueError, FileNotFoundError, CheckpointError, TrainingDivergedError) as err:
            print(f"mirrorla: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # disk full, read-only file system, permission denied: the path and what to do
            explained = output_write_error(err)
            if explained is None:
                raise
            print(f"mirrorla: error: {explained}", file=sys.stderr)
            return 2

    return wrapper


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "off", "0") else float(text)


def _attention(text: str) -> str | None:
    return None if text.lower() == "none" else text


class _GivenOnly:
    """An argument group whose options leave no default in the parsed namespace (``argparse.SUPPRESS``).

    ``train``'s namespace thus holds exactly the options given on the command line, so that
    :func:`config_from_args` can tell ``--lr 0.001`` given from the default 0.001; the default still
    shows in ``--help``.
    """

    def __init__(self, group: argparse._ArgumentGroup) -> None:
        self._group = group

    def add_argument(self, *flags: str, default: Any = None, help: str = "", **kwargs: Any) -> argparse.Action:
        if kwargs.get("action") not in ("store_true", "store_false") and default not in (None, []):
            help = f"{help} (default: {default})"
        return self._group.add_argument(*flags, default=argparse.SUPPRESS, help=help, **kwargs)


def _add_data_args(p: argparse.ArgumentParser, d) -> None:
    g = _GivenOnly(p.add_argument_group("data"))
    g.add_argument(
        "--dataset",
        default=d.dataset,
        help="fashion_mnist, mnist, kmnist, cifar10, cifar100, svhn, tv:<torchvision class>, or imagefolder "
        "(--data-dir with train/ and val/ sub-folders, one folder per class)",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="where the data is; for Fashion-MNIST the only place looked in (missing files are an error). Without "
        "it Fashion-MNIST is looked for in $MIRRORLA_DATA, ~/.cache/mirrorla, /usr/share/datasets/fashion-mnist, "
        "then downloaded",
    )
    g.add_argument("--no-download", dest="download", action="store_false", help="never download data")
    g.add_argument("--train-subset", type=int, default=None, help="train on a fixed random subset of this size")
    g.add_argument("--eval-subset", type=int, default=None, help="evaluate on a fixed random subset of this size")
    g.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the dataset's)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="turn off train-time augmentation")
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers (file-based datasets)")


def _add_model_args(p: argparse.ArgumentParser, d) -> None:
    g = _GivenOnly(p.add_argument_group("model"))
    g.add_argument("--model", default=d.model, help="'vit' (the project's small ViT) or a timm model name")
    g.add_argument(
        "--attention",
        type=_attention,
        default=d.attention,
        help="registered attention for every block (`mirrorla list`); 'none' keeps a timm model's own",
    )
    g.add_argument(
        "--attn-opt",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra attention option, repeatable (e.g. --attn-opt alpha_init=0.1)",
    )
    g.add_argument("--embed-dim", type=int, default=d.embed_dim, help="ViT width C")
    g.add_argument("--depth", type=int, default=d.depth, help="ViT blocks")
    g.add_argument("--num-heads", type=int, default=d.num_heads, help="attention heads")
    g.add_argument("--patch-size", type=int, default=d.patch_size, help="ViT patch size")
    g.add_argument("--mlp-ratio", type=float, default=d.mlp_ratio, help="MLP hidden width / C")
    g.add_argument("--drop-path", type=float, default=d.drop_path, help="stochastic depth rate")


def _add_optim_args(p: argparse.ArgumentParser, d) -> None:
    g = _GivenOnly(p.add_argument_group("optimisation"))
    g.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step and process")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate")
    g.add_argument("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine")
    g.add_argument("--warmup-lr", type=float, default=d.warmup_lr, help="learning rate at step 0")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up length (epochs)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decoupled weight decay")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="label smoothing ε")
    g.add_argument("--mixup", type=float, default=d.mixup, help="Mixup α (0 = off; timm's Mixup)")
    g.add_argument("--cutmix", type=float, default=d.cutmix, help="CutMix α (0 = off)")
    g.add_argument("--mixup-switch-prob", type=float, default=d.mixup_switch_prob, help="P(CutMix) when both on")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA of weights (timm ModelEmaV3); 0 = off")
    g.add_argument(
        "--clip-grad", type=_optional_float, default=d.clip_grad, help="max gradient L2 norm; 'none' = no clipping"
    )
    g.add_argument(
        "--amp", choices=["none", "bf16", "fp16"], default=d.amp, help="autocast dtype (fp16 uses a GradScaler)"
    )
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (init, data order, augmentation)")


def _add_run_args(p: argparse.ArgumentParser, d) -> None:
    g = _GivenOnly(p.add_argument_group("run"))
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = _defaults()
    _add_data_args(p, d)
    _add_model_args(p, d)
    _add_optim_args(p, d)
    _add_run_args(p, d)
    g = _GivenOnly(p.add_argument_group("output"))
    g.add_argument(
        "--out",
        dest="out_dir",
        help="run directory for metrics and checkpoints (default: runs/train, or the resumed run's directory); "
        "a new run needs an empty or new folder, or --overwrite",
    )
    g.add_argument(
        "--resume",
        help="continue from a run directory or checkpoint file with that run's settings, in that run's directory; "
        "options given here override them, and any that would change the result are refused",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start the new run even if --out holds files: the previous run's outputs there are deleted",
    )
    g.add_argument("--no-checkpoints", dest="save_checkpoints", action="store_false", help="write no checkpoints")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="how many epochs to keep")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of parsed ``train`` arguments.

    The namespace holds only the options given on the command line (see :class:`_GivenOnly`); a new
    run takes the others from :class:`~mirrorla.engine.config.TrainConfig`. With ``--resume``, the
    resumed run's saved settings are the base and every option given overrides them, also one given
    at its default value (``mirrorla train --resume DIR`` alone continues the run as it was started);
    :func:`~mirrorla.engine.train` then refuses those that change the result. The run continues in
    the folder that holds the checkpoint, which may be a copy of the one its saved settings name.
    """
    from mirrorla.engine.config import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    given = {k: v for k, v in vars(args).items() if k in fields}
    if "attn_opt" in args:
        given["attention_kwargs"] = dict(args.attn_opt)
    resume = given.pop("resume", None)
    if not resume:
        return TrainConfig(**{"out_dir": "runs/train", **given})
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


@command("train", "train a model (default: the small ViT on Fashion-MNIST); runs under torchrun for DDP")(
    add_train_args
)
@_user_errors
def run_train(args: argparse.Namespace) -> int:
    from mirrorla.engine import train

    cfg = config_from_args(args)
    out = train(cfg)
    if out["run_dir"]:
        print(f"run directory: {out['run_dir']}")
    print(json.dumps(out["final"]))
    return 0


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run directory, checkpoints/ directory, .safetensors or .state.pt file")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights stored in the checkpoint")
    p.add_argument("--data-dir", default=None, help="override the data directory recorded in the run")
    p.add_argument("--eval-subset", type=int, default=None, help="evaluate on a fixed random subset of this size")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--throughput", action="store_true", help="also report MACs and inference images/s")


@command("eval", "evaluate a trained checkpoint on its dataset's evaluation split")(add_eval_args)
@_user_errors
def run_eval(args: argparse.Namespace) -> int:
    from mirrorla.data import build_datasets
    from mirrorla.engine import TrainConfig, count_macs, create_classifier, evaluate, load_checkpoint
    from mirrorla.engine.checkpoint import resolve_checkpoint
    from mirrorla.engine.distributed import setup_distributed
    from mirrorla.engine.model import measure_throughput

    ckpt = load_checkpoint(args.checkpoint, weights_only=True)
    if ckpt["state"] is not None:
        saved = ckpt["state"]["config"]
    else:
        cfg_path = Path(resolve_checkpoint(args.checkpoint)[0]).parent.parent / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"cannot find the run's settings: neither a .state.pt file nor {cfg_path}")
        raw = json.loads(cfg_path.read_text())
        saved = {k: v for k, v in raw.items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig.from_dict({**saved, "resume": None, "device": args.device, "progress": False})
    cfg = cfg.replace(data_dir=args.data_dir or cfg.data_dir, eval_subset=args.eval_subset or cfg.eval_subset)
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
    model = create_classifier(cfg, info.num_classes, info.in_chans, info.image_size)
    weights = ckpt["ema"] if args.ema else ckpt["model"]
    if weights is None:
        raise ValueError(f"{ckpt['path']} holds no EMA weights (the run had --ema-decay 0)")
    model.load_state_dict(weights)
    model.to(env.device)
    result: dict[str, Any] = {"checkpoint": str(ckpt["path"]), "weights": "ema" if args.ema else "model"}
    result.update(evaluate(model, eval_set, cfg, env, batch_size=args.batch_size))
    if args.throughput:
        result["macs"], result["mac_counter"] = count_macs(model, info.in_chans, info.image_size)
        result["eval_img_s"] = measure_throughput(model, info.in_chans, info.image_size)
    print(json.dumps(result, indent=2))
    return 0


def add_compare_args(p: argparse.ArgumentParser) -> None:
    from mirrorla.compare import BASE, DEFAULT_ATTENTIONS, PRESETS

    p.add_argument(
        "--quick",
        dest="preset",
        action="store_const",
        const="quick",
        default="default",
        help=f"the ~5-minute CPU preset: {PRESETS['quick']}",
    )
    p.add_argument(
        "--attentions",
        default=",".join(DEFAULT_ATTENTIONS),
        help="comma-separated registered attentions (`mirrorla list`)",
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds; None = the preset's")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run; None = the preset's")
    p.add_argument("--train-subset", type=int, default=None, help="training images; None = the preset's (all)")
    p.add_argument("--eval-subset", type=int, default=None, help="evaluation images; None = the preset's (all)")
    p.add_argument("--out", default="runs/compare", help="output directory (table, JSON, figures, runs)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse finished runs in --out with identical settings (and data) and train the others; also lets "
        "several compare processes share one --out",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="use a --out that holds files without --resume (retrain every run), or with --resume retrain "
        "finished runs whose settings differ",
    )
    p.add_argument("--dataset", default=BASE.dataset, help="dataset name, as for `mirrorla train`")
    p.add_argument("--data-dir", default=None, help="where the data is (see `mirrorla train --help`)")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download data")
    p.add_argument("--embed-dim", type=int, default=BASE.embed_dim, help="ViT width C")
    p.add_argument("--depth", type=int, default=BASE.depth, help="ViT blocks")
    p.add_argument("--num-heads", type=int, default=BASE.num_heads, help="attention heads")
    p.add_argument("--patch-size", type=int, default=BASE.patch_size, help="ViT patch size")
    p.add_argument("--batch-size", type=int, default=BASE.batch_size, help="training batch size")
    p.add_argument("--lr", type=float, default=BASE.lr, help="AdamW peak learning rate")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per training process (default: cores // jobs)"
    )
    p.add_argument(
        "--jobs",
        default="auto",
        help="training runs at once, each in its own process; auto = one per CPU core on a CPU (with "
        "1 thread each: faster than one many-threaded process for this small ViT), 1 on CUDA",
    )
    p.add_argument("--throughput-iters", type=int, default=10, help="timed forwards per round for eval img/s")
    p.add_argument(
        "--throughput-rounds",
        type=int,
        default=5,
        help="eval img/s is the median over this many rounds, the attentions taking turns (after training)",
    )
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")


def _parse_jobs(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ValueError(f"--jobs must be 'auto' or a positive integer, got {value!r}")
    return jobs


@command("compare", "train the same small ViT with each attention and print the comparison table")(add_compare_args)
@_user_errors
def run_compare_cmd(args: argparse.Namespace) -> int:
    from mirrorla.compare import BASE, PRESETS, CompareConfig, run_compare

    preset = PRESETS[args.preset]
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else preset["seeds"]
    base = BASE.replace(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        epochs=args.epochs or preset["epochs"],
        train_subset=args.train_subset or preset["train_subset"],
        eval_subset=args.eval_subset or preset["eval_subset"],
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.num_heads,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        lr=args.lr,
        amp=args.amp,
        device=args.device,
        threads=args.threads,
        progress=args.progress,
    )
    cc = CompareConfig(
        attentions=tuple(a.strip() for a in args.attentions.split(",") if a.strip()),
        seeds=seeds,
        base=base,
        out_dir=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        throughput_iters=args.throughput_iters,
        throughput_rounds=args.throughput_rounds,
        jobs=_parse_jobs(args.jobs),
        preset=args.preset,
    )
    results = run_compare(cc)
    print(
        f"wrote {args.out}/results.md, results.json, accuracy_curves.png, accuracy_vs_throughput.png "
        f"({results['wall_s']:.0f} s)"
    )
    return 0
