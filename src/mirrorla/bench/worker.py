"""Worker process that runs benchmark cases, and the parent-side launcher.

The parent (:func:`run_cases`) starts ``python -m mirrorla.bench.worker`` with the environment of
:func:`mirrorla.bench.memory.worker_env`, writes a JSON job to its stdin and reads one line
``@@RESULT {json}`` per case from its stdout (so a progress bar can move while it runs). A job is
``{"task": "ops"|"models"|"sr"|"lra", "settings": {...}, "cases": [...], "gemm": bool}``.

Phase 1, per case: build it, warm up, time the forward, then the same for forward+backward
(``@@RESULT``). Phase 2, after every timing: switch malloc to exact accounting
(:func:`~mirrorla.bench.memory.exact_cpu_accounting`, which slows allocation) and measure the peak
memory of one forward and one forward+backward of each case (``@@MEMORY``). A case is skipped,
with a note, when extrapolating the earlier sizes of the same method (or, for the first size, its
MACs at a quarter of the GEMM peak) predicts that it would take longer than ``max_case_seconds``;
memory is not measured when the extrapolated peak exceeds 80% of the free memory; an
out-of-memory error is caught and reported.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from mirrorla.bench.machine import measure_gemm_peak, synchronize
from mirrorla.bench.memory import available_memory_bytes, exact_cpu_accounting, measure_peak_memory, worker_env
from mirrorla.bench.timing import time_callable

__all__ = ["run_cases", "main"]

_RESULT = "@@RESULT "
_GEMM = "@@GEMM "
_MEMORY = "@@MEMORY "


def _build(task: str, case: dict, settings: dict):
    if task == "ops":
        from mirrorla.bench.ops import build_ops_case

        return build_ops_case(case, settings)
    if task == "models":
        from mirrorla.bench.models import build_model_case

        return build_model_case(case, settings)
    if task == "sr":
        from mirrorla.bench.sr import build_sr_case

        return build_sr_case(case, settings)
    if task == "lra":
        from mirrorla.bench.lra import build_lra_case

        return build_lra_case(case, settings)
    raise ValueError(f"unknown task {task!r}")


def _extrapolate(points: list[tuple[int, float]], n: int, default_exponent: float) -> float | None:
    """Value at ``n`` from a log-log line through the last two points (one point: given exponent)."""
    points = [(x, y) for x, y in points if y and y > 0]
    if not points:
        return None
    if len(points) == 1:
        (x0, y0), exponent = points[0], default_exponent
    else:
        (x0, y0), (x1, y1) = points[-2], points[-1]
        exponent = min(2.5, max(0.5, math.log(y1 / y0) / math.log(x1 / x0))) if x1 != x0 else default_exponent
        x0, y0 = x1, y1
    return y0 * (n / x0) ** exponent


def _skip_reason(case: dict, history: list[dict], settings: dict, macs: int | None) -> str | None:
    n = case["N"]
    runs = settings["warmup"] + settings["min_repeats"] + 1  # + the memory run
    budget = settings["max_case_seconds"]
    predicted = _extrapolate([(h["N"], h["seconds_per_run"]) for h in history], n, 2.0)
    if predicted is None and macs and settings.get("gemm_gflops"):
        # No earlier size: assume a quarter of the GEMM peak, forward+backward = 3 forwards.
        predicted = 4 * 2 * macs / (0.25 * settings["gemm_gflops"] * 1e9)
    if predicted is not None and predicted * runs > budget:
        return f"skipped: predicted {predicted * runs:.0f} s > --max-case-seconds {budget:g}"
    return None


def _time_case(task: str, case: dict, settings: dict, history: list[dict]) -> dict:
    """Phase 1: build, warm up and time forward and forward+backward."""
    from mirrorla.bench.ops import SkipCase

    device = torch.device(settings["device"])
    rec = dict(case, status="ok", note="", fwd=None, fwdbwd=None, mem_fwd_bytes=None, mem_fwdbwd_bytes=None)
    try:
        built = _build(task, case, settings)
    except SkipCase as err:
        return dict(rec, status="skipped", note=str(err), macs=None)
    rec["macs"] = built.macs
    rec["bytes"] = getattr(built, "bytes", None)
    rec["note"] = getattr(built, "note", "") or ""
    reason = _skip_reason(case, history, settings, built.macs)
    if reason:
        return dict(rec, status="skipped", note=reason)
    budget = settings["max_case_seconds"] / 3
    per_run = 0.0
    for mode, fn in (("fwd", built.fwd), ("fwdbwd", built.fwdbwd)):
        if fn is None:
            continue
        t_warm = None
        for i in range(max(1, settings["warmup"])):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            t_warm = time.perf_counter() - t0
            if i == 0:
                rec[f"first_{mode}_s"] = t_warm  # compilation, for a compiled case
        rec[mode] = time_callable(
            fn,
            device,
            repeats=settings["repeats"],
            min_repeats=settings["min_repeats"],
            budget_s=budget,
            first_run_s=t_warm,
        )
        per_run += rec[mode]["median_ms"] / 1e3
    history.append({"N": case["N"], "seconds_per_run": per_run})
    return rec


def _measure_case(task: str, rec: dict, settings: dict, history: list[dict]) -> dict:
    """Phase 2: peak memory of one forward and one forward+backward of a timed case."""
    device = torch.device(settings["device"])
    predicted = _extrapolate([(h["N"], h["peak_bytes"]) for h in history], rec["N"], 2.0)
    free = available_memory_bytes(device)
    if predicted is not None and free is not None and predicted > 0.8 * free:
        return {"note": f"memory not measured: predicted {predicted / 2**30:.1f} GiB > 80% of free"}
    built = _build(task, rec, settings)
    out, peak = {}, 0
    for mode, fn in (("fwd", built.fwd), ("fwdbwd", built.fwdbwd)):
        if fn is not None:
            out[f"mem_{mode}_bytes"] = mem = measure_peak_memory(fn, device)
            peak = max(peak, mem or 0)
    history.append({"N": rec["N"], "peak_bytes": peak})
    return out


def _emit(tag: str, payload) -> None:
    print(tag + json.dumps(payload), flush=True)


def _worker(job: dict) -> None:
    settings = job["settings"]
    torch.set_num_threads(int(settings["threads"]))
    torch.manual_seed(int(settings.get("seed", 0)))
    device = torch.device(settings["device"])
    if job.get("gemm"):
        gemm = measure_gemm_peak(device, getattr(torch, settings["dtype"]), size=int(settings.get("gemm_size", 2048)))
        settings["gemm_gflops"] = gemm["gflops_best"]
        _emit(_GEMM, gemm)
    timed: list[dict] = []
    histories: dict[tuple[str, str], list[dict]] = {}
    for case in job["cases"]:
        history = histories.setdefault((case["kind"], case["method"]), [])
        try:
            rec = _time_case(job["task"], case, settings, history)
        except torch.OutOfMemoryError as err:
            rec = dict(case, status="skipped", note=f"skipped: out of memory ({str(err).splitlines()[0][:120]})")
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            rec = dict(case, status="error", note=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        timed.append(rec)
        _emit(_RESULT, rec)
    if not settings.get("memory", True):
        return
    if device.type == "cpu" and not exact_cpu_accounting():
        print("warning: glibc mallopt unavailable; CPU peaks may be underestimated", file=sys.stderr)
    histories = {}
    for i, rec in enumerate(timed):
        update: dict = {}
        if rec["status"] == "ok":
            history = histories.setdefault((rec["kind"], rec["method"]), [])
            try:
                update = _measure_case(job["task"], rec, settings, history)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                update = {"note": f"memory not measured: {type(err).__name__}: {str(err).splitlines()[0][:120]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        _emit(_MEMORY, {"index": i, **update})


def run_cases(
    task: str,
    groups: list[list[dict]],
    settings: dict,
    *,
    isolate: bool = True,
    progress: bool = True,
    gemm_peak: bool = True,
    label: str = "",
) -> tuple[list[dict], dict | None]:
    """Run case groups in worker processes; returns (results, GEMM peak measured by the first worker).

    ``isolate=True`` starts one worker per group (a crash loses only that group's later cases);
    ``False`` runs every case in one worker (faster start, used by ``--quick``). ``gemm_peak=False``: no
    GEMM measurement (None returned). ``label`` starts the progress bar's notes.
    """
    from tqdm import tqdm

    if not isolate:
        groups = [[c for g in groups for c in g]]
    total = sum(len(g) for g in groups) * (2 if settings.get("memory", True) else 1)
    results: list[dict] = []
    gemm = None
    bar = tqdm(total=total, unit="case", disable=not progress, dynamic_ncols=True)
    try:
        for i, group in enumerate(groups):
            job = {"task": task, "settings": dict(settings), "cases": group, "gemm": gemm_peak and i == 0}
            if gemm:
                job["settings"]["gemm_gflops"] = gemm["gflops_best"]
            done = []
            with tempfile.TemporaryFile(mode="w+") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mirrorla.bench.worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=worker_env(settings.get("threads")),
                    text=True,
                )
                proc.stdin.write(json.dumps(job))
                proc.stdin.close()
                for line in proc.stdout:
                    if line.startswith(_GEMM):
                        gemm = json.loads(line[len(_GEMM) :])
                    elif line.startswith(_RESULT):
                        rec = json.loads(line[len(_RESULT) :])
                        done.append(rec)
                        bar.set_postfix_str(f"{label}time {rec['kind']} {rec['method']} N={rec['N']} {rec['status']}")
                        bar.update(1)
                    elif line.startswith(_MEMORY):
                        upd = json.loads(line[len(_MEMORY) :])
                        rec = done[upd.pop("index")]
                        note = upd.pop("note", "")
                        rec.update(upd)
                        if note:
                            rec["note"] = "; ".join(x for x in (rec.get("note"), note) if x)
                        bar.set_postfix_str(f"{label}memory {rec['kind']} {rec['method']} N={rec['N']}")
                        bar.update(1)
                rc = proc.wait()
                err.seek(0)
                tail = [ln for ln in err.read().strip().splitlines() if ln.strip()][-1:]
            results.extend(done)
            if rc != 0:
                why = f"worker exited with code {rc}" + (" (killed: out of memory?)" if rc < 0 else "")
                if tail:
                    why += f"; last error line: {tail[0][:200]}"
                for rec in done:
                    measured = any(v is not None for k, v in rec.items() if k.startswith("mem_"))
                    if rec["status"] == "ok" and not measured:
                        rec["note"] = "; ".join(x for x in (rec.get("note"), "memory not measured: " + why) if x)
                for case in group[len(done) :]:
                    results.append(dict(case, status="error", note=why))
    finally:
        bar.close()
    return results, gemm


def main() -> None:
    _worker(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    main()
