"""Tiled against whole-image SR output, and the memory estimate against measured peak RSS.

The numbers of docs/super-resolution.md ("Memory and --tile"):

    python scripts/sr_tiling_check.py tiles RUN        # RUN: an `sr train` run folder or checkpoint
    python scripts/sr_tiling_check.py memory           # sr_tiny, random weights, CPU

``tiles``: for each tile size, PSNR between tiled and whole output, the largest difference in 8-bit levels and
the change of PSNR against the HR image, per built-in test photo (default overlap). ``memory``: the estimate of
:func:`mirrorla.engine.sr.estimate_upscale_bytes` and the peak RSS measured by
:func:`mirrorla.bench.memory.measure_peak_memory`, whole and in 256² / 64² tiles. One thread.
"""

from __future__ import annotations

import argparse

import torch


def tiles(run: str, sizes: list[int]) -> None:
    from mirrorla.data.sr import load_pairs
    from mirrorla.engine.sr import image_scores, load_trained_sr, upscale, upscale_tiled

    model, cfg = load_trained_sr(run)
    pairs = load_pairs("photos", "test", cfg.scale, cfg.degradation)
    print("| tile | image | LR size | PSNR(tiled, whole) dB | largest difference | PSNR change vs HR dB |")
    print("|---:|---|---|---:|---:|---:|")
    for tile in sizes:
        for p in pairs:
            whole, tiled = upscale(model, p.lr), upscale_tiled(model, p.lr, tile)
            diff = (whole.int() - tiled.int()).abs()
            mse = diff.float().pow(2).mean().clamp_min(1e-12)
            psnr = 10 * torch.log10(255.0**2 / mse).item()
            change = image_scores(tiled, p.hr, cfg.scale)["psnr"] - image_scores(whole, p.hr, cfg.scale)["psnr"]
            h, w = p.lr.shape[1:]
            print(f"| {tile} | {p.name} | {h}×{w} | {psnr:.2f} | {diff.max().item()} | {change:+.4f} |", flush=True)


def memory() -> None:
    from mirrorla.bench.memory import exact_cpu_accounting, measure_peak_memory
    from mirrorla.engine.sr import estimate_upscale_bytes, upscale, upscale_tiled
    from mirrorla.models import create_model

    exact_cpu_accounting()
    print("| attention | LR size | tile | estimate MiB | measured MiB | measured / estimate |")
    print("|---|---|---:|---:|---:|---:|")
    cases = [("mirror", (128, 128)), ("mirror", (256, 256)), ("mirror", (800, 800)), ("softmax", (400, 300))]
    cases += [("nala", (400, 300)), ("pola", (600, 500))]
    for attention, hw in cases:
        model = create_model("sr_tiny", attention=attention, scale=2).eval()
        lr = torch.zeros(3, *hw, dtype=torch.uint8)
        for tile in (None, 256, 64):
            if tile is not None and tile >= max(hw):
                continue
            est = estimate_upscale_bytes(model, hw, tile)
            if tile is None:
                peak = measure_peak_memory(lambda m=model, x=lr: (upscale(m, x), None)[1], "cpu")
            else:
                peak = measure_peak_memory(lambda m=model, x=lr, t=tile: (upscale_tiled(m, x, t), None)[1], "cpu")
            print(
                f"| {attention} | {hw[0]}×{hw[1]} | {tile or 'whole'} | {est / 2**20:.1f} | {peak / 2**20:.1f} | "
                f"{peak / est:.2f} |",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tiles")
    t.add_argument("run")
    t.add_argument("--sizes", default="48,64,96,128")
    sub.add_parser("memory")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.what == "tiles":
        tiles(args.run, [int(s) for s in args.sizes.split(",")])
    else:
        memory()


if __name__ == "__main__":
    main()
