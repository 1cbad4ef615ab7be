"""``mirrorla models`` and ``mirrorla flops``: list the timm model names, count params and MACs."""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mirrorla.cli import command

__all__ = ["run_models", "run_flops"]


def _add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'pvt_tiny_*'")


@command("models", "list the mirrorla model names registered with timm")(_add_models_args)
def run_models(args: argparse.Namespace) -> int:
    import timm

    from mirrorla.models import list_models

    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    for name in names:
        doc = (timm.models.model_entrypoint(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:32s} {doc}")
    return 0


def _add_flops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("patterns", nargs="+", help="model names or shell patterns, e.g. 'deit_tiny_*' l2vit_tiny")
    p.add_argument("--img-size", type=int, default=224, help="square input side")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


@command(
    "flops",
    "parameters and multiply-accumulates (attention matmuls included; unfused path, FlopCounterMode) "
    "as a Markdown table",
)(_add_flops_args)
def run_flops(args: argparse.Namespace) -> int:
    from mirrorla.models import list_models
    from mirrorla.models.flops import cost_table, model_cost

    if args.threads:
        torch.set_num_threads(args.threads)
    names: list[str] = []
    for pattern in args.patterns:
        matched = list_models(pattern)
        if not matched:
            print(f"no model matches {pattern!r}; see `mirrorla models`")
            return 1
        names += [n for n in matched if n not in names]
    costs = [model_cost(name, img_size=args.img_size) for name in names]
    print(cost_table(costs))
    print(
        f"\nMACs at {args.img_size}x{args.img_size}, batch 1: matmuls and convolutions counted by "
        "torch.utils.flop_counter on the unfused attention path; elementwise ops not counted. "
        f"torch {torch.__version__}, {platform.machine()}, {time.strftime('%Y-%m-%d', time.gmtime())}."
    )
    return 0
