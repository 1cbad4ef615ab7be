"""Copy the seed-0 checkpoints of finished runs into the package (``src/mirrorla/weights/``).

For each attention of a ``mirrorla compare`` / ``mirrorla sr compare`` output folder (``--compare``: its
``runs/<attention>/seed0``) or of a folder of ``mirrorla sr train`` runs (``--runs``: ``<attention>/``) this
copies the last checkpoint's ``.safetensors`` byte for byte to
``src/mirrorla/weights/<tag>/<model>.safetensors`` and writes ``<model>.json`` beside it: the command
that trained it, the commit, date and machine, the run's settings, its result (the score the run itself
recorded on the test data) and the cheap check (:mod:`mirrorla.weights.check`) computed from the copied file.

    python scripts/package_weights.py --task fmnist --compare runs/weights-fmnist --commit abe5b0f... \\
        --command "mirrorla compare --attentions mirror --seeds 0 ..." [--attentions mirror,softmax]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
from pathlib import Path

import torch

from mirrorla.engine.checkpoint import checkpoint_config, load_checkpoint, resolve_checkpoint
from mirrorla.engine.config import TrainConfig
from mirrorla.weights.check import check_score

ROOT = Path(__file__).resolve().parent.parent / "src" / "mirrorla" / "weights"
#: task argument → (tag, timm model name of an attention, the run's task)
TASKS = {
    "fmnist": ("fmnist", lambda a: f"vit_micro_{a}", "classification"),
    "sr": ("photos_x2", lambda a: f"sr_tiny_{a}", "super_resolution"),
}
#: Settings that say where and how a run was made, not what it computes: left out of the shipped settings.
LOCAL_FIELDS = ("data_dir", "out_dir", "resume", "overwrite", "threads", "device", "progress", "workers")


def _result(task: str, run_dir: Path, eval_size: int) -> dict:
    """The score the run recorded: the comparison's ``result.json``, or ``final.json`` and the whole-image scores
    ``sr train`` writes (``test_images.json``)."""
    if task == "classification":
        run = json.loads((run_dir / "result.json").read_text())
        value = run["final_top1"]
        return {
            "metric": "top-1 %",
            "value": round(value, 4),
            "data": f"the Fashion-MNIST test split ({eval_size:,} images)",
        }
    if (run_dir / "result.json").is_file():  # a run of `mirrorla sr compare`
        run = json.loads((run_dir / "result.json").read_text())
        rows = run["test_images"]
    else:  # a run of `mirrorla sr train`
        rows = json.loads((run_dir / "test_images.json").read_text())["model"]
    psnr, ssim = (sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim"))
    images = ", ".join(r["image"] for r in rows)
    return {
        "metric": "PSNR-Y dB",
        "value": round(psnr, 4),
        "ssim": round(ssim, 4),
        "data": f"the built-in test photos, whole ({images})",
    }


def _environment() -> dict:
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": 1,
        "machine": platform.machine(),
    }


def package(args: argparse.Namespace, attention: str) -> Path:
    tag, model_name, task = TASKS[args.task]
    model = model_name(attention)
    run_dir = Path(args.compare) / "runs" / attention / "seed0" if args.compare else Path(args.runs) / attention
    weights_path, _ = resolve_checkpoint(run_dir)
    ckpt = load_checkpoint(run_dir)  # verifies both files of the pair
    cfg = checkpoint_config(ckpt, run_dir)
    if cfg.task != task or cfg.attention != attention or cfg.seed != 0:
        raise SystemExit(f"{run_dir} is a {cfg.task} run of {cfg.attention} seed {cfg.seed}, not {task} {attention}")
    dest = ROOT / tag / f"{model}.safetensors"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights_path, dest)
    settings = {k: v for k, v in cfg.to_dict().items() if k not in LOCAL_FIELDS}
    TrainConfig.from_dict(settings)  # the shipped settings must rebuild the run's configuration
    import timm

    import mirrorla  # noqa: F401  (registers the models)

    if task == "super_resolution":  # not a timm model (docs/models.md): the library's factory builds it
        from mirrorla.models import create_model

        net = create_model(cfg.model, attention=cfg.attention, scale=cfg.scale)
    else:
        net = timm.create_model(model)
    net.load_state_dict(ckpt["model"], strict=True)
    meta = {
        "name": f"{model}.{tag}",
        "timm_model": model,
        "task": task,
        "attention": attention,
        "seed": 0,
        "epochs_trained": ckpt["state"]["epoch"] + 1,
        "command": args.command.format(attention=attention),
        "commit": args.commit,
        "dirty": False,
        "trained": args.date,
        "machine": args.machine,
        "environment": {**_environment(), "cpu_capability": args.cpu_capability},
        "result": _result(
            task, run_dir, json.loads((run_dir / "config.json").read_text())["dataset_info"]["eval_size"]
        ),
        "check": {
            "what": "top-1 % of the first 500 Fashion-MNIST test images"
            if task == "classification"
            else "PSNR-Y dB of the central 48² LR crop of the first test photo",
            "value": check_score(net, task, settings),
            "computed_with": f"torch {torch.__version__}, {platform.machine()}, "
            f"{torch.backends.cpu.get_cpu_capability()}",
        },
        "sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
        "bytes": dest.stat().st_size,
        "config": settings,
    }
    dest.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--compare", help="a comparison's output folder (its runs/<attention>/seed0)")
    where.add_argument("--runs", help="a folder of `sr train` run folders, one per attention (<runs>/<attention>)")
    p.add_argument("--attentions", default=None, help="comma-separated (default: every finished seed-0 run)")
    p.add_argument("--command", required=True, help="the command that trained the runs ({attention}: its name)")
    p.add_argument("--commit", required=True, help="the commit the runs were trained with (full hash)")
    p.add_argument("--date", required=True, help="when the runs were trained (UTC)")
    p.add_argument("--machine", required=True, help="the machine, in words")
    p.add_argument("--cpu-capability", required=True, help="torch.backends.cpu.get_cpu_capability() there")
    args = p.parse_args()
    runs = Path(args.compare) / "runs" if args.compare else Path(args.runs)
    names = args.attentions.split(",") if args.attentions else sorted(p.name for p in runs.iterdir())
    for name in names:
        folder = runs / name / "seed0" if args.compare else runs / name
        if not (folder / "final.json").is_file():
            print(f"skipped {name}: no finished seed-0 run")
            continue
        print(f"wrote {package(args, name)}")


if __name__ == "__main__":
    main()
