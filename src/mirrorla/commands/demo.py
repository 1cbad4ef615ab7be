"""``mirrorla demo`` and ``mirrorla list``: build every registered attention and time it; list the names."""

from __future__ import annotations

import argparse
import time

from mirrorla.commands import Command, UsageError
from mirrorla.commands.options import positive_int

__all__ = ["COMMANDS"]


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim", type=positive_int, default=384, help="channels C (a multiple of --heads)")
    p.add_argument("--heads", type=positive_int, default=6, help="attention heads")
    p.add_argument("--grid", type=positive_int, default=56, help="token grid side; N = grid²")
    p.add_argument("--batch", type=positive_int, default=2, help="batch size")
    p.add_argument("--attentions", default="all", help="comma-separated registry names (`mirrorla list`), or 'all'")
    p.add_argument("--seed", type=int, default=0, help="random seed")


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from mirrorla.registry import create_attention, get_attention_entry, list_attentions

    if args.dim % args.heads:
        raise UsageError(f"--dim {args.dim} must be a multiple of --heads {args.heads} (each head gets dim / heads)")
    names = list_attentions() if args.attentions == "all" else [n.strip() for n in args.attentions.split(",")]
    for name in names:
        try:
            get_attention_entry(name)
        except ValueError as err:
            raise UsageError(f"--attentions: {err}") from err
    torch.manual_seed(args.seed)
    n = args.grid * args.grid
    x = torch.randn(args.batch, n, args.dim)
    print(f"input (B, N, C) = {tuple(x.shape)}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| attention | params | output shape | fwd+bwd ms | output finite |")
    print("|---|---:|---|---:|---|")
    for name in names:
        layer = create_attention(name, args.dim, num_heads=args.heads)
        xi = x.clone().requires_grad_(True)
        layer(xi, hw=(args.grid, args.grid)).sum().backward()  # warm-up
        xi.grad = None
        t0 = time.perf_counter()
        y = layer(xi, hw=(args.grid, args.grid))
        y.sum().backward()
        ms = (time.perf_counter() - t0) * 1e3
        params = sum(p.numel() for p in layer.parameters())
        print(f"| {name} | {params:,} | {tuple(y.shape)} | {ms:.1f} | {bool(torch.isfinite(y).all())} |")
    return 0


def _add_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'mirror*'")


def run_list(args: argparse.Namespace) -> int:
    from mirrorla.registry import get_attention_entry, list_attentions

    names = list_attentions(args.pattern)
    if not names:
        print(f"no attention matches {args.pattern!r}")
        return 1
    print("attentions:")
    for name in names:
        print(f"  {name:20s} {get_attention_entry(name).description}")
    print("models built from them: `mirrorla models`")
    return 0


COMMANDS = [
    Command("demo", "build each attention, run forward+backward on a token grid, print a table", _add_demo_args,
            run_demo),
    Command("list", "list the registered attentions (the models: `mirrorla models`)", _add_list_args, run_list),
]  # fmt: skip
