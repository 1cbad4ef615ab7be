"""Option groups shared by the commands, and the argument types they use. Imports no torch.

Every :class:`~mirrorla.engine.config.TrainConfig` field that ``train`` offers is declared once, in
:func:`add_train_config_options`; ``compare`` adds the same groups with its own defaults (its base
configuration) and without the options it sets per run (``--attention``, ``--seed``).

The options go into :class:`GivenOnly` groups: they leave nothing in the parsed namespace unless given
on the command line, so that ``train --resume`` can tell ``--lr 0.001`` given from the default 0.001,
and ``compare`` can tell a given ``--epochs`` from the preset's.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from typing import Any

from mirrorla.engine.config import TrainConfig

__all__ = [
    "GivenOnly",
    "add_comparison_options",
    "add_preset_out",
    "preset_out",
    "add_sr_options",
    "add_train_config_options",
    "jobs_count",
    "check_comparison_out",
    "check_out_file",
    "check_out_folder",
    "config_fields",
    "device_name",
    "int_list",
    "key_value",
    "positive_float",
    "positive_int",
]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_name(text: str) -> str:
    """``--device``: auto, cpu, cuda, cuda:N or mps (whether the machine has it is checked when the command
    runs, by :func:`mirrorla.engine.distributed.resolve_device`)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def int_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` → ``(0, 1, 2)``."""
    try:
        values = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE a Python literal where it parses as one (``0.1``, ``True``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _optional_float(text: str) -> float | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _attention(text: str) -> str | None:
    return None if text.lower() == "none" else text


def check_out_folder(path: str | None, option: str = "--out") -> None:
    """A folder option must not name an existing file (``UsageError``)."""
    from mirrorla.commands import UsageError

    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"{option} {path} is a file; {option} takes a folder (new, or one of this command's)")


def check_comparison_out(out: str, resume: bool, overwrite: bool) -> None:
    """The --out, --resume and --overwrite of a comparison (``compare``, ``sr compare``, ``lra compare``):
    ``--resume`` continues a comparison, so an --out that holds a single training run is refused (the
    comparison would write its files among the run's); ``--resume --overwrite`` says on stderr what the pair
    does, since it replaces finished runs."""
    import sys

    from mirrorla.commands import UsageError

    folder = Path(out)
    run_marks = [name for name in ("config.json", "metrics.jsonl", "checkpoints") if (folder / name).exists()]
    if resume and run_marks and not (folder / "runs").is_dir() and not (folder / "results.json").is_file():
        raise UsageError(
            f"--out {out} holds a training run ({', '.join(run_marks)}), not a comparison; --resume continues a "
            "comparison in the folder its --out named. Pass that folder, or a new --out"
        )
    if resume and overwrite:
        print(
            f"note: --resume with --overwrite: finished runs in {out} whose settings differ from this job's are "
            "retrained and their results replaced; finished runs with the same settings are reused",
            file=sys.stderr,
            flush=True,
        )


def check_out_file(path: str | None, option: str) -> None:
    """A file option must not name an existing folder (``UsageError``)."""
    from mirrorla.commands import UsageError

    if path is not None and Path(path).is_dir():
        raise UsageError(f"{option} {path} is a folder; {option} takes a file name (e.g. {Path(path) / 'out.json'})")


class GivenOnly:
    """An argument group whose options leave no default in the parsed namespace (``argparse.SUPPRESS``).

    The default still shows in ``--help``: as ``(default: X)``, or as the words ``shown`` gives.
    """

    def __init__(self, group: argparse._ArgumentGroup, shown: dict[str, str] | None = None) -> None:
        self._group = group
        self._shown = shown or {}

    def add_argument(self, *flags: str, default: Any = None, help: str, **kwargs: Any) -> argparse.Action:
        dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        shown = self._shown.get(dest)
        if shown is None and default is not None and default not in ([], {}):
            shown = ("on" if default else "off") if isinstance(default, bool) else str(default)
        if shown is not None:
            help = f"{help} (default: {shown})"
        return self._group.add_argument(*flags, default=argparse.SUPPRESS, help=help, **kwargs)


def config_fields() -> set[str]:
    return set(TrainConfig.__dataclass_fields__)


def add_train_config_options(
    p: argparse.ArgumentParser,
    d: TrainConfig,
    *,
    exclude: tuple[str, ...] = (),
    shown: dict[str, str] | None = None,
    help_override: dict[str, str] | None = None,
) -> None:
    """The data, model, optimisation and run options of a TrainConfig, with ``d``'s values as defaults.

    ``exclude``: fields the command sets itself. ``shown``: words for a default (e.g. "the preset's").
    ``help_override``: another help text for a field, where the command gives it another meaning.
    """
    shown = {"train_subset": "all", "eval_subset": "all", **(shown or {})}
    helps = help_override or {}

    def group(title: str):
        g = GivenOnly(p.add_argument_group(title), shown)

        def add(dest: str, *flags: str, help: str, **kwargs: Any) -> None:
            if dest in exclude:
                return
            kwargs.setdefault("default", getattr(d, dest) if dest in TrainConfig.__dataclass_fields__ else None)
            g.add_argument(*flags, dest=dest, help=helps.get(dest, help), **kwargs)

        return add

    add = group("data")
    add(
        "dataset",
        "--dataset",
        help="fashion_mnist, mnist, kmnist, cifar10, cifar100, svhn, tv:<torchvision class>, or imagefolder "
        "(--data-dir with train/ and val/ sub-folders, one folder per class)",
    )
    add(
        "data_dir",
        "--data-dir",
        help="where the data is; for Fashion-MNIST the only place looked in (missing files are an error). Without "
        "it Fashion-MNIST is looked for in $MIRRORLA_DATA, ~/.cache/mirrorla, /usr/share/datasets/fashion-mnist, "
        "then downloaded",
    )
    add("download", "--download", action=argparse.BooleanOptionalAction, help="download data that is not on disk")
    add("train_subset", "--train-subset", type=positive_int, help="train on a fixed random subset of this size")
    add("eval_subset", "--eval-subset", type=positive_int, help="evaluate on a fixed random subset of this size")
    add("image_size", "--image-size", type=positive_int, help="input side in pixels (default: the dataset's)")
    add("augment", "--augment", action=argparse.BooleanOptionalAction, help="train-time augmentation")
    add("workers", "--workers", type=non_negative_int, help="DataLoader workers (file-based datasets)")

    add = group("model")
    add("model", "--model", help="'vit' (the project's small ViT) or a timm model name")
    add(
        "attention",
        "--attention",
        type=_attention,
        help="registered attention for every block (`mirrorla list`); 'none' keeps a timm model's own",
    )
    add(
        "attention_kwargs",
        "--attn-opt",
        type=key_value,
        action="append",
        metavar="KEY=VALUE",
        help="an option of the attention, repeatable (e.g. --attn-opt alpha_init=0.1; `mirrorla list` names "
        "the attentions)",
    )
    add("embed_dim", "--embed-dim", type=positive_int, help="ViT width C")
    add("depth", "--depth", type=positive_int, help="ViT blocks")
    add("num_heads", "--num-heads", type=positive_int, help="attention heads")
    add("patch_size", "--patch-size", type=positive_int, help="ViT patch size")
    add("mlp_ratio", "--mlp-ratio", type=positive_float, help="MLP hidden width / C")
    add("drop_path", "--drop-path", type=float, help="stochastic depth rate")

    add = group("optimisation")
    add("epochs", "--epochs", type=positive_int, help="training epochs")
    add("batch_size", "--batch-size", type=positive_int, help="images per step and process")
    add("lr", "--lr", type=positive_float, help="AdamW peak learning rate")
    add("min_lr", "--min-lr", type=float, help="learning rate at the end of the cosine")
    add("warmup_lr", "--warmup-lr", type=float, help="learning rate at step 0")
    add("warmup_epochs", "--warmup-epochs", type=float, help="linear warm-up length (epochs)")
    add("weight_decay", "--weight-decay", type=float, help="AdamW decoupled weight decay")
    add("label_smoothing", "--label-smoothing", type=float, help="label smoothing ε")
    add("mixup", "--mixup", type=float, help="Mixup α (0 = off; timm's Mixup)")
    add("cutmix", "--cutmix", type=float, help="CutMix α (0 = off)")
    add("mixup_switch_prob", "--mixup-switch-prob", type=float, help="P(CutMix) when both are on")
    add("ema_decay", "--ema-decay", type=float, help="EMA of weights (timm ModelEmaV3); 0 = off")
    add("clip_grad", "--clip-grad", type=_optional_float, help="max gradient L2 norm; 'none' = no clipping")
    add("amp", "--amp", choices=["none", "bf16", "fp16"], help="autocast dtype (fp16 uses a GradScaler)")
    add("seed", "--seed", type=int, help="random seed (init, data order, augmentation)")

    add = group("run")
    add("device", "--device", type=device_name, help="auto, cpu, cuda or cuda:N")
    add("threads", "--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    add("progress", "--progress", action=argparse.BooleanOptionalAction, help="a progress bar per epoch")


def add_comparison_options(
    p: argparse.ArgumentParser, *, quick_help: str, attentions: tuple[str, ...], seeds_help: str, out: str
) -> argparse._ArgumentGroup:
    """The options every comparison command shares (``compare``, ``sr compare``): --quick, --attentions,
    --seeds, --out, --resume, --overwrite, --jobs, --progress. Returns the group, for the command's own."""
    g = p.add_argument_group("comparison")
    g.add_argument("--quick", dest="preset", action="store_const", const="quick", default="default", help=quick_help)
    g.add_argument(
        "--attentions", default=",".join(attentions), help="comma-separated registered attentions (`mirrorla list`)"
    )
    g.add_argument("--seeds", type=int_list, default=None, help=seeds_help)
    add_preset_out(g, out, "output folder (table, JSON, figures, runs)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="reuse finished runs in --out with identical settings (and data), continue unfinished ones from their "
        "last epoch checkpoint where it has those settings, and train the others; also lets several compare "
        "processes share one --out",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="use a --out that holds files without --resume (retrain every run), or with --resume retrain "
        "finished runs whose settings differ",
    )
    g.add_argument(
        "--jobs",
        type=jobs_count,
        default="auto",
        help="training runs at once, each in its own process; auto = one per CPU core on a CPU (with "
        "1 thread each: faster than one many-threaded process for these small models), 1 on CUDA",
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one progress bar over all runs, with the ETA of the whole job, on stderr",
    )
    return g


def add_preset_out(g, default: str, what: str) -> None:
    """``--out`` of a command with a ``--quick`` preset: the quick and the full preset write to different
    default folders (``default`` and ``default-quick``), so a full run after a quick one is not refused;
    :func:`preset_out` resolves it after parsing."""
    g.add_argument("--out", default=None, help=f"{what} (default: {default}; with --quick {quick_out(default)})")
    g.set_defaults(default_out=default)


def quick_out(default: str) -> str:
    """The default output folder of a ``--quick`` run whose full preset writes to ``default``."""
    return f"{default}-quick"


def preset_out(args: argparse.Namespace) -> str:
    """``--out`` as given, else the default folder of the preset run (see :func:`add_preset_out`)."""
    if args.out is not None:
        return args.out
    quick = getattr(args, "preset", None) == "quick" or getattr(args, "quick", False)
    return quick_out(args.default_out) if quick else args.default_out


def jobs_count(text: str) -> int | None:
    """``--jobs``: 'auto' (None: one per CPU core) or a positive integer."""
    if text == "auto":
        return None
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {text!r}")
    return jobs


def add_sr_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """--scale and --degradation of a super-resolution run."""
    g = GivenOnly(p.add_argument_group("super-resolution"))
    g.add_argument("--scale", type=int, choices=[2, 3, 4], default=d.scale, help="upscaling factor")
    g.add_argument(
        "--degradation",
        choices=["matlab", "torch"],
        default=d.degradation,
        help="how LR images are made from HR ones: MATLAB-imresize-compatible bicubic (as the SR literature) or "
        "torch's antialiased bicubic (same kernel, borders renormalised instead of mirrored)",
    )
    g.add_argument(
        "--eval-dir",
        dest="eval_data_dir",
        default=d.eval_data_dir,
        help="a folder of HR test images (Set5, Set14, B100, Urban100, ...) scored during and after training "
        "(default: the built-in test photos; with --dataset folder, the training folder itself)",
    )


#: TrainConfig fields that only classification reads; the super-resolution commands do not offer them.
CLASSIFICATION_ONLY = (
    "eval_subset", "download", "embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "drop_path",
    "label_smoothing", "mixup", "cutmix", "mixup_switch_prob",
)  # fmt: skip

#: Help of the TrainConfig options whose meaning differs for super-resolution.
SR_HELP = {
    "dataset": "'photos' (the photographs shipped with scikit-image, scikit-learn and matplotlib; fixed train/test "
    "split) or 'folder' (--data-dir: a folder of HR images, e.g. DIV2K_train_HR)",
    "data_dir": "the folder of HR images for --dataset folder",
    "train_subset": "training patches per epoch (random crops of random images)",
    "image_size": "LR side of a training patch in pixels",
    "augment": "random flips and 90° rotations of the training patches",
    "model": "sr_tiny, sr_small or sr_light (the SR network's size)",
}


def given_config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (see :class:`GivenOnly`)."""
    given = {k: v for k, v in vars(args).items() if k in config_fields()}
    if "attention_kwargs" in given:
        given["attention_kwargs"] = dict(given["attention_kwargs"])
    return given
