"""Which MirrorLA backend pays: time the alternatives of one ``mirror`` layer in ONE run.

Dimension letters: B batch, N tokens, C channels, H heads.

Each repeat runs every variant once, in a rotating order (interleaved, so load on a shared machine
hits all variants alike); the report gives each variant's median and its ratio to the first variant.
Every variant is checked against the reference composition first (fp32, relative RMS < 1e-5);
a variant that fails is reported as failed, never timed.

    OMP_NUM_THREADS=1 python scripts/bench_mirror_backend.py            # B 8, N 3136, C 192, H 3
    python scripts/bench_mirror_backend.py --batch 2 --tokens 196 --repeats 3   # a smoke run

Variants are functions ``(layer) -> None`` that set the layer's backend switches; only switches that
exist in the current code are offered (``--variants`` lists them).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

from mirrorla.registry import create_attention


def _fm(layer):
    return layer.feature_map


def reference(layer) -> None:
    """The one-op-per-formula composition (``mirrorla.ops.reflections`` reference functions)."""
    _fm(layer).fast_path = False


def fused_op(layer) -> None:
    """The fused op ``mirror_features`` on q, k from the plain projection."""
    _fm(layer).fast_path = True


VARIANTS = {"reference": reference, "fused_op": fused_op}
OPTIONAL = {}


def _fold(layer) -> None:
    """``fused_op`` + the constant reflections folded into the qkv weights every call (the default)."""
    _fm(layer).fast_path = True
    _fm(layer).__dict__.pop("fold_projection", None)


def _compile(layer) -> None:
    """The reference composition through ``torch.compile`` (compiled once, before timing)."""
    _fm(layer).fast_path = False
    _fm(layer).compile = True


def _bf16_core(layer) -> None:
    """``fused_op`` with the linear-attention core (kv state, products) in bfloat16."""
    _fm(layer).fast_path = True
    layer.core_dtype = "bfloat16"


def available(probe) -> dict:
    out = dict(VARIANTS)
    if hasattr(_fm(probe), "fold_projection"):
        out["fused_op+fold"] = _fold
    if hasattr(_fm(probe), "compile"):  # removed after the 2026-12-01 measurement
        out["compile"] = _compile
    if hasattr(probe, "core_dtype"):  # removed from the layers after the 2026-12-01 measurement
        out["fused_op+bf16_core"] = _bf16_core
    return out


def build(variant, dim, heads):
    torch.manual_seed(0)
    layer = create_attention("mirror", dim, heads)
    # today's default: every switch off that a variant may turn on
    if hasattr(_fm(layer), "fold_projection"):
        _fm(layer).fold_projection = lambda weight, bias: None  # instance override: no fold
    variant(layer)
    return layer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=3136)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="all", help="comma-separated names, or 'all'")
    args = p.parse_args()
    probe = create_attention("mirror", 16, 2)
    variants = available(probe)
    if args.variants != "all":
        variants = {n: variants[n] for n in args.variants.split(",")}
    B, N, C = args.batch, args.tokens, args.dim
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, N, C, generator=g)
    layers = {name: build(fn, C, args.heads) for name, fn in variants.items()}
    ref = build(reference, C, args.heads)
    with torch.no_grad():
        want = ref(x)
    ok = {}
    for name, layer in layers.items():
        with torch.no_grad():
            got = layer(x)  # also compiles / warms up
        err = float((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt())
        tol = 1e-2 if "bf16" in name else 1e-5
        ok[name] = err < tol
        print(f"check {name:20s} rel RMS vs reference {err:.2e} ({'ok' if ok[name] else 'FAILED'}, tol {tol:g})")
    timed = [n for n in layers if ok[n]]
    for name in timed:  # warm-up of the backward too (torch.compile builds the backward graph here)
        layers[name](x.clone().requires_grad_(True)).sum().backward()
        layers[name].zero_grad(set_to_none=True)
    times = {(n, m): [] for n in timed for m in ("train", "infer")}
    for r in range(args.repeats):
        order = timed[r % len(timed) :] + timed[: r % len(timed)]
        for name in order:
            layer = layers[name]
            xi = x.clone().requires_grad_(True)
            t0 = time.perf_counter()
            layer(xi).sum().backward()
            times[(name, "train")].append(time.perf_counter() - t0)
            layer.zero_grad(set_to_none=True)
            with torch.no_grad():
                t0 = time.perf_counter()
                layer(x)
                times[(name, "infer")].append(time.perf_counter() - t0)
    print(
        f"\n{datetime.date.today()}  {platform.processor() or platform.machine()}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}  B {B} N {N} C {C} H {args.heads}  repeats {args.repeats} (interleaved)"
    )
    base = timed[0]
    print(f"{'variant':22s} {'fwd+bwd s':>10s} {'ratio':>6s} {'infer s':>9s} {'ratio':>6s}")
    for name in timed:
        tr = statistics.median(times[(name, "train")])
        inf = statistics.median(times[(name, "infer")])
        tr0 = statistics.median(times[(base, "train")])
        inf0 = statistics.median(times[(base, "infer")])
        print(f"{name:22s} {tr:10.3f} {tr / tr0:6.2f} {inf:9.3f} {inf / inf0:6.2f}")


if __name__ == "__main__":
    main()
