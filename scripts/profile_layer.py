"""Where one attention layer's forward+backward time goes: torch.profiler's ops, by self time.

Dimension letters: B batch (1), N tokens (an s×s grid), C channels, H heads.

    python scripts/profile_layer.py l2vit_lga --tokens 16384 --threads 2
    python scripts/profile_layer.py mirror --tokens 16384 --rows 25

Builds the registered attention ``NAME`` at C = --dim, H = --heads (a grid-sized key table for the grid
of N, as ``mirrorla bench ops`` does), runs two untimed forward+backward steps, profiles a third, and prints
the ops sorted by self CPU time, then the share of the step spent in matrix products (mm, addmm, bmm:
the projections and the attention's own GEMMs) and in the rest.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.profiler import ProfilerActivity, profile

from mirrorla.registry import create_attention, get_attention_entry, list_attentions, with_build_grid

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="registered attention, e.g. mirror, linear_relu, flatten, l2vit_lga")
    p.add_argument("--tokens", type=int, default=16384, help="N, a square s*s")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=15, help="ops to list")
    args = p.parse_args()
    if args.name not in list_attentions():
        p.error(f"unknown attention {args.name!r}; registered: {', '.join(list_attentions())}")
    side = math.isqrt(args.tokens)
    if args.tokens <= 0 or side * side != args.tokens:
        p.error(f"--tokens {args.tokens} is not a square s*s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hw = (side, side)
    layer = create_attention(
        args.name, args.dim, num_heads=args.heads, **with_build_grid(get_attention_entry(args.name), hw, {})
    )
    x = torch.randn(1, args.tokens, args.dim, requires_grad=True)
    grad = torch.randn(1, args.tokens, args.dim)

    def step() -> None:
        layer(x, hw=hw).backward(grad)
        x.grad = None
        layer.zero_grad(set_to_none=True)

    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMMS)
    bmm = sum(e.self_cpu_time_total for e in events if e.key == "aten::bmm")
    print(
        f"{args.name}, N={args.tokens:,}, C={args.dim}, H={args.heads}, {args.threads} threads: fwd+bwd step "
        f"{total / 1e3:.1f} ms self CPU; matrix products {gemm / 1e3:.1f} ms ({gemm / total:.0%}), of them batched "
        f"(the attention's own: φKᵀV, φQ·S and their gradients) {bmm / 1e3:.1f} ms; "
        f"the rest {(total - gemm) / 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
