"""``mirrorla sr {train,eval,compare,upscale}``: super-resolution with global attention over every LR pixel.

``sr train`` and ``sr compare`` take the options of ``train``/``compare`` that apply to super-resolution
(data, model, optimisation, run) with :data:`~mirrorla.engine.config.SR_BASE`'s defaults; the work is
the one training loop with the ``super_resolution`` task, :mod:`mirrorla.engine.sr` and
:mod:`mirrorla.engine.sr_compare`. Whole-image inference scaling against softmax is ``mirrorla bench sr``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from mirrorla.commands import Interrupted, UsageError, command_family
from mirrorla.commands.compare import compare_config_from_args
from mirrorla.commands.lines import add_json_option, print_json, say, start_line, summary_line
from mirrorla.commands.options import (
    CLASSIFICATION_ONLY,
    SR_HELP,
    add_comparison_options,
    add_sr_options,
    add_train_config_options,
    check_comparison_out,
    check_out_file,
    check_out_folder,
    device_name,
    non_negative_int,
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
from mirrorla.engine.config import SR_BASE, SR_DEFAULT_ATTENTIONS, SR_PRESETS, describe_preset

__all__ = ["COMMANDS"]

_SR_PRESET_FIELDS = ("epochs", "train_subset")

#: The smallest LR side of a training patch that leaves pixels to score.
MIN_PATCH = 3


def _add_sr_train_args(p: argparse.ArgumentParser) -> None:
    add_train_config_options(p, SR_BASE, exclude=CLASSIFICATION_ONLY, help_override=SR_HELP)
    add_sr_options(p, SR_BASE)
    add_run_output_options(p, SR_BASE, "runs/sr-train")
    add_json_option(p)


def _check_options(cfg) -> None:
    from mirrorla.models.sr import SR_SIZES

    size = SR_SIZES.get(cfg.model.removeprefix("sr_"))
    if size is None:
        raise UsageError(f"--model must be sr_tiny, sr_small or sr_light, got {cfg.model!r}")
    if cfg.attention is None:
        raise UsageError("the SR network needs an --attention (`mirrorla list`)")
    check_attention_options(cfg.attention, cfg.attention_kwargs, size.embed_dim, size.num_heads)
    check_device(cfg.device)
    if cfg.dataset == "photos" and cfg.data_dir:
        raise UsageError(
            f"--data-dir {cfg.data_dir} is read only with --dataset folder; the default --dataset photos trains on "
            "the built-in photos. Add --dataset folder to train on your images, or leave --data-dir out"
        )
    # The scores leave out `scale` HR pixels at each border, so a patch needs more than 2 LR pixels a side.
    if cfg.image_size is not None and cfg.image_size < MIN_PATCH:
        raise UsageError(
            f"--image-size {cfg.image_size}: a training patch needs at least {MIN_PATCH} LR pixels a side (PSNR "
            f"leaves out {cfg.scale} pixels at each edge of the ×{cfg.scale} output); pass --image-size {MIN_PATCH} "
            f"or more (default {SR_BASE.image_size})"
        )


@user_errors
def _run_sr_train(args: argparse.Namespace) -> int:
    from mirrorla.engine import train
    from mirrorla.engine.sr import evaluate_images, mean_scores
    from mirrorla.tasks import create_task

    cfg = config_from_args(args, SR_BASE, "runs/sr-train")
    check_out_folder(cfg.out_dir)
    _check_options(cfg)
    datasets = create_task(cfg.task, cfg).build_datasets(cfg)
    say(start_line(cfg, datasets[2]))
    t0 = time.perf_counter()
    try:
        out = train(cfg, datasets)
    except KeyboardInterrupt:
        raise _interrupted_train(cfg, getattr(args, "_argv", ["sr", "train"])) from None
    from mirrorla.data.sr import load_pairs
    from mirrorla.engine.checkpoint import atomic_write_bytes

    pairs = load_pairs(datasets[2].eval_source, "test", cfg.scale, cfg.degradation)
    rows = evaluate_images(out["model"].eval(), pairs, cfg.scale)
    bicubic = evaluate_images(None, pairs, cfg.scale)
    _print_rows(rows, bicubic)
    final = {**out["final"], **{f"test_{k}": v for k, v in mean_scores(rows).items()}}
    if out["run_dir"]:
        from mirrorla.engine.run_folder import FolderLock

        record = json.dumps({"model": rows, "bicubic": bicubic}, indent=2).encode()
        with FolderLock(out["run_dir"], purpose="sr train: writing test_images.json"):  # train() has let go
            atomic_write_bytes(Path(out["run_dir"], "test_images.json"), record)
    gain = final["test_psnr"] - mean_scores(bicubic)["psnr"]
    say(
        summary_line(out["final"], "psnr", out["run_dir"], time.perf_counter() - t0)
        + f"; whole test images: PSNR-Y {final['test_psnr']:.2f} dB ({gain:+.2f} dB over bicubic)"
    )
    print_json(args, final)
    return 0


def _print_rows(rows: list[dict], bicubic: list[dict]) -> None:
    from mirrorla.engine.sr import mean_scores

    print("| image | LR size | PSNR-Y dB | SSIM-Y | bicubic PSNR-Y | gain dB | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r, b in zip(rows, bicubic, strict=True):
        print(
            f"| {r['image']} | {r['lr_hw'][0]}×{r['lr_hw'][1]} | {r['psnr']:.2f} | {r['ssim']:.4f} | {b['psnr']:.2f} | "
            f"{r['psnr'] - b['psnr']:+.2f} | {r['seconds']:.2f} |"
        )
    m, mb = mean_scores(rows), mean_scores(bicubic)
    print(f"| mean | | {m['psnr']:.2f} | {m['ssim']:.4f} | {mb['psnr']:.2f} | {m['psnr'] - mb['psnr']:+.2f} | |")


def _add_sr_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="run folder, checkpoints/ folder or .safetensors file of an SR run, or pretrained:<name> (weights "
        "shipped with mirrorla)",
    )
    p.add_argument(
        "--data",
        default="photos",
        help="'photos' (the built-in test photos) or a folder of HR images (Set5, Set14, B100, Urban100, DIV2K "
        "valid, ...), each scored whole",
    )
    p.add_argument("--lr-dir", default=None, help="a folder of the matching LR images (default: made by bicubic)")
    p.add_argument(
        "--degradation", choices=["matlab", "torch"], default=None, help="how LR images are made (default: the run's)"
    )
    p.add_argument("--save-images", default=None, metavar="DIR", help="also write each SR output there as PNG")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--ema", action="store_true", help="use the EMA weights stored in the checkpoint")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N")
    add_tile_options(p)


def add_tile_options(p: argparse.ArgumentParser) -> None:
    """--tile and --tile-overlap of ``sr eval`` and ``sr upscale``."""
    p.add_argument(
        "--tile",
        type=positive_int,
        default=None,
        metavar="N",
        help="upscale in overlapping N×N LR tiles, blended (as SwinIR/BasicSR's --tile) instead of the whole image "
        "in one pass: for images too large for memory; each attention then sees one tile, not the whole image",
    )
    p.add_argument(
        "--tile-overlap",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="LR pixels neighbouring tiles share, blended (default: 32, at most a quarter of --tile)",
    )


def _tile_settings(args: argparse.Namespace) -> tuple[int | None, int | None]:
    if args.tile is None:
        if args.tile_overlap is not None:
            raise UsageError("--tile-overlap applies to tiled inference: give --tile N too")
        return None, None
    if args.tile_overlap is not None and args.tile_overlap >= args.tile:
        raise UsageError(f"--tile-overlap {args.tile_overlap} must be smaller than --tile {args.tile}")
    return args.tile, args.tile_overlap


@user_errors
def _run_sr_eval(args: argparse.Namespace) -> int:
    from mirrorla.data.sr import load_pairs
    from mirrorla.engine.sr import check_pairs_memory, evaluate_images, load_trained_sr

    tile, overlap = _tile_settings(args)
    check_out_file(args.json, "--json")
    check_out_folder(args.save_images, "--save-images")
    if args.data == "photos" and Path("photos").is_dir():
        print(
            "note: --data photos scores the built-in test photos, not the folder ./photos here; to score that "
            "folder pass --data ./photos",
            file=sys.stderr,
        )
    model, cfg = load_trained_sr(args.checkpoint, args.device, ema=args.ema)
    pairs = load_pairs(args.data, "test", cfg.scale, args.degradation or cfg.degradation, args.lr_dir)
    check_pairs_memory(model, pairs, tile)  # before the progress bar: a refusal is the only output
    from tqdm.auto import tqdm

    from mirrorla.engine.run_folder import claim_output_folder

    # One writer per --save-images folder: two evaluations into it would mix their images.
    saving = claim_output_folder(args.save_images, "sr eval --save-images") if args.save_images else nullcontext()
    with saving, tqdm(total=len(pairs), desc="sr eval", unit="image", leave=False) as bar:
        rows = evaluate_images(
            model, pairs, cfg.scale, bar, args.save_images, tile=tile, overlap=overlap, check_memory=False
        )
    bicubic = evaluate_images(None, pairs, cfg.scale)
    tiled = f", in {tile}×{tile} tiles" if tile else ""
    print(f"{cfg.model} with {cfg.attention}, ×{cfg.scale}, data {args.data}{tiled}")
    _print_rows(rows, bicubic)
    if args.json:
        from mirrorla.engine.checkpoint import atomic_write_bytes

        record = {"checkpoint": str(args.checkpoint), "model": rows, "bicubic": bicubic}
        atomic_write_bytes(Path(args.json), json.dumps(record, indent=2).encode())
    return 0


def _add_sr_upscale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="run folder, checkpoints/ folder or .safetensors file of an SR run, or shipped weights: "
        "pretrained:sr_tiny_mirror.photos_x2 (`mirrorla models --pretrained`)",
    )
    p.add_argument("images", nargs="+", help="image files to upscale, each in one pass unless --tile")
    p.add_argument(
        "--out",
        required=True,
        help="output file (one input) or folder (written as <name>_x<scale>.png); existing files are not replaced "
        "unless --overwrite",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N")
    add_tile_options(p)


@user_errors
def _run_sr_upscale(args: argparse.Namespace) -> int:
    from PIL import Image

    from mirrorla.engine.sr import load_trained_sr, upscale_file

    tile, overlap = _tile_settings(args)
    out = Path(args.out)
    if len(args.images) > 1 and not out.is_dir() and (out.exists() or _is_image_name(out)):
        raise UsageError(
            f"{len(args.images)} input images need a folder for --out, and {out} "
            f"{'is a file' if out.exists() else 'looks like a file name'}; pass a folder (outputs are named "
            f"<name>_x<scale>.png), or one image at a time"
        )
    to_folder = len(args.images) > 1 or out.is_dir() or not out.suffix
    model, cfg = load_trained_sr(args.checkpoint, args.device)
    targets = [out / f"{Path(src).stem}_x{cfg.scale}.png" if to_folder else out for src in args.images]
    for src, dst in zip(args.images, targets, strict=True):
        if not Path(src).is_file():
            raise UsageError(f"no image file {src}")
        if dst.exists() and not args.overwrite:
            raise UsageError(f"{dst} exists; pass --overwrite to replace it, or choose another --out")
    print(f"upscaling {len(args.images)} image(s) ×{cfg.scale} with {cfg.model} ({cfg.attention}) on {args.device}")
    for src, dst in zip(args.images, targets, strict=True):
        with Image.open(src) as im:  # the size only, so a long pass is announced before it starts
            w, h = im.size
        how = f"in {tile}×{tile} tiles" if tile else "one pass"
        print(f"{src} ({h}×{w}, {h * w:,} tokens per attention layer, {how}) …", flush=True)
        try:  # without --overwrite the file is published only if the name is still free (no check-then-write)
            r = upscale_file(model, cfg.scale, src, dst, tile=tile, overlap=overlap, replace=args.overwrite)
        except FileExistsError:
            raise UsageError(
                f"{dst} was created while upscaling (by another process?); it is not replaced: pass --overwrite to "
                "replace it, or choose another --out"
            ) from None
        print(f"  → {dst} ({r['sr_hw'][0]}×{r['sr_hw'][1]}, {r['seconds']:.2f} s)", flush=True)
    return 0


def _is_image_name(path: Path) -> bool:
    from mirrorla.data.sr import IMAGE_EXTENSIONS

    return path.suffix.lower() in IMAGE_EXTENSIONS


def _add_sr_compare_args(p: argparse.ArgumentParser) -> None:
    g = add_comparison_options(
        p,
        quick_help=f"a smoke run of minutes, not a result: {describe_preset('quick', SR_PRESETS)} "
        f"(without it: {describe_preset('default', SR_PRESETS)})",
        attentions=SR_DEFAULT_ATTENTIONS,
        seeds_help="comma-separated seeds (default: the preset's: 0,1,2; --quick 0)",
        out="runs/sr-compare",
    )
    g.add_argument(
        "--latency-rounds", type=positive_int, default=3, help="timed whole-image forwards per attention (median)"
    )
    add_train_config_options(
        p,
        SR_BASE,
        exclude=(*CLASSIFICATION_ONLY, "attention", "seed", "progress"),
        help_override=SR_HELP,
        shown={
            f: f"the preset's: {SR_PRESETS['default'][f]}, --quick {SR_PRESETS['quick'][f]}" for f in _SR_PRESET_FIELDS
        },
    )
    add_sr_options(p, SR_BASE)


@user_errors
def _run_sr_compare(args: argparse.Namespace) -> int:
    from mirrorla.engine.sr_compare import run_sr_compare

    args.out = preset_out(args)
    check_out_folder(args.out)
    check_comparison_out(args.out, args.resume, args.overwrite)
    cc = compare_config_from_args(args, SR_BASE.replace(progress=False), SR_PRESETS, _SR_PRESET_FIELDS)
    base = cc.base
    for name in cc.attentions:
        _check_options(base.replace(attention=name))
    try:
        results = run_sr_compare(cc, latency_rounds=args.latency_rounds)
    except KeyboardInterrupt:
        again = [a for a in getattr(args, "_argv", ["sr", "compare"]) if a != "--overwrite"]
        again += [] if "--resume" in again else ["--resume"]
        raise Interrupted(
            f"interrupted; finished runs are kept in {cc.out_dir}/runs. Continue with: mirrorla {shlex.join(again)}"
        ) from None
    print(f"wrote {args.out}/results.md, results.json, crops.png, psnr_vs_latency.png ({results['wall_s']:.0f} s)")
    return 0


_SUBCOMMANDS = {
    "train": (
        "train one SR network (default: sr_tiny with mirror at ×2 on the built-in photos)",
        _add_sr_train_args,
        _run_sr_train,
    ),
    "eval": (
        "score a trained SR checkpoint on whole images (PSNR/SSIM on Y), bicubic beside it",
        _add_sr_eval_args,
        _run_sr_eval,
    ),
    "compare": (
        "train the SR network with each attention and seed; table, JSON and figures",
        _add_sr_compare_args,
        _run_sr_compare,
    ),
    "upscale": (
        "upscale your own image files with a trained SR checkpoint (whole image in one pass, or --tile)",
        _add_sr_upscale_args,
        _run_sr_upscale,
    ),
}


COMMANDS = [
    command_family(
        "sr",
        "super-resolution with global attention over every LR pixel: train, eval, compare, upscale",
        _SUBCOMMANDS,
    )
]
