"""Cases of ``mirrorla bench sr``: whole-image super-resolution inference, one forward pass, no tiling.

Dimension letters: W×H the output image, s the scale, w×h = (W/s)×(H/s) the LR input, N = h·w the
tokens every attention layer of the network attends over (its attention is global, see
:mod:`mirrorla.models.sr`).

A case is (attention, output size): the network ``model`` (``sr_tiny``, ``sr_small``, ``sr_light``) with
that attention maps one random LR image (1, 3, h, w) to (1, 3, H, W) under ``torch.inference_mode()``.
The worker (:mod:`mirrorla.bench.worker`) times it and measures its peak memory, as for the other kinds.

**Stages** (:mod:`mirrorla.bench.staged`). The sizes run smallest first, one
:func:`~mirrorla.bench.worker.run_cases` call per size; before a stage, each attention's case is predicted
from its own smaller sizes (time per image; with no smaller size measured, the forward's MACs at a quarter of
the GEMM peak) and skipped, not run, when the prediction exceeds the budget per image (:class:`SRBudget`).
Once a size of an attention is skipped, fails, or runs over either budget, its larger sizes are skipped too;
a skipped case keeps what was predicted (``predicted_seconds``, ``predicted_memory_bytes``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mirrorla.bench.ops import OpsCase
from mirrorla.bench.report import seconds_text
from mirrorla.bench.staged import Budget, Limits, Prediction, StagedKind, count_macs
from mirrorla.bench.worker import run_cases
from mirrorla.models.sr import SR_SCALES, SR_SIZES
from mirrorla.registry import get_attention_entry

__all__ = [
    "SRBudget",
    "Prediction",
    "SR_MODELS",
    "SR_STAGES",
    "DEFAULT_ATTENTIONS",
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "size_label",
    "plan_sr_cases",
    "count_sr_macs",
    "build_sr_case",
    "predict_case",
    "run_sr_sweep",
    "largest_within_budget",
    "evaluate_sr_targets",
]

SR_MODELS = tuple(f"sr_{size}" for size in SR_SIZES)
#: The attentions of the SR comparison.
DEFAULT_ATTENTIONS = ("softmax", "linear_relu", "flatten", "pola", "nala", "l2vit_lga", "mirror", "mirror_dwc")
#: Output sides (square images); ×4 from a 512² LR input is 262,144 tokens at 2048².
DEFAULT_SIZES = (256, 512, 1024, 1536, 2048)
QUICK_SIZES = (64, 128)
#: The issue's targets: MirrorLA ≥ 10× faster than softmax at 1024² output, and ≥ 16× its largest image.
TARGET_SIZE = (1024, 1024)
TARGET_SPEEDUP = 10.0
TARGET_PIXELS_RATIO = 16.0


@dataclass(frozen=True)
class SRBudget(Budget):
    """What one single-pass forward of one image may cost: wall-clock seconds and peak bytes (both > 0)."""

    max_seconds: float
    max_memory_bytes: int


def size_label(w: int, h: int) -> str:
    return f"{w}×{h}"


def plan_sr_cases(model: str, attentions: Sequence[str], sizes: Sequence[tuple[int, int]], scale: int) -> list[dict]:
    """One case per (attention, output size W×H); sizes ascending by pixels, all attentions of a size together.

    Raises ValueError for an unknown model or attention, a scale the network lacks, or an output size
    that is not positive or not a multiple of ``scale``.
    """
    if model not in SR_MODELS:
        raise ValueError(f"unknown SR model {model!r}; valid models: {', '.join(SR_MODELS)}")
    if scale not in SR_SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(str, SR_SCALES))}, got {scale!r}")
    if not attentions:
        raise ValueError("no attentions given")
    for name in attentions:
        get_attention_entry(name)  # raises, listing the valid names
    if not sizes:
        raise ValueError("no output sizes given")
    for w, h in sizes:
        if w <= 0 or h <= 0:
            raise ValueError(f"output size {size_label(w, h)} must be positive")
        if w % scale or h % scale:
            side = w if w % scale else h
            lower, upper = side - side % scale, side - side % scale + scale
            hint = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            raise ValueError(
                f"output size {size_label(w, h)} is not a multiple of scale {scale} (the LR input is the "
                f"output / {scale}); use e.g. {hint}"
            )
    ordered = sorted(set(sizes), key=lambda s: (s[0] * s[1], s[0]))
    return [
        {
            "kind": "sr",
            "method": name,
            "N": (w // scale) * (h // scale),
            "model": model,
            "scale": scale,
            "size": f"{w}x{h}",
            "out_w": w,
            "out_h": h,
            "lr_w": w // scale,
            "lr_h": h // scale,
            "pixels": w * h,
        }
        for w, h in ordered
        for name in attentions
    ]


def count_sr_macs(cases: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """The cases with ``macs`` (one forward, counted on fake tensors; None where counting fails), and
    ``{attention: error}`` for the attentions whose network cannot be built at all (e.g. a head dim
    the attention rejects). Networks are built once per attention, on the CPU, with random weights."""
    from mirrorla.models import create_model

    @functools.cache
    def create(name: str, model: str, scale: int) -> torch.nn.Module:
        return create_model(model, attention=name, scale=scale).eval()

    def forward(model: torch.nn.Module, case: dict) -> None:
        model(torch.empty(1, 3, case["lr_h"], case["lr_w"]))

    return count_macs(cases, lambda case: create(case["method"], case["model"], case["scale"]), forward)


def build_sr_case(case: dict, s: dict) -> OpsCase:
    """One inference forward of the SR network on a random LR image; runs in the worker.

    MACs are left out (None): the parent counted them, and a count here would let the worker's own
    first-size rule, made for forward+backward cases, judge a case the parent has already judged.
    """
    from mirrorla.models import create_model

    device, dtype = torch.device(s["device"]), getattr(torch, s["dtype"])
    model = create_model(case["model"], attention=case["method"], scale=int(case["scale"])).to(device, dtype).eval()
    lr = torch.rand(1, 3, int(case["lr_h"]), int(case["lr_w"]), device=device, dtype=dtype)

    def fwd():
        with torch.inference_mode():
            model(lr)

    return OpsCase(fwd, None, None)


def _heading(case: dict) -> str:
    lr = size_label(case["lr_w"], case["lr_h"])
    return f"{size_label(case['out_w'], case['out_h'])} (LR {lr}, N = {case['N']:,} tokens)"


#: An SR case in the staged sweep: one forward per image, stages by output size.
SR_STAGES = StagedKind(
    unit="image",
    time_slot="fwd",
    memory_slot="mem_fwd_bytes",
    slots=("fwd", "fwdbwd", "mem_fwd_bytes", "mem_fwdbwd_bytes"),
    stage="size",
    label=lambda case: size_label(case["out_w"], case["out_h"]),
    heading=_heading,
    smaller="smaller size",
    built="network",
    prior_forwards=1,
    seconds_option="--max-seconds",
)


def predict_case(case: dict, measured: list[dict], gemm_gflops: float | None) -> Prediction:
    """Time per image and peak memory of ``case`` from ``measured``: the ok records of the same
    attention at smaller sizes, ascending (:meth:`~mirrorla.bench.staged.StagedKind.predict`)."""
    return SR_STAGES.predict(case, measured, gemm_gflops)


def run_sr_sweep(
    cases: list[dict],
    budget: SRBudget,
    settings: dict,
    *,
    gemm_gflops: float | None = None,
    build_errors: dict[str, str] | None = None,
    isolate: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run the cases of :func:`plan_sr_cases` size by size and return one record per case, in order.

    ``settings``: the worker settings of the other bench kinds (device, dtype, threads, repeats, warmup,
    seed). ``isolate``: one worker per case (True) or one per size. A record is the worker's, plus
    ``predicted_seconds``, ``predicted_memory_bytes`` and ``within_budget`` (True/False for a case that
    ran, None for one that did not); skipped and failed cases say why in ``note``.
    """
    # time_callable gets max_case_seconds / 3 = max_seconds for its timed repeats: a case whose warm-up
    # took t runs int(max_seconds / t) repeats (at most --repeats, at least 1). The worker's own skip rule
    # sees no history and no MACs here (the parent judged the case), and its GEMM peak is not used.
    worker_settings = dict(settings, max_case_seconds=3 * budget.max_seconds, min_repeats=1, gemm_size=64)

    def run_stage(to_run: list[dict]) -> list[dict]:
        return run_cases("sr", [[c] for c in to_run], worker_settings, isolate=isolate, progress=progress)[0]

    limits = Limits(budget.max_seconds, budget.max_memory_bytes)
    return SR_STAGES.sweep(cases, run_stage, limits, gemm_gflops=gemm_gflops, build_errors=build_errors, log=log)


def largest_within_budget(results: list[dict], reference: str = "softmax") -> dict[str, dict]:
    """Per attention: the largest output (by pixels) that ran within both budgets, and its ratio to ``reference``'s.

    ``reached_largest_tried`` is True when that is the largest size tried for the attention: then the
    attention's true largest single-pass image is at least this (a lower bound, not a measurement).
    """
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["method"] for r in results):
        recs = [r for r in results if r["method"] == name]
        fits = [r for r in recs if r["status"] == "ok" and r.get("within_budget")]
        best = max(fits, key=lambda r: r["pixels"], default=None)
        tried = max(r["pixels"] for r in recs)
        out[name] = {
            "size": best["size"] if best else None,
            "out_w": best["out_w"] if best else None,
            "out_h": best["out_h"] if best else None,
            "pixels": best["pixels"] if best else None,
            "tokens": best["N"] if best else None,
            "latency_ms": best["fwd"]["median_ms"] if best else None,
            "peak_bytes": best.get("mem_fwd_bytes") if best else None,
            "reached_largest_tried": bool(best) and best["pixels"] == tried,
        }
    ref = out.get(reference, {}).get("pixels")
    for entry in out.values():
        entry["ratio_to_reference"] = entry["pixels"] / ref if ref and entry["pixels"] else None
    return out


def _find(results: list[dict], method: str, w: int, h: int) -> dict | None:
    return next((r for r in results if r["method"] == method and r["out_w"] == w and r["out_h"] == h), None)


def _why_not(rec: dict | None, method: str, label: str) -> str:
    if rec is None:
        return f"{method} not run at {label}"
    if rec.get("predicted_seconds") is not None:
        return f"{method} {rec['status']} at {label}, predicted {seconds_text(rec['predicted_seconds'])} per image"
    return f"{method} {rec['status']} at {label} ({rec.get('note', '')})"


def evaluate_sr_targets(
    results: list[dict],
    largest: dict[str, dict],
    method: str = "mirror",
    reference: str = "softmax",
    at: tuple[int, int] = TARGET_SIZE,
) -> list[dict]:
    """The issue's two SR targets, as :func:`mirrorla.bench.report.targets_table` rows.

    1. ``reference`` / ``method`` median forward latency at output ``at`` ≥ 10, both measured in this run.
    2. ``method``'s largest single-pass image within budget ≥ 16 × ``reference``'s, in pixels. ``met`` is
       None (undecided) when the ratio is below 16 only because ``method`` ran every size tried.
    """
    out = []

    def add(name, value, threshold, met, detail):
        out.append({"target": name, "value": value, "op": ">=", "threshold": threshold, "met": met, "detail": detail})

    names = {r["method"] for r in results}
    missing = [m for m in (method, reference) if m not in names]
    label = size_label(*at)
    speed_name = f"{reference} / {method} forward latency at {label} output"
    pixels_name = f"largest single-pass output within budget, {method} / {reference} pixels"
    if missing:
        note = f"not measured: {' and '.join(missing)} not in --attentions"
        add(speed_name, None, TARGET_SPEEDUP, None, note)
        add(pixels_name, None, TARGET_PIXELS_RATIO, None, note)
        return out

    m, r = _find(results, method, *at), _find(results, reference, *at)
    if m is None and r is None:
        add(speed_name, None, TARGET_SPEEDUP, None, f"not measured: {label} not in --sizes")
    elif m and r and m["status"] == "ok" and r["status"] == "ok":
        ratio = r["fwd"]["median_ms"] / m["fwd"]["median_ms"]
        detail = (
            f"median latency ratio, both measured in this run ({seconds_text(r['fwd']['median_ms'] / 1e3)} vs "
            f"{seconds_text(m['fwd']['median_ms'] / 1e3)})"
        )
        add(speed_name, ratio, TARGET_SPEEDUP, ratio >= TARGET_SPEEDUP, detail)
    else:
        why = [_why_not(x, name, label) for x, name in ((r, reference), (m, method)) if not x or x["status"] != "ok"]
        detail = "not measured: " + "; ".join(why)
        if m and m["status"] == "ok" and r and r.get("predicted_seconds"):
            detail += f" (predicted ratio ≈ {r['predicted_seconds'] / (m['fwd']['median_ms'] / 1e3):.0f}×)"
        add(speed_name, None, TARGET_SPEEDUP, None, detail)

    lm, lr = largest[method], largest[reference]
    if lr["pixels"] is None:
        smallest = min((x for x in results if x["method"] == reference), key=lambda x: x["pixels"])
        detail = f"not measured: {reference} ran no size within budget (smallest tried {smallest['size']})"
        add(pixels_name, None, TARGET_PIXELS_RATIO, None, detail)
        return out
    if lm["pixels"] is None:
        add(pixels_name, 0.0, TARGET_PIXELS_RATIO, False, f"{method} ran no size within budget")
        return out
    ratio = lm["pixels"] / lr["pixels"]
    detail = f"{method} {lm['size']} ({lm['pixels']:,} px) vs {reference} {lr['size']} ({lr['pixels']:,} px)"
    met: bool | None = ratio >= TARGET_PIXELS_RATIO
    if lr["reached_largest_tried"]:
        met = None
        detail += f"; undecided: {reference} also ran every size tried, add larger --sizes"
    elif lm["reached_largest_tried"]:
        detail += f"; {method} ran the largest size tried, so the ratio is a lower bound"
        if not met:
            met = None
            detail += ": undecided, add larger --sizes"
    add(pixels_name, ratio, TARGET_PIXELS_RATIO, met, detail)
    return out
