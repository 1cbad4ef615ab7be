"""Numerics fingerprint: a seeded forward and backward of every registered attention and every model family at a
small size, per dtype (float32, float64), compared with ``tests/data/numerics_fingerprint.json``.

    python scripts/numerics_fingerprint.py            # compare with the committed file (exit 1 on a difference)
    python scripts/numerics_fingerprint.py --write    # record this machine's fingerprints (review the diff!)

Two records per case and dtype (each over the output, the input gradient and every parameter gradient):

- ``exact``: SHA-256 of the raw bytes, kept per *numerics key* — torch version, the CPU capability torch's kernels
  dispatch to (``torch.backends.cpu.get_cpu_capability()``) and the CPU model. On a key the file holds, any change
  of a single bit fails: a reordered sum (the kind of change that made published training curves stop
  reproducing: b21151c, a0aff2d, 24cebb1) is caught, so it is made knowingly. AVX2 and AVX-512 kernels (and the
  BLAS of another CPU) sum in different orders, so exact hashes cannot be shared across keys; a key the file does
  not hold is reported, not failed (``--write`` adds it).
- ``summary``: per tensor its mean absolute value and its mean against a fixed random ±1 pattern, as floats,
  compared on every machine with a tolerance relative to the tensor's mean absolute value (float32 2e-5,
  float64 1e-11). AVX2 against AVX-512 on one machine moved them by at most 6e-8 (float32) and 3e-16 (float64),
  so last-bit differences stay far below it while a change of the math (a formula, a constant, a missing term)
  large enough to matter moves them beyond it; smaller changes are left to the exact hashes. Hashing values
  rounded to a few significant digits was not used: with thousands of values some always sit next to a rounding
  boundary, so one ulp flips the hash on another CPU while a small real change can leave it unchanged.

Everything runs on one thread (results are exact per key only at a fixed thread count) with the library's default
backend switches (fast paths and fused attention on, whatever the environment says), i.e. what training uses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "tests" / "data" / "numerics_fingerprint.json"
DTYPES = ("float32", "float64")
RTOL = {"float32": 2e-5, "float64": 1e-11}


def _src() -> None:
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def numerics_key() -> str:
    import torch

    _src()
    from mirrorla.bench.machine import _cpu_model

    return f"torch {torch.__version__} | {torch.backends.cpu.get_cpu_capability()} | {_cpu_model()}"


# ---------------------------------------------------------------------------------------------------------------
# The cases: name → (module builder, input builder, forward)


def _attention_case(name: str):
    import torch

    from mirrorla import create_attention

    grid = (3, 5)  # non-square, 15 tokens; head dim 16

    def build():
        return create_attention(name, 32, num_heads=2)

    def inputs(dtype):
        g = torch.Generator().manual_seed(1)
        return torch.randn(2, grid[0] * grid[1], 32, generator=g, dtype=torch.float64).to(dtype)

    return build, inputs, lambda module, x: module(x, hw=grid)


def _image_model(name: str, attention: str | None, size: int, chans: int = 3, **kwargs):
    import torch

    from mirrorla import create_model

    def inputs(dtype):
        g = torch.Generator().manual_seed(1)
        return torch.randn(2, chans, size, size, generator=g, dtype=torch.float64).to(dtype)

    return lambda: create_model(name, attention, **kwargs), inputs, lambda module, x: module(x)


def _sequence_model():
    import torch

    from mirrorla import create_model

    def inputs(dtype):
        g = torch.Generator().manual_seed(1)
        return torch.randint(1, 12, (2, 24), generator=g)

    build = lambda: create_model("seq_tiny", "mirror", vocab_size=12, num_classes=3, max_len=24)  # noqa: E731
    return build, inputs, lambda module, x: module(x)


def cases() -> dict[str, Callable[[], tuple]]:
    """Every registered attention (``list_attentions()``) and one small model of every family."""
    _src()
    from mirrorla import list_attentions

    out: dict[str, Callable[[], tuple]] = {
        f"attention/{n}": (lambda n=n: _attention_case(n)) for n in list_attentions()
    }
    deit = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5)
    pvt = dict(img_size=64, embed_dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2),
               depths=(1, 1, 1, 1), num_classes=5)  # fmt: skip
    l2vit = dict(depths=(2, 2, 2, 2), dims=(32, 32, 64, 64), num_heads=(1, 1, 2, 2), num_classes=5)
    vit = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10, in_chans=1)
    out |= {
        "model/vit_mirror": lambda: _image_model("vit", "mirror", 28, chans=1, **vit),
        "model/deit_tiny_mirror": lambda: _image_model("deit_tiny_mirror", None, 32, **deit),
        "model/pvt_tiny_mirror": lambda: _image_model("pvt_tiny_mirror", None, 64, **pvt),
        "model/l2vit_tiny": lambda: _image_model("l2vit_tiny", None, 64, **l2vit),
        "model/sr_tiny_mirror": lambda: _image_model("sr_tiny", "mirror", 12),
        "model/seq_tiny_mirror": _sequence_model,
    }
    return out


def _tensors(case: Callable[[], tuple], dtype_name: str) -> dict[str, object]:
    """Output, input gradient (float inputs) and parameter gradients of one seeded forward/backward."""
    import torch

    dtype = getattr(torch, dtype_name)
    build, inputs, forward = case()
    torch.manual_seed(0)
    module = build().to(dtype)
    x = inputs(dtype)
    if x.is_floating_point():
        x.requires_grad_(True)
    y = forward(module, x)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    (y * weights).sum().backward()
    named = {"output": y.detach()}
    if x.is_floating_point():
        named["input.grad"] = x.grad
    named |= {f"{n}.grad": p.grad for n, p in sorted(module.named_parameters()) if p.grad is not None}
    return named


def _summaries(tensors: dict) -> dict[str, list[float]]:
    """Output, input gradient, and all parameter gradients together (the exact hash covers each one)."""
    import torch

    grads = [t.flatten() for k, t in tensors.items() if k not in ("output", "input.grad")]
    shown = {k: tensors[k] for k in ("output", "input.grad") if k in tensors}
    if grads:
        shown["parameters.grad"] = torch.cat(grads)
    return {k: _summary(t) for k, t in shown.items()}


def _summary(t) -> list[float]:
    import torch

    flat = t.detach().double().flatten()
    signs = torch.randint(0, 2, flat.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    return [flat.abs().mean().item(), (flat * signs).mean().item()]


def fingerprint(names: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """case → dtype → {"sha256", "summary": {tensor: [mean |t|, mean of t·(±1)]}} on one thread (tensors:
    output, input gradient, all parameter gradients as one)."""
    import torch

    _src()
    from mirrorla.feature_maps.base import fast_path_default, set_fast_path
    from mirrorla.layers.fused import set_fused_attn, use_fused_attn

    threads, fast, fused = torch.get_num_threads(), fast_path_default(), use_fused_attn()
    torch.set_num_threads(1)
    set_fast_path(True)  # the library's defaults, whatever the environment (MIRRORLA_FAST_PATH=0, ...) says
    set_fused_attn(True)
    try:
        out = {}
        for name, case in cases().items():
            if names is not None and name not in names:
                continue
            out[name] = {}
            for dtype in DTYPES:
                tensors = _tensors(case, dtype)
                digest = hashlib.sha256()
                for key, t in tensors.items():
                    digest.update(key.encode())
                    digest.update(t.detach().contiguous().numpy().tobytes())
                out[name][dtype] = {"sha256": digest.hexdigest(), "summary": _summaries(tensors)}
        return out
    finally:
        torch.set_num_threads(threads)
        set_fast_path(fast)
        set_fused_attn(fused)


def compare(stored: dict, current: dict, key: str) -> tuple[list[str], list[str]]:
    """(summary differences beyond tolerance, exact differences on this key); both empty when they agree."""
    approx, exact = [], []
    for name, per_dtype in current.items():
        for dtype, record in per_dtype.items():
            reference = stored.get("summary", {}).get(name, {}).get(dtype)
            if reference is None:
                approx.append(f"{name} {dtype}: no stored summary")
                continue
            if set(reference) != set(record["summary"]):
                approx.append(f"{name} {dtype}: tensors {sorted(set(reference) ^ set(record['summary']))} differ")
                continue
            for tensor, (mean_abs, signed) in record["summary"].items():
                ref_abs, ref_signed = reference[tensor]
                scale = max(ref_abs, 1e-30)
                if abs(mean_abs - ref_abs) > RTOL[dtype] * scale or abs(signed - ref_signed) > RTOL[dtype] * scale:
                    approx.append(
                        f"{name} {dtype} {tensor}: {mean_abs:.9g}/{signed:.9g} vs {ref_abs:.9g}/{ref_signed:.9g}"
                    )
            hashes = stored.get("exact", {}).get(key)
            if hashes is not None and hashes.get(name, {}).get(dtype) != record["sha256"]:
                exact.append(f"{name} {dtype}")
    return approx, exact


def record(current: dict, previous: dict | None, key: str) -> dict:
    """The file's content with this machine's exact hashes under ``key`` and the summaries replaced."""
    previous = previous or {}
    exact = dict(previous.get("exact", {}))
    exact[key] = {name: {d: r["sha256"] for d, r in per.items()} for name, per in current.items()}
    return {
        "about": "scripts/numerics_fingerprint.py; regenerate with --write only for a change meant to alter numerics",
        "summary": {name: {d: r["summary"] for d, r in per.items()} for name, per in current.items()},
        "exact": dict(sorted(exact.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="record this machine's fingerprints in the file")
    args = parser.parse_args(argv)
    key = numerics_key()
    current = fingerprint()
    stored = json.loads(FILE.read_text()) if FILE.is_file() else None
    if args.write:
        if stored is not None:
            approx, _ = compare(stored, current, key)
            for line in approx:
                print(f"summary changes: {line}")
        FILE.parent.mkdir(parents=True, exist_ok=True)
        FILE.write_text(json.dumps(record(current, stored, key), indent=1) + "\n")
        print(f"wrote {FILE} ({len(current)} cases, exact hashes for {key})")
        return 0
    if stored is None:
        print(f"no {FILE}: run with --write")
        return 1
    approx, exact = compare(stored, current, key)
    for line in approx:
        print(f"summary differs: {line}")
    for line in exact:
        print(f"bits differ ({key}): {line}")
    if key not in stored.get("exact", {}):
        print(f"no exact fingerprints for {key}: only the summaries were compared")
    return 1 if approx or exact else 0


if __name__ == "__main__":
    sys.exit(main())
