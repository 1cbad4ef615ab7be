"""Our PolaFormer, FLatten and L²ViT layers against the papers' official modules, fwd+bwd, in ONE run.

Dimension letters: B batch, N tokens (an s×s grid), C channels, H heads.

For each peer and N: build our layer and the official module with the same configuration (the
official positional table sized to the full s×s grid, i.e. one window covering the image), give our
layer random parameters, copy them into the official module by an explicit name map, and check that
outputs and gradients (input and every parameter) agree to a relative RMS error < 1e-4 in fp32. A
peer that fails is reported as failed and not timed. Then forward+backward (``y.backward(g)``,
gradients reset every time) is timed interleaved: after one warm-up each, every repeat runs both
modules and the projections alone (the qkv and output Linear layers both sides pay), in rotating
order, so load on a shared machine hits all alike. The report gives the medians, official_ms / ours_ms
(target ≥ 1.3) and the ceiling official_ms / projections_ms: the speed-up a free attention part would
give, so a ceiling below 1.3 says the target needs faster GEMMs, not a faster attention. Beside it: what
our layer spends beyond the projections, and the budget for that part that 1.3× allows
(official_ms / 1.3 − projections_ms). fp32, CPU,
B = 1, C = 384, H = 6.

No official code is copied here; each official file is imported from a checkout you pass:

    git clone https://github.com/ZacharyMeng/PolaFormer              # models/pola_swin.py
    git clone https://github.com/LeapLabTHU/FLatten-Transformer      # models/flatten_swin.py
    git clone https://github.com/ChuanyangZheng/L2ViT                # classification/models/l2vit.py
    pip install einops        # imported (unused) by the PolaFormer and FLatten files; timm is needed too

    python scripts/bench_official_peers.py --pola-repo PolaFormer --flatten-repo FLatten-Transformer \\
        --l2vit-repo L2ViT --threads 2 --out bench_official_peers.json
    python scripts/bench_official_peers.py --l2vit-repo L2ViT --sizes 196,1024 --repeats 2 --threads 1  # smoke

A peer without a checkout path is skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mirrorla.bench.machine import describe_machine
from mirrorla.registry import create_attention

DIM, HEADS = 384, 6
KERNEL, ALPHA, FOCUSING_FACTOR, MIN_DENOMINATOR = 5, 4, 3, 100.0  # the official defaults, given to both sides
TOLERANCE = 1e-4  # relative RMS in fp32; the two sides differ only in the order of reductions
TARGET = 1.3  # official_ms / ours_ms
#: Noise std added to our parameters before the copy, so that zero-initialised tables (scale, power, P)
#: and biases take part in the check; everything else gets 0.02 (the trunc_normal std of the weights).
NOISE = {"feature_map.scale": 0.5, "feature_map.power": 1.0, "pos_embed.weight": 0.2, "temperature": 0.05}


@dataclass(frozen=True)
class Peer:
    label: str
    option: str  # the command-line flag that takes the checkout
    source: str  # the official repository
    file: str  # the official file inside the checkout
    cls_name: str
    official: Callable[[type, int], nn.Module]  # (official class, grid side s) → module
    ours: Callable[[int], nn.Module]  # grid side s → our layer
    call: Callable[[nn.Module, Tensor, int], Tensor]  # (official module, x, s) → y
    param_map: dict[str, str]  # official parameter name → our parameter name


PEERS = {
    "pola": Peer(
        "PolaFormer",
        "--pola-repo",
        "github.com/ZacharyMeng/PolaFormer",
        "models/pola_swin.py",
        "PolaLinearAttention",
        lambda cls, s: cls(DIM, (s, s), HEADS, qkv_bias=True, kernel_size=KERNEL, alpha=ALPHA),
        lambda s: create_attention("pola", DIM, num_heads=HEADS, key_pos_grid=(s, s), dwc_kernel=KERNEL, alpha=ALPHA),
        lambda m, x, s: m(x, s, s),  # the official forward ignores H, W and takes the square root of N
        {
            "qkvg.weight": "qkv.weight",  # (4C, C): q, k, v, g blocks of C rows, head-major inside each
            "qkvg.bias": "qkv.bias",
            "proj.weight": "proj.weight",
            "proj.bias": "proj.bias",
            "dwc.weight": "dwc.conv.weight",  # (D, 1, 5, 5), shared by the heads
            "dwc.bias": "dwc.conv.bias",
            "scale": "feature_map.scale",  # (1, 1, C)
            "power": "feature_map.power",  # (1, H, 1, D)
            "positional_encoding": "pos_embed.weight",  # (1, N, C)
        },
    ),
    "flatten": Peer(
        "FLatten",
        "--flatten-repo",
        "github.com/LeapLabTHU/FLatten-Transformer",
        "models/flatten_swin.py",
        "FocusedLinearAttention",
        lambda cls, s: cls(DIM, (s, s), HEADS, qkv_bias=True, focusing_factor=FOCUSING_FACTOR, kernel_size=KERNEL),
        lambda s: create_attention(
            "flatten", DIM, num_heads=HEADS, key_pos_grid=(s, s), dwc_kernel=KERNEL, focusing_factor=FOCUSING_FACTOR
        ),
        lambda m, x, s: m(x),  # square grid from N, as above
        {
            "qkv.weight": "qkv.weight",  # (3C, C)
            "qkv.bias": "qkv.bias",
            "proj.weight": "proj.weight",
            "proj.bias": "proj.bias",
            "dwc.weight": "dwc.conv.weight",
            "dwc.bias": "dwc.conv.bias",
            "scale": "feature_map.scale",
            "positional_encoding": "pos_embed.weight",
        },
    ),
    "l2vit_lga": Peer(
        "L²ViT LGA",
        "--l2vit-repo",
        "github.com/ChuanyangZheng/L2ViT",
        "classification/models/l2vit.py",
        "LinearAttention",
        # qkv_bias=True as LGABlock passes it (the class's own default is False).
        lambda cls, s: cls(DIM, num_heads=HEADS, qkv_bias=True),
        lambda s: create_attention("l2vit_lga", DIM, num_heads=HEADS, min_denominator=MIN_DENOMINATOR),
        lambda m, x, s: m(x),
        {
            "qkv.weight": "qkv.weight",
            "qkv.bias": "qkv.bias",
            "proj.weight": "proj.weight",
            "proj.bias": "proj.bias",
            "temperature": "temperature",  # (H, 1, 1)
        },
    ),
}


class PeerUnavailable(Exception):
    """The official file is missing or imports a package that is not installed."""


def load_official(peer: Peer, repo: Path) -> type:
    """The official class, imported from ``repo/peer.file`` alone (no package import, no sys.path change)."""
    path = repo / peer.file
    if not path.is_file():
        raise PeerUnavailable(f"{path} not found; {peer.option} takes the root of a checkout of {peer.source}")
    spec = importlib.util.spec_from_file_location(f"official_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # timm's @register_model (L²ViT) looks its module up there
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # timm's deprecated ``timm.models.layers`` path
            spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        del sys.modules[spec.name]
        missing = e.name.split(".")[0]
        raise PeerUnavailable(f"{path} imports {missing!r}, which is not installed: pip install {missing}") from None
    return getattr(module, peer.cls_name)


def repo_commit(repo: Path) -> str | None:
    if not (repo / ".git").exists():  # an exported tree (git archive): not the commit of an enclosing repo
        return None
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def rel_rms(a: Tensor, ref: Tensor) -> float:
    return ((a - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


@torch.no_grad()
def randomise(layer: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in layer.named_parameters():
        p.add_(torch.randn(p.shape, generator=gen) * NOISE.get(name, 0.02))


def build_pair(peer: Peer, cls: type, side: int) -> tuple[nn.Module, nn.Module]:
    """Our layer with random parameters and the official module holding a copy of them."""
    torch.manual_seed(0)
    ours = peer.ours(side)
    randomise(ours, seed=side)
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print their configuration
        official = peer.official(cls, side)
    ours_state = ours.state_dict()
    unmapped = set(ours_state) - set(peer.param_map.values())
    if unmapped:
        raise ValueError(f"{peer.label}: our parameters {sorted(unmapped)} have no official counterpart in param_map")
    official.load_state_dict({o: ours_state[m].clone() for o, m in peer.param_map.items()}, strict=True)
    return ours, official


def fwd_bwd(run: Callable[[Tensor], Tensor], module: nn.Module, x: Tensor, grad: Tensor) -> Tensor:
    module.zero_grad(set_to_none=True)
    x.grad = None
    y = run(x)
    y.backward(grad)
    return y.detach()


def check(peer: Peer, ours: nn.Module, official: nn.Module, side: int) -> dict:
    """Relative RMS errors of the output and of every gradient (input, mapped parameters), official = reference."""
    gen = torch.Generator().manual_seed(1)
    # Token norms spread log-uniformly over [0.01, 1] so that L²ViT's clamp (denominator ≥ 100) binds for
    # part of the tokens at N ≲ 3136 (measured: 96 % of them at N = 196, 26 % at 3136, none at 16384).
    token_scale = 0.01 ** torch.rand(1, side * side, 1, generator=gen)
    x = torch.randn(1, side * side, DIM, generator=gen) * token_scale
    grad = torch.randn(1, side * side, DIM, generator=gen)
    x_ours, x_off = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ours = fwd_bwd(lambda t: ours(t, hw=(side, side)), ours, x_ours, grad)
    y_off = fwd_bwd(lambda t: peer.call(official, t, side), official, x_off, grad)
    ours_params, off_params = dict(ours.named_parameters()), dict(official.named_parameters())
    grad_errors = {"input": rel_rms(x_ours.grad, x_off.grad)}
    for off_name, our_name in peer.param_map.items():
        grad_errors[our_name] = rel_rms(ours_params[our_name].grad, off_params[off_name].grad)
    worst = max(grad_errors, key=grad_errors.get)
    return {"output_rel_rms": rel_rms(y_ours, y_off), "grad_rel_rms": grad_errors[worst], "worst_grad": worst}


class Projections(nn.Module):
    """The projections every layer of both sides pays, and nothing else: x → qkv(g) Linear → proj Linear.
    Its time is the floor of any layer with these projections; official_ms / floor_ms is the largest
    speed-up a faster attention part could give."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, layer.qkv.out_features), nn.Linear(DIM, DIM)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.qkv(x)[..., :DIM])


def time_pair(peer: Peer, ours: nn.Module, official: nn.Module, side: int, repeats: int) -> dict:
    x = torch.randn(1, side * side, DIM).requires_grad_(True)
    grad = torch.randn(1, side * side, DIM)
    floor = Projections(ours)
    runs = {
        "official": lambda: fwd_bwd(lambda t: peer.call(official, t, side), official, x, grad),
        "ours": lambda: fwd_bwd(lambda t: ours(t, hw=(side, side)), ours, x, grad),
        "projections": lambda: fwd_bwd(floor, floor, x, grad),
    }
    for run in runs.values():
        run()  # warm-up: allocator, thread pool
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for i in range(repeats):
        for name in order[i % 3 :] + order[: i % 3]:  # rotating order: load hits all three alike
            t0 = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    ms = {name: statistics.median(t) for name, t in times.items()}
    return {
        "official_ms": ms["official"],
        "ours_ms": ms["ours"],
        "projections_ms": ms["projections"],
        "ratio": ms["official"] / ms["ours"],
        "ceiling": ms["official"] / ms["projections"],
        "times_ms": times,
    }


def resolve_out(p: argparse.ArgumentParser, out: Path | None) -> Path | None:
    """The JSON path for ``--out``, checked before anything is timed (a folder gets official_peers.json)."""
    if out is None:
        return None
    if out.is_dir() or out.suffix == "":
        out = out / "official_peers.json"
    if out.suffix != ".json":
        p.error(f"--out {out}: expected a .json file or a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {out}: cannot create its folder ({e})")
    if not os.access(out.parent, os.W_OK):
        p.error(f"--out {out}: its folder is not writable")
    return out


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        f.write(text)
    try:
        os.replace(f.name, path)
    except OSError:
        os.unlink(f.name)  # no stray temporary file beside an old result
        raise


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"## Official peers vs ours: fwd+bwd, fp32 CPU, B=1, C={DIM}, H={HEADS}",
        "",
        f"{meta['date']}, {meta['machine']['cpu_model']} ({meta['machine']['logical_cpus']} logical CPUs), "
        f"torch {meta['machine']['torch']}, {meta['threads']} torch threads, median of {meta['repeats']} "
        f"interleaved repeats. Command: `{meta['command']}`",
        "",
        "Official: "
        + "; ".join(
            f"{o['source']} `{o['file']}` @ {o['commit'] or 'unknown commit'}" for o in meta["official"].values()
        ),
        "",
        "| peer | N (grid) | rel-RMS out | rel-RMS grad (worst) | official ms | ours ms | official/ours | ≥ 1.3× "
        "| projections ms | ceiling official/projections | ours beyond projections ms | budget for 1.3× ms |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        side = math.isqrt(r["N"])
        head = f"| {r['peer']} | {r['N']:,} ({side}×{side}) |"
        if r["status"] != "ok":
            errors = f"{r['output_rel_rms']:.1e} | {r['grad_rel_rms']:.1e}"
            lines.append(f"{head} {errors} | — | — | — | {r['status']} | — | — | — | — |")
            continue
        lines.append(
            f"{head} {r['output_rel_rms']:.1e} | {r['grad_rel_rms']:.1e} ({r['worst_grad']}) | {r['official_ms']:.1f} "
            f"| {r['ours_ms']:.1f} | {r['ratio']:.2f} | {'yes' if r['ratio'] >= TARGET else 'no'} "
            f"| {r['projections_ms']:.1f} | {r['ceiling']:.2f} | {r['ours_ms'] - r['projections_ms']:.1f} "
            f"| {r['official_ms'] / TARGET - r['projections_ms']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for peer in PEERS.values():
        p.add_argument(peer.option, type=Path, default=None, help=f"checkout of {peer.source} ({peer.file})")
    p.add_argument("--sizes", default="3136,16384", help="comma-separated N, each a square s*s")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the results as JSON to this file (atomically) and the table beside it (.md); a folder "
        "gets official_peers.json and official_peers.md",
    )
    args = p.parse_args()
    out = resolve_out(p, args.out)
    sizes = [int(n) for n in args.sizes.split(",")]
    for n in sizes:
        if n <= 0 or math.isqrt(n) ** 2 != n:
            p.error(f"--sizes: {n} is not a square s*s (the official modules take the grid side as sqrt(N))")
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)

    rows, sources = [], {}
    for name, peer in PEERS.items():
        repo = getattr(args, peer.option[2:].replace("-", "_"))
        if repo is None:
            print(f"skipping {peer.label}: no {peer.option} (a checkout of {peer.source})", file=sys.stderr)
            continue
        try:
            cls = load_official(peer, repo)
        except PeerUnavailable as e:
            print(f"skipping {peer.label}: {e}", file=sys.stderr)
            continue
        sources[name] = {"repo": str(repo), "source": peer.source, "file": peer.file, "commit": repo_commit(repo)}
        for n in sizes:
            side = math.isqrt(n)
            ours, official = build_pair(peer, cls, side)
            row = {"peer": peer.label, "layer": name, "N": n, **check(peer, ours, official, side)}
            if max(row["output_rel_rms"], row["grad_rel_rms"]) >= TOLERANCE:
                row["status"] = f"failed the check (rel-RMS ≥ {TOLERANCE:g}), not timed"
            else:
                row.update(status="ok", **time_pair(peer, ours, official, side, args.repeats))
            print(f"{peer.label} N={n}: {row['status']}", file=sys.stderr)
            rows.append(row)

    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": describe_machine("cpu"),
        "threads": args.threads,
        "repeats": args.repeats,
        "dim": DIM,
        "heads": HEADS,
        "tolerance": TOLERANCE,
        "target_ratio": TARGET,
        "official": sources,
    }
    if not rows:
        print("no peer ran: pass at least one of " + ", ".join(peer.option for peer in PEERS.values()), file=sys.stderr)
    print(markdown(meta, rows))
    if out is not None:
        write_json_atomic(out, {"meta": meta, "results": rows})
        write_text_atomic(out.with_suffix(".md"), markdown(meta, rows) + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
