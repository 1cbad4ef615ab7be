"""Our PolaFormer, FLatten, L²ViT, MLLA, RALA, MALA and Agent-attention layers against the official modules.

Dimension letters: B batch, N tokens (an s×s grid), C channels, H heads.

Parity (``--parity-grids``, default 8×8 and 6×10): for each peer and grid, build our layer and the
official module with the same configuration, give our layer random parameters, copy them into the
official module by an explicit name map (1×1 convs take our Linear weights reshaped), and compare
outputs and gradients (input and every mapped parameter) by relative RMS error: fp32 ≤ the peer's
tolerance (1e-5 for MLLA, RALA, MALA, Agent; 1e-4 for the earlier peers), fp64 ≤ 1e-10. A grid or dtype
the official module cannot run (a square grid inferred from N; MLLA's float32 RoPE) is listed with the
reason. Official parts outside the compared module are neutralised, never rewritten: MLLA's block runs
with ``norm1`` an identity and its CPEs and MLP zeroed, so block(x) − x is its token mixer; RAVLT/MAViT
take (B, C, H, W) and the RoPE tables of their own ``RoPE`` class through a reshaping wrapper.

Speed (``--sizes``, default 3,136 and 16,384): the same check in fp32 (gate 1e-4: reduction order), then
forward+backward (``y.backward(g)``, gradients reset every time) timed interleaved: after one warm-up
each, every repeat runs both modules and the projections alone (the qkv and output Linear layers both
sides pay), in rotating order, so load on a shared machine hits all alike. The report gives the medians,
official_ms / ours_ms (target ≥ 1.3) and the ceiling official_ms / projections_ms: the speed-up a free
attention part would give, so a ceiling below 1.3 says the target needs faster GEMMs, not a faster
attention. Beside it: what our layer spends beyond the projections, and the budget for that part that
1.3× allows (official_ms / 1.3 − projections_ms). fp32, CPU, B = 1, C = 384, H = 6.

No official code is copied here; each official file is imported from a checkout you pass:

    git clone https://github.com/ZacharyMeng/PolaFormer              # models/pola_swin.py
    git clone https://github.com/LeapLabTHU/FLatten-Transformer      # models/flatten_swin.py
    git clone https://github.com/ChuanyangZheng/L2ViT                # classification/models/l2vit.py
    git clone https://github.com/LeapLabTHU/MLLA                     # models/mlla.py
    git clone https://github.com/qhfan/RALA                          # classfication/RALA.py
    git clone https://github.com/qhfan/MALA                          # classfication_release/model.py
    git clone https://github.com/LeapLabTHU/Agent-Attention          # agent_transformer/models/agent_deit.py
    pip install einops        # imported by the PolaFormer, FLatten, RAVLT and MAViT files; timm is needed too
    # (RAVLT/MAViT also import fvcore for their __main__ FLOP count: an empty stand-in is used if it is missing;
    # agent_deit.py's sibling deit.py, which no longer imports under timm 1.x, is replaced by an empty stand-in:
    # AgentAttention never uses it)

    python scripts/bench_official_peers.py --pola-repo PolaFormer --flatten-repo FLatten-Transformer \\
        --l2vit-repo L2ViT --threads 2 --out bench_official_peers.json
    python scripts/bench_official_peers.py --mlla-repo MLLA --rala-repo RALA --mala-repo MALA \\
        --agent-repo Agent-Attention --threads 1 --out official_new_peers.json
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
import types
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
AGENTS = 49  # agent tokens, the official DeiT setting
TOLERANCE = 1e-4  # relative RMS in fp32 (PolaFormer, FLatten, L²ViT); the two sides differ in the order of reductions
TOLERANCE_FP64 = 1e-10  # relative RMS in fp64 (the parity grids)
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
    official: Callable[[type, tuple[int, int]], nn.Module]  # (official class, grid (h, w)) → module
    ours: Callable[[tuple[int, int]], nn.Module]  # grid (h, w) → our layer
    call: Callable[[nn.Module, Tensor, tuple[int, int]], Tensor]  # (official module, x, (h, w)) → y
    param_map: dict[str, str]  # official parameter name → our parameter name (shapes may differ: 1×1 convs)
    tolerance: float = TOLERANCE  # relative RMS in fp32
    non_square: bool = False  # the official module runs on a non-square grid
    fp64: str | None = None  # None: also checked in fp64; else why the official module cannot run in fp64
    prefix: int = 0  # prefix (cls) tokens the official module expects before the grid tokens
    package: bool = False  # the official file uses relative imports: load it as a member of its folder
    #: Sibling modules of a package file replaced by empty stand-ins: (module, names it must define). Only
    #: for imports the compared module never runs.
    stubs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    neutralised: tuple[str, ...] = ()  # official parameters without a counterpart, zeroed (block parts)


class ChannelsFirst(nn.Module):
    """Glue for the RAVLT/MAViT attentions, which take (B, C, H, W) and the RoPE tables (sin, cos) of their
    stage: tokens (B, N, C) → image → ``attn(image, *rope((h, w)))`` → tokens. Both modules are the official
    classes; this wrapper only reshapes (our code, no official code)."""

    def __init__(self, attn: nn.Module, rope: nn.Module) -> None:
        super().__init__()
        self.attn, self.rope = attn, rope

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, C = x.shape
        img = x.transpose(1, 2).reshape(B, C, *hw)
        return self.attn(img, *self.rope(hw)).flatten(2).transpose(1, 2)


def ravlt_style(cls: type, hw: tuple[int, int]) -> nn.Module:
    """The official attention class with the official RoPE class of the same file (float32 table, as built
    by the official stage; ``.double()`` converts it like the official module's buffers)."""
    rope_cls = sys.modules[cls.__module__].RoPE
    return ChannelsFirst(cls(DIM, HEADS), rope_cls(DIM, HEADS))


def mlla_block(cls: type, hw: tuple[int, int]) -> nn.Module:
    """The official ``MLLABlock`` reduced to its token mixer: ``norm1`` is an identity and the parts outside
    the mixer (the two CPEs, the MLP's last layer) are zeroed after loading, so block(x) − x is the mixer."""
    block = cls(DIM, hw, HEADS, qkv_bias=True)
    block.norm1 = nn.Identity()
    return block


#: The official MLLA block's parameters outside the mixer, zeroed: the CPEs then add 0 and the MLP adds 0.
MLLA_NEUTRALISED = tuple(
    f"{part}.{kind}" for part in ("cpe1", "cpe2", "norm2", "mlp.fc1", "mlp.fc2") for kind in ("weight", "bias")
)

RAVLT_MAP = {
    "attn.qkvo.weight": "qkv.weight",  # (4C, C, 1, 1) ↔ (4C, C): q, k, v, o blocks, head-major inside each
    "attn.qkvo.bias": "qkv.bias",
    "attn.lepe.weight": "dwc.conv.weight",  # (C, 1, 5, 5), per channel
    "attn.lepe.bias": "dwc.conv.bias",
    "attn.proj.weight": "proj.weight",  # (C, C, 1, 1) ↔ (C, C)
    "attn.proj.bias": "proj.bias",
}

PEERS = {
    "pola": Peer(
        "PolaFormer",
        "--pola-repo",
        "github.com/ZacharyMeng/PolaFormer",
        "models/pola_swin.py",
        "PolaLinearAttention",
        lambda cls, hw: cls(DIM, hw, HEADS, qkv_bias=True, kernel_size=KERNEL, alpha=ALPHA),
        lambda hw: create_attention("pola", DIM, num_heads=HEADS, key_pos_grid=hw, dwc_kernel=KERNEL, alpha=ALPHA),
        lambda m, x, hw: m(x, *hw),  # the official forward ignores H, W and takes the square root of N
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
        lambda cls, hw: cls(DIM, hw, HEADS, qkv_bias=True, focusing_factor=FOCUSING_FACTOR, kernel_size=KERNEL),
        lambda hw: create_attention(
            "flatten", DIM, num_heads=HEADS, key_pos_grid=hw, dwc_kernel=KERNEL, focusing_factor=FOCUSING_FACTOR
        ),
        lambda m, x, hw: m(x),  # square grid from N, as above
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
        lambda cls, hw: cls(DIM, num_heads=HEADS, qkv_bias=True),
        lambda hw: create_attention("l2vit_lga", DIM, num_heads=HEADS, min_denominator=MIN_DENOMINATOR),
        lambda m, x, hw: m(x),
        {
            "qkv.weight": "qkv.weight",
            "qkv.bias": "qkv.bias",
            "proj.weight": "proj.weight",
            "proj.bias": "proj.bias",
            "temperature": "temperature",  # (H, 1, 1)
        },
    ),
    "mlla": Peer(
        "MLLA",
        "--mlla-repo",
        "github.com/LeapLabTHU/MLLA",
        "models/mlla.py",
        "MLLABlock",
        mlla_block,
        lambda hw: create_attention("mlla", DIM, num_heads=HEADS),
        lambda m, x, hw: m(x) - x,  # the block with its non-mixer parts neutralised, minus the residual
        {
            "in_proj.weight": "in_proj.weight",
            "in_proj.bias": "in_proj.bias",
            "act_proj.weight": "act_proj.weight",
            "act_proj.bias": "act_proj.bias",
            "dwc.weight": "in_conv.conv.weight",  # the input branch's 3×3 depthwise conv
            "dwc.bias": "in_conv.conv.bias",
            "attn.qk.weight": "qkv.weight",  # (2C, C)
            "attn.qk.bias": "qkv.bias",
            "attn.lepe.weight": "dwc.conv.weight",
            "attn.lepe.bias": "dwc.conv.bias",
            "out_proj.weight": "proj.weight",
            "out_proj.bias": "proj.bias",
        },
        tolerance=1e-5,
        # The official attention takes h = w = int(sqrt(N)) and its RoPE table is fixed at the block's grid.
        non_square=False,
        fp64="the official RoPE.forward casts its input to float32, so the fp64 block raises a dtype error",
        neutralised=MLLA_NEUTRALISED,
    ),
    "rala": Peer(
        "RALA (RAVLT)",
        "--rala-repo",
        "github.com/qhfan/RALA",
        "classfication/RALA.py",
        "GateLinearAttentionNoSilu",
        ravlt_style,
        lambda hw: create_attention("rala", DIM, num_heads=HEADS),
        lambda m, x, hw: m(x, hw),
        RAVLT_MAP,
        tolerance=1e-5,
        non_square=True,
    ),
    "mala": Peer(
        "MALA (MAViT)",
        "--mala-repo",
        "github.com/qhfan/MALA",
        "classfication_release/model.py",
        "AddLinearAttention",
        ravlt_style,
        lambda hw: create_attention("mala", DIM, num_heads=HEADS),
        lambda m, x, hw: m(x, hw),
        RAVLT_MAP,
        tolerance=1e-5,
        non_square=True,
    ),
    "agent": Peer(
        "Agent attention",
        "--agent-repo",
        "github.com/LeapLabTHU/Agent-Attention",
        "agent_transformer/models/agent_deit.py",
        "AgentAttention",
        lambda cls, hw: cls(DIM, num_heads=HEADS, qkv_bias=True, agent_num=AGENTS, window=hw[0]),
        lambda hw: create_attention("agent", DIM, num_heads=HEADS, agent_num=AGENTS, bias_grid=hw, num_prefix_tokens=1),
        lambda m, x, hw: m(x),  # one cls token first; the official grid is int(sqrt(N)) squared
        {
            name: name
            for name in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")
            + tuple(f"{t}_bias" for t in ("an", "na", "ah", "aw", "ha", "wa", "ac", "ca"))
        }
        | {"dwc.weight": "dwc.conv.weight", "dwc.bias": "dwc.conv.bias"},
        tolerance=1e-5,
        non_square=False,
        prefix=1,
        package=True,
        # ``from .deit import Block``: the plain ViT block of the non-agent layers (none in DeiT-T/S), never
        # run by AgentAttention; deit.py itself no longer imports under timm 1.x (its default_cfgs carry hf_hub).
        stubs=(("deit", ("Block",)),),
    ),
}


class PeerUnavailable(Exception):
    """The official file is missing or imports a package that is not installed."""


def load_official(peer: Peer, repo: Path) -> type:
    """The official class, imported from ``repo/peer.file`` alone (no package import, no sys.path change)."""
    path = repo / peer.file
    if not path.is_file():
        raise PeerUnavailable(f"{path} not found; {peer.option} takes the root of a checkout of {peer.source}")
    name = f"official_{path.stem}"
    if peer.package:  # relative imports: the file as a member of a namespace package over its folder
        package = f"official_{path.parent.name}_{abs(hash(str(path.parent))) % 10**6}"
        if package not in sys.modules:
            pkg = types.ModuleType(package)
            pkg.__path__ = [str(path.parent)]
            sys.modules[package] = pkg
        for sibling, names in peer.stubs:
            stub = types.ModuleType(f"{package}.{sibling}")
            for attr in names:
                setattr(stub, attr, None)
            sys.modules[stub.__name__] = stub
        name = f"{package}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # timm's @register_model (L²ViT) looks its module up there
    _stub_unused_imports()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # timm's deprecated ``timm.models.layers`` path
            spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        del sys.modules[spec.name]
        missing = e.name.split(".")[0]
        raise PeerUnavailable(f"{path} imports {missing!r}, which is not installed: pip install {missing}") from None
    return getattr(module, peer.cls_name)


def _stub_unused_imports() -> None:
    """RAVLT/MAViT import fvcore's FLOP counter at the top of their model files and use it only in their
    ``__main__`` block: when fvcore is not installed, an empty stand-in takes its place (nothing the
    attention modules run comes from it)."""
    if "fvcore" not in sys.modules and importlib.util.find_spec("fvcore") is None:
        for name in ("fvcore", "fvcore.nn"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["fvcore.nn"].FlopCountAnalysis = sys.modules["fvcore.nn"].flop_count_table = None
        sys.modules["fvcore"].nn = sys.modules["fvcore.nn"]


def repo_commit(repo: Path) -> str | None:
    if not (repo / ".git").exists():  # an exported tree (git archive): not the commit of an enclosing repo
        return None
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def rel_rms(a: Tensor, ref: Tensor) -> float:
    a, ref = a.flatten(), ref.flatten()  # a 1×1 conv's (C', C, 1, 1) gradient against a Linear's (C', C)
    return ((a - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


@torch.no_grad()
def randomise(layer: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in layer.named_parameters():
        p.add_(torch.randn(p.shape, generator=gen) * NOISE.get(name, 0.02))


def build_pair(
    peer: Peer, cls: type, hw: tuple[int, int], dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, nn.Module]:
    """Our layer with random parameters and the official module holding a copy of them, both in ``dtype``."""
    torch.manual_seed(0)
    ours = peer.ours(hw)
    randomise(ours, seed=hw[0] * 1000 + hw[1])
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print their configuration
        official = peer.official(cls, hw)
    ours_state, off_state = ours.state_dict(), official.state_dict()
    unmapped = set(ours_state) - set(peer.param_map.values())
    if unmapped:
        raise ValueError(f"{peer.label}: our parameters {sorted(unmapped)} have no official counterpart in param_map")
    state = {o: ours_state[m].clone().reshape(off_state[o].shape) for o, m in peer.param_map.items()}
    state |= {o: torch.zeros_like(off_state[o]) for o in peer.neutralised}
    official.load_state_dict(state, strict=False)
    missing = {k for k in off_state if k not in state and k in dict(official.named_parameters())}
    if missing:
        raise ValueError(f"{peer.label}: official parameters {sorted(missing)} are neither mapped nor neutralised")
    return ours.to(dtype), official.to(dtype)


def fwd_bwd(run: Callable[[Tensor], Tensor], module: nn.Module, x: Tensor, grad: Tensor) -> Tensor:
    module.zero_grad(set_to_none=True)
    x.grad = None
    y = run(x)
    y.backward(grad)
    return y.detach()


def check(peer: Peer, ours: nn.Module, official: nn.Module, hw: tuple[int, int]) -> dict:
    """Relative RMS errors of the output and of every gradient (input, mapped parameters), official = reference."""
    dtype = next(ours.parameters()).dtype
    gen = torch.Generator().manual_seed(1)
    N = peer.prefix + hw[0] * hw[1]
    # Token norms spread log-uniformly over [0.01, 1] so that L²ViT's clamp (denominator ≥ 100) binds for
    # part of the tokens at N ≲ 3136 (measured: 96 % of them at N = 196, 26 % at 3136, none at 16384).
    token_scale = 0.01 ** torch.rand(1, N, 1, generator=gen)
    x = (torch.randn(1, N, DIM, generator=gen) * token_scale).to(dtype)
    grad = torch.randn(1, N, DIM, generator=gen).to(dtype)
    x_ours, x_off = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ours = fwd_bwd(lambda t: ours(t, hw=hw), ours, x_ours, grad)
    y_off = fwd_bwd(lambda t: peer.call(official, t, hw), official, x_off, grad)
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


def time_pair(peer: Peer, ours: nn.Module, official: nn.Module, hw: tuple[int, int], repeats: int) -> dict:
    N = peer.prefix + hw[0] * hw[1]
    x = torch.randn(1, N, DIM).requires_grad_(True)
    grad = torch.randn(1, N, DIM)
    floor = Projections(ours)
    runs = {
        "official": lambda: fwd_bwd(lambda t: peer.call(official, t, hw), official, x, grad),
        "ours": lambda: fwd_bwd(lambda t: ours(t, hw=hw), ours, x, grad),
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
        cls = " + cls" if r.get("prefix") else ""
        head = f"| {r['peer']} | {r['N']:,} ({side}×{side}{cls}) |"
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


def parity_markdown(rows: list[dict]) -> str:
    """The parity table: every peer at the parity grids, fp32 and fp64, output and worst gradient."""
    lines = [
        "### Parity with the official modules (relative RMS error, official = reference)",
        "",
        f"Bounds: fp32 the peer's tolerance (1e-5 for MLLA, RALA, MALA, Agent; {TOLERANCE:g} for the earlier "
        f"peers), fp64 {TOLERANCE_FP64:g}.",
        "",
        "| peer | grid | dtype | rel-RMS out | rel-RMS grad (worst) | status |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        if r["status"].startswith("not run"):
            lines.append(f"| {r['peer']} | {r['grid']} | {r['dtype']} | — | — | {r['status']} |")
            continue
        lines.append(
            f"| {r['peer']} | {r['grid']} | {r['dtype']} | {r['output_rel_rms']:.1e} | "
            f"{r['grad_rel_rms']:.1e} ({r['worst_grad']}) | {r['status']} |"
        )
    return "\n".join(lines)


def parity_rows(name: str, peer: Peer, cls: type, grids: list[tuple[int, int]]) -> list[dict]:
    """fp32 and fp64 checks at each grid (no timing); a grid or dtype the official module cannot run is named."""
    rows = []
    for hw in grids:
        for dtype, label in ((torch.float32, "fp32"), (torch.float64, "fp64")):
            row = {"peer": peer.label, "layer": name, "grid": f"{hw[0]}×{hw[1]}", "dtype": label}
            if hw[0] != hw[1] and not peer.non_square:
                rows.append(row | {"status": "not run: the official module infers a square grid from N"})
                continue
            if dtype == torch.float64 and peer.fp64 is not None:
                rows.append(row | {"status": f"not run: {peer.fp64}"})
                continue
            ours, official = build_pair(peer, cls, hw, dtype)
            row |= check(peer, ours, official, hw)
            bound = peer.tolerance if dtype == torch.float32 else TOLERANCE_FP64
            worst = max(row["output_rel_rms"], row["grad_rel_rms"])
            row["status"] = f"ok (≤ {bound:g})" if worst <= bound else f"FAILED (> {bound:g})"
            print(f"{peer.label} {row['grid']} {label}: {row['status']}", file=sys.stderr)
            rows.append(row)
    return rows


def parse_grids(p: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
    grids = []
    for item in filter(None, text.split(",")):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            p.error(f"--parity-grids: {item!r} is not HxW (e.g. 8x8,6x10)")
        if h <= 0 or w <= 0:
            p.error(f"--parity-grids: {item!r} needs positive sides")
        grids.append((h, w))
    return grids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for peer in PEERS.values():
        p.add_argument(peer.option, type=Path, default=None, help=f"checkout of {peer.source} ({peer.file})")
    p.add_argument("--sizes", default="3136,16384", help="comma-separated N, each a square s*s")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--parity-grids",
        default="8x8,6x10",
        help="grids HxW for the fp32 and fp64 parity checks (no timing); '' skips them",
    )
    p.add_argument("--no-timing", action="store_true", help="run the parity checks only")
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
    grids = parse_grids(p, args.parity_grids)

    rows, parity, sources = [], [], {}
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
        parity += parity_rows(name, peer, cls, grids)
        for n in [] if args.no_timing else sizes:
            hw = (math.isqrt(n), math.isqrt(n))
            ours, official = build_pair(peer, cls, hw)
            row = {"peer": peer.label, "layer": name, "N": n, "prefix": peer.prefix, **check(peer, ours, official, hw)}
            # The timing gate is the reduction-order bound (1e-4): at N = 16,384 fp32 sums of 16k terms into a
            # 7×7 bias table differ by ~1e-5 between two correct orders (the fp32/fp64 bounds are the parity table's).
            if max(row["output_rel_rms"], row["grad_rel_rms"]) >= TOLERANCE:
                row["status"] = f"failed the check (rel-RMS ≥ {TOLERANCE:g}), not timed"
            else:
                row.update(status="ok", **time_pair(peer, ours, official, hw, args.repeats))
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
        "tolerance": {name: peer.tolerance for name, peer in PEERS.items()},
        "tolerance_fp64": TOLERANCE_FP64,
        "target_ratio": TARGET,
        "official": sources,
    }
    if not rows:
        print("no peer ran: pass at least one of " + ", ".join(peer.option for peer in PEERS.values()), file=sys.stderr)
    report = markdown(meta, rows) + ("\n\n" + parity_markdown(parity) if parity else "")
    print(report)
    if out is not None:
        write_json_atomic(out, {"meta": meta, "results": rows, "parity": parity})
        write_text_atomic(out.with_suffix(".md"), report + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
