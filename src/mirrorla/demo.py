"""``mirrorla demo`` and ``mirrorla list``: build every registered attention and time it."""

from __future__ import annotations

import argparse
import time

import torch

from mirrorla.cli import command
from mirrorla.registry import create_attention, get_attention_entry, list_attentions


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim", type=int, default=384, help="channels C")
    p.add_argument("--heads", type=int, default=6, help="attention heads")
    p.add_argument("--grid", type=int, default=56, help="token grid side; N = grid²")
    p.add_argument("--batch", type=int, default=2, help="batch size")
    p.add_argument("--attentions", default="all", help="comma-separated registry names, or 'all'")
    p.add_argument("--seed", type=int, default=0, help="random seed")


@command("demo", "build each attention, run forward+backward on a token grid, print a table")(_add_demo_args)
def run_demo(args: argparse.Namespace) -> int:
    names = list_attentions() if args.attentions == "all" else [n.strip() for n in args.attentions.split(",")]
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


@command("list", "list the registered attentions (and models, when available)")(_add_list_args)
def run_list(args: argparse.Namespace) -> int:
    print("attentions:")
    for name in list_attentions(args.pattern):
        print(f"  {name:20s} {get_attention_entry(name).description}")
    return 0
