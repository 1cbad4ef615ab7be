"""Mixed precision against fp32 in ONE run: speed and accuracy of attention layers under autocast.

Dimension letters: B batch, N tokens (an s×s grid), C channels, H heads.

For each layer, four variants run interleaved (each repeat runs all of them, in rotating order): fp32;
bf16 autocast with the linear-attention GEMMs in fp32 (the CPU default); bf16 autocast with them in bf16
(the CUDA default, ``set_bf16_gemm_devices``); fp16 autocast (the core stays fp32: φ exceeds fp16's
range). Reported: median fwd+bwd ms, its ratio to fp32, and the relative error of the output against
fp32 on inputs ×``--scale``, with a check that output and input gradient are finite.

    python scripts/bench_mixed_precision.py                             # N 16384, C 384, H 6, CPU
    python scripts/bench_mixed_precision.py --device cuda --tokens 65536
    python scripts/bench_mixed_precision.py --tokens 1024 --repeats 2 --methods mirror   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import statistics
import time

import torch

from mirrorla.bench.machine import describe_machine, synchronize
from mirrorla.ops.linear_attention import bf16_gemm_devices, set_bf16_gemm_devices
from mirrorla.registry import create_attention

VARIANTS = ("fp32", "bf16, fp32 GEMMs", "bf16, bf16 GEMMs", "fp16")


def variant(name: str, device: torch.device):
    """(autocast context, GEMM devices) of a variant."""
    if name == "fp32":
        return contextlib.nullcontext(), set()
    dtype = torch.float16 if name == "fp16" else torch.bfloat16
    gemms = {device.type} if name == "bf16, bf16 GEMMs" else set()
    return torch.autocast(device.type, dtype=dtype), gemms


def run(layer, x, hw, grad, name, device):
    ctx, gemms = variant(name, device)
    set_bf16_gemm_devices(gemms)
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    with ctx:
        y = layer(x, hw=hw)
    y.float().backward(grad)
    return y.detach().float(), x.grad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="linear_relu,mirror,pola,flatten,nala,l2vit_lga,softmax")
    p.add_argument("--tokens", type=int, default=16384, help="N, a square s*s")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", type=float, default=100.0, help="input scale of the accuracy check")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    side = math.isqrt(args.tokens)
    if side * side != args.tokens:
        p.error(f"--tokens {args.tokens} is not a square s*s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, hw = torch.device(args.device), (side, side)
    before = bf16_gemm_devices()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, args.tokens, args.dim, generator=gen).to(device)
    grad = torch.randn(1, args.tokens, args.dim, generator=gen).to(device)
    print(
        f"mixed precision vs fp32: N={args.tokens} C={args.dim} H={args.heads}, {device}, fwd+bwd, median of "
        f"{args.repeats}; error on inputs ×{args.scale:g}. {datetime.date.today()}, "
        f"{describe_machine(device)['device_name']}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        "\n| layer | "
        + " | ".join(f"{v} ms (×fp32)" for v in VARIANTS)
        + " | "
        + " | ".join(f"{v} rel. error" for v in VARIANTS[1:])
        + " |"
    )
    print("|---|" + "---:|" * (2 * len(VARIANTS) - 1))
    try:
        for name in args.methods.split(","):
            torch.manual_seed(0)
            layer = create_attention(name, args.dim, num_heads=args.heads).to(device)
            ref, _ = run(layer, args.scale * x, hw, grad, "fp32", device)
            errors = []
            for v in VARIANTS[1:]:
                out, gx = run(layer, args.scale * x, hw, grad, v, device)
                finite = bool(torch.isfinite(out).all() and torch.isfinite(gx).all())
                err = ((out - ref).norm() / ref.norm()).item()
                errors.append(f"{err:.1e}" + ("" if finite else " (non-finite!)"))
            times = {v: [] for v in VARIANTS}
            for v in VARIANTS:
                run(layer, x, hw, grad, v, device)  # warm-up
            for i in range(args.repeats):
                for v in VARIANTS[i % len(VARIANTS) :] + VARIANTS[: i % len(VARIANTS)]:
                    synchronize(device)
                    t0 = time.perf_counter()
                    run(layer, x, hw, grad, v, device)
                    synchronize(device)
                    times[v].append(time.perf_counter() - t0)
            med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
            cells = [f"{med[v]:.0f} ({med[v] / med['fp32']:.2f})" for v in VARIANTS]
            print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(errors) + " |", flush=True)
    finally:
        set_bf16_gemm_devices(before)


if __name__ == "__main__":
    main()
