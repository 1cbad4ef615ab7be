"""``mirrorla models`` and ``mirrorla flops``: list the timm model names, count params and MACs."""

from __future__ import annotations

import argparse
import re

from mirrorla.commands import Command, UsageError
from mirrorla.commands.options import positive_int

__all__ = ["COMMANDS"]


def _add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'pvt_tiny_*'")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list the trained weights shipped with mirrorla instead: timm.create_model(NAME, pretrained=True), "
        "or pretrained:NAME in eval, analyze, sr eval and sr upscale",
    )


def _run_pretrained(pattern: str | None) -> int:
    from mirrorla.weights import get_weights, list_weights

    names = list_weights(pattern)
    if not names:
        print(f"no shipped weights match {pattern!r}" if pattern else "no weights are shipped with this install")
        return 1
    for name in names:
        meta = get_weights(name).meta
        result = meta["result"]
        print(f"{name:36s} {result['metric']} {result['value']:.2f} on {result['data']}; {meta['command']}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    if args.pretrained:
        return _run_pretrained(args.pattern)
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
    p.add_argument("--img-size", type=positive_int, default=224, help="square input side (a multiple of the patch)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar over the models"
    )


#: timm's patch embedding asserts on an input side it cannot cut into patches.
_PATCH_ASSERT = re.compile(r"Input (?:height|width) \((\d+)\) should be divisible by patch size \((\d+)\)")


def run_flops(args: argparse.Namespace) -> int:
    import platform
    import sys
    import time

    import torch
    from tqdm.auto import tqdm

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
    costs = []
    for name in tqdm(names, desc="flops", unit="model", file=sys.stderr, disable=not args.progress, leave=False):
        try:
            costs.append(model_cost(name, img_size=args.img_size))
        except AssertionError as err:
            match = _PATCH_ASSERT.search(str(err))
            if match is None:
                raise
            patch = int(match.group(2))
            raise UsageError(
                f"--img-size {args.img_size}: {name} cuts its input into {patch}×{patch} patches, so the size must be "
                f"a multiple of {patch} (e.g. {max(patch, args.img_size // patch * patch)})"
            ) from None
    print(cost_table(costs))
    print(
        f"\nMACs at {args.img_size}x{args.img_size}, batch 1: matmuls and convolutions counted by "
        "torch.utils.flop_counter on the unfused attention path; elementwise ops not counted. "
        f"torch {torch.__version__}, {platform.machine()}, {time.strftime('%Y-%m-%d', time.gmtime())}."
    )
    return 0


COMMANDS = [
    Command("models", "list the mirrorla model names registered with timm", _add_models_args, run_models),
    Command(
        "flops",
        "parameters and multiply-accumulates (attention matmuls included; unfused path, FlopCounterMode) "
        "as a Markdown table",
        _add_flops_args,
        run_flops,
    ),
]
