"""Cases of ``mirrorla bench ops``: attention layers, attention cores, SDPA and the projections.

Dimension letters: B batch, N tokens, C channels, H heads, D head dim.

Kinds of case (each timed forward and forward+backward at every token count N):

- ``layer``: a registry attention layer (B, N, C) → (B, N, C), projections included; a key position
  table (FLatten, PolaFormer) is built for the case's grid (square N), so it is not resized per call.
- ``core``: the attention part of a linear layer alone, feature map + linear attention, on q, k, v
  laid out as the layer's qkv projection produces them (views of one (B, N, 3, H, D) tensor).
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` on the same q, k, v (softmax core).
- ``projections``: the qkv Linear(C, 3C) and output Linear(C, C) alone: the floor every
  attention layer of this width pays.

A layer or core case with ``"compiled": True`` (method ``"NAME (compiled)"``) runs through
``torch.compile`` (inductor: C++ on CPU, Triton on CUDA); its first warm-up call compiles, and the
worker records that call's time apart (``first_fwd_s``, ``first_fwdbwd_s``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.models.flops import count_run_macs, unfused_attention

__all__ = [
    "OpsCase",
    "plan_ops_cases",
    "build_ops_case",
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "SDPA",
    "PROJECTIONS",
    "SkipCase",
    "COMPILED",
    "sdpa_backend",
]

DEFAULT_SIZES = (196, 784, 3136, 4096, 16384, 65536)  # 14², 28², 56², 64², 128², 256²
QUICK_SIZES = (196, 1024)
SDPA = "sdpa"
PROJECTIONS = "projections"
#: Suffix of the method name of a case timed through ``torch.compile`` (inductor, default options).
COMPILED = " (compiled)"


@dataclass
class OpsCase:
    """What the worker needs to run one case; ``fwd``/``fwdbwd`` return nothing."""

    fwd: Callable[[], None]
    fwdbwd: Callable[[], None]
    macs: int | None
    note: str = ""
    #: Compulsory memory traffic of one forward: inputs and parameters read once, outputs written once
    #: (bytes). Effective bandwidth = bytes / forward time: a floor on what the case moves, so its share
    #: of the bandwidth peak says how far a memory-bound case is from the roofline.
    bytes: int | None = None


def plan_ops_cases(
    methods: list[str], sizes: list[int], core: bool = True, compiled: list[str] = ()
) -> list[list[dict]]:
    """Groups of case descriptions, one group per worker process, sizes ascending in each group.

    A group holds one method's cases (its layer and, for linear layers, its core) so a crash at a
    large N loses only that method's remaining sizes. ``compiled``: methods also timed through
    ``torch.compile``, as the method ``"NAME (compiled)"`` in groups of their own.
    """
    sizes = sorted(set(sizes))
    groups = [[{"kind": "projections", "method": PROJECTIONS, "N": n} for n in sizes]]
    groups.append([{"kind": "sdpa", "method": SDPA, "N": n} for n in sizes])
    for name, is_compiled in [(m, False) for m in methods] + [(m, True) for m in compiled]:
        label = name + COMPILED if is_compiled else name
        extra = {"compiled": True} if is_compiled else {}
        group = []
        for n in sizes:
            group.append({"kind": "layer", "method": label, "N": n, **extra})
            if core:
                group.append({"kind": "core", "method": label, "N": n, **extra})
        groups.append(group)
    return groups


def _grid(n: int) -> tuple[int, int] | None:
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def _qkv_views(B: int, N: int, H: int, D: int, device, dtype, requires_grad: bool):
    """q, k, v (B, H, N, D) as views of one (B, N, 3, H, D) tensor, the layout of a fused qkv Linear."""
    base = torch.randn(B, N, 3 * H * D, device=device, dtype=dtype, requires_grad=requires_grad)
    q, k, v = base.view(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    return base, q, k, v


def build_ops_case(case: dict, s: dict) -> OpsCase:
    """Build the tensors and closures of one case. ``s``: settings (batch, dim, heads, device, dtype)."""
    from mirrorla.layers.linear import LinearAttention
    from mirrorla.registry import create_attention, get_attention_entry, with_build_grid

    kind, name, N = case["kind"], case["method"].removesuffix(COMPILED), int(case["N"])
    B, C, H = int(s["batch"]), int(s["dim"]), int(s["heads"])
    D = C // H
    device, dtype = torch.device(s["device"]), getattr(torch, s["dtype"])
    hw = _grid(N)

    if kind == "projections":
        qkv = nn.Linear(C, 3 * C).to(device, dtype)
        proj = nn.Linear(C, C).to(device, dtype)
        x = torch.randn(B, N, C, device=device, dtype=dtype)
        o = torch.randn(B, N, C, device=device, dtype=dtype)

        def fwd():
            with torch.no_grad():
                qkv(x)
                proj(o)

        xg, og = x.clone().requires_grad_(True), o.clone().requires_grad_(True)
        g3, g1 = torch.randn(B, N, 3 * C, device=device, dtype=dtype), torch.randn_like(o)

        def fwdbwd():
            torch.autograd.backward((qkv(xg), proj(og)), (g3, g1))
            _clear_grads(qkv, proj, xg, og)

        macs = B * N * (3 * C * C + C * C)
        size = torch.finfo(dtype).bits // 8
        return OpsCase(fwd, fwdbwd, macs, bytes=size * (B * N * (2 * C + 4 * C) + 4 * C * C + 4 * C))

    if kind == "sdpa":
        _, q, k, v = _qkv_views(B, N, H, D, device, dtype, False)
        base_g, qg, kg, vg = _qkv_views(B, N, H, D, device, dtype, True)
        grad = torch.randn(B, H, N, D, device=device, dtype=dtype)

        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v)

        def fwdbwd():
            F.scaled_dot_product_attention(qg, kg, vg).backward(grad)
            base_g.grad = None

        macs = 2 * B * H * N * N * D  # QKᵀ and AV; the fused kernel is invisible to counters
        note = f"backend: {sdpa_backend(q, k, v)}"
        return OpsCase(fwd, fwdbwd, macs, note=note, bytes=4 * q.numel() * q.element_size())

    # A grid-sized key table (FLatten, PolaFormer) is built for the grid the case runs at, as a model
    # trained at that resolution (and the official code) has it; not resized from 14×14 on every call.
    options = with_build_grid(get_attention_entry(name), hw, {}) if hw else {}
    layer = create_attention(name, C, num_heads=H, **options).to(device, dtype)
    compiled = bool(case.get("compiled"))
    if kind == "core":
        if not (isinstance(layer, LinearAttention) and hasattr(layer, "attend")):
            raise SkipCase(f"{type(layer).__name__} is not a LinearAttention composition; no separate core")
        attend = torch.compile(layer.attend) if compiled else layer.attend
        _, q, k, v = _qkv_views(B, N, H, D, device, dtype, False)
        base_g, qg, kg, vg = _qkv_views(B, N, H, D, device, dtype, True)
        grad = torch.randn(B, H, N, D, device=device, dtype=dtype)

        def fwd():
            with torch.no_grad():
                attend(q, k, v)

        def fwdbwd():
            attend(qg, kg, vg).backward(grad)
            base_g.grad = None
            _clear_grads(layer)

        def fake_core():
            _, fq, fk, fv = _qkv_views(B, N, H, D, device, dtype, False)
            layer.attend(fq, fk, fv)

        return OpsCase(fwd, fwdbwd, _try_count(fake_core), bytes=4 * q.numel() * q.element_size())

    if kind != "layer":
        raise ValueError(f"unknown ops case kind {kind!r}")
    x = torch.randn(B, N, C, device=device, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(B, N, C, device=device, dtype=dtype)
    run = torch.compile(layer) if compiled else layer

    def fwd():
        with torch.no_grad():
            run(x, hw=hw)

    def fwdbwd():
        run(xg, hw=hw).backward(grad)
        xg.grad = None
        _clear_grads(layer)

    def fake_layer():
        with unfused_attention(layer):
            layer(torch.empty(B, N, C, device=device, dtype=dtype), hw=hw)

    params = sum(p.numel() * p.element_size() for p in layer.parameters())
    return OpsCase(fwd, fwdbwd, _try_count(fake_layer), bytes=2 * x.numel() * x.element_size() + params)


#: The kernels behind ``scaled_dot_product_attention``, by the ATen op that dispatch calls.
_SDPA_KERNELS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "memory-efficient",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_fused_attention_overrideable": "fused (backend extension)",
}


def sdpa_backend(q: Tensor, k: Tensor, v: Tensor) -> str:
    """The kernel ``F.scaled_dot_product_attention(q, k, v)`` dispatches to for these inputs: the ATen ops a
    forward calls, seen by a dispatch mode (what dispatch chose, not what a rule predicts). One query and
    key suffice: the choice depends on device, dtype, head dim and masks, not on N."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        F.scaled_dot_product_attention(q[..., :1, :], k[..., :1, :], v[..., :1, :])
    fused = next((label for op, label in _SDPA_KERNELS.items() if op in seen), None)
    return fused or "math (unfused: " + ", ".join(dict.fromkeys(seen)) + ")"


class SkipCase(Exception):
    """A case that does not apply (reported as skipped with the message)."""


def _try_count(run) -> int | None:
    try:
        return count_run_macs(run, fake=True)[0]
    except Exception:  # a layer with data-dependent control flow cannot run on fake tensors
        return None


def _clear_grads(*objs) -> None:
    for obj in objs:
        if isinstance(obj, nn.Module):
            for p in obj.parameters():
                p.grad = None
        else:
            obj.grad = None
