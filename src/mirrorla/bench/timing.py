"""Timing of a callable: wall clock with device synchronisation on CPU, CUDA events on CUDA."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from mirrorla.bench.machine import synchronize

__all__ = ["time_callable", "summarize"]


def summarize(seconds: list[float]) -> dict:
    """Median, min and max in milliseconds, and the number of repeats."""
    s = sorted(seconds)
    n = len(s)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {"median_ms": median * 1e3, "min_ms": s[0] * 1e3, "max_ms": s[-1] * 1e3, "repeats": n}


def time_callable(
    fn: Callable[[], object],
    device: torch.device,
    *,
    repeats: int = 5,
    min_repeats: int = 3,
    budget_s: float | None = None,
    first_run_s: float | None = None,
) -> dict:
    """Time ``fn`` ``repeats`` times (after the caller's warm-up) and :func:`summarize`.

    With ``budget_s`` and the duration of an earlier run ``first_run_s``, the number of repeats
    is cut so that the timed runs take about ``budget_s``, but never below ``min_repeats``.
    """
    if budget_s is not None and first_run_s and first_run_s > 0:
        repeats = max(min_repeats, min(repeats, int(budget_s / first_run_s)))
    times = []
    if device.type == "cuda":  # device time between two events: no host-side launch gaps counted twice
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return dict(summarize(times), clock="cuda events")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return dict(summarize(times), clock="wall")
