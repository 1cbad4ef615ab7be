"""The efficiency targets measured interleaved: every case once per round, the order rotating.

Dimension letters: B batch, N tokens, C channels, H heads.

``mirrorla bench ops`` times each case in its own worker, one after the other; on a shared machine the load
drifts between cases, and a ratio of two cases measured minutes apart moves by ±20% or more. The targets are
ratios, so this runner builds only the cases they need (the cases of :mod:`mirrorla.bench.ops`: projections,
SDPA, the MirrorLA and ReLU layers and cores at ``n1``; projections and both layers at ``n2`` for the GEMM
share) in one process and times them in rounds: each round runs every (case, mode) once, starting one
place later than the round before, so drift hits all cases alike. The medians over rounds feed
:func:`mirrorla.bench.report.evaluate_targets`. Peak memory is not measured here (``bench ops`` does that).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mirrorla.bench.ops import COMPILED, PROJECTIONS, SDPA, build_ops_case
from mirrorla.bench.timing import summarize, time_callable

__all__ = ["plan_target_cases", "run_interleaved", "TARGET_METHODS"]

#: The two layers the targets compare.
TARGET_METHODS = ("mirror", "linear_relu")


def plan_target_cases(n1: int, n2: int, compiled: bool) -> list[dict]:
    """The cases and modes the five targets read (memory aside); ``compiled`` adds the compiled layers and cores."""
    cases = [
        {"kind": "projections", "method": PROJECTIONS, "N": n1, "modes": ("fwd",)},
        {"kind": "sdpa", "method": SDPA, "N": n1, "modes": ("fwd",)},
        {"kind": "projections", "method": PROJECTIONS, "N": n2, "modes": ("fwd",)},
    ]
    for suffix in ("", COMPILED) if compiled else ("",):
        extra = {"compiled": True} if suffix else {}
        for name in TARGET_METHODS:
            cases.append({"kind": "layer", "method": name + suffix, "N": n1, "modes": ("fwd", "fwdbwd"), **extra})
            cases.append({"kind": "core", "method": name + suffix, "N": n1, "modes": ("fwd",), **extra})
            cases.append({"kind": "layer", "method": name + suffix, "N": n2, "modes": ("fwd",), **extra})
    return cases


def run_interleaved(
    cases: list[dict],
    settings: dict,
    rounds: int,
    warmup: int = 1,
    say: Callable[[str], None] = print,
) -> list[dict]:
    """Build every case, warm each (case, mode) up ``warmup`` times (at least once: compilation, lazy
    init), then time ``rounds`` rounds; return ops-style records with median/min/max per mode."""
    device = torch.device(settings["device"])
    torch.manual_seed(int(settings.get("seed", 0)))
    built, records = [], []
    for case in cases:
        say(f"building {case['kind']} {case['method']} N={case['N']:,}")
        runner = build_ops_case(case, settings)
        rec = {k: v for k, v in case.items() if k != "modes"}
        rec.update(status="ok", note=runner.note, macs=runner.macs, bytes=runner.bytes)
        records.append(rec)
        for mode in case["modes"]:
            fn = runner.fwd if mode == "fwd" else runner.fwdbwd
            for i in range(max(1, warmup)):
                first = time_callable(fn, device, repeats=1)["median_ms"] / 1e3
                if i == 0 and case.get("compiled"):
                    rec[f"first_{mode}_s"] = first
            built.append((rec, mode, fn))
    say(f"timing {len(built)} (case, mode) pairs in {rounds} interleaved rounds")
    times: dict[int, list[float]] = {i: [] for i in range(len(built))}
    for r in range(rounds):
        order = list(range(len(built)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            times[i].append(time_callable(built[i][2], device, repeats=1)["median_ms"] / 1e3)
        say(f"round {r + 1}/{rounds} done")
    for i, (rec, mode, _) in enumerate(built):
        rec[mode] = dict(summarize(times[i]), clock="cuda events" if device.type == "cuda" else "wall")
    return records
