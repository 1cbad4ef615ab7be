"""The machine a benchmark ran on, and its measured matrix-multiply peak.

The GEMM peak is measured in the same run as the attention cases (not taken from a data sheet),
so "share of peak" compares two numbers taken under the same load, threads and clocks.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["code_version", "describe_machine", "measure_gemm_peak", "provenance", "resolve_device", "synchronize"]

#: The checkout this module was imported from (``src/mirrorla/bench`` → the repository root).
_CHECKOUT = Path(__file__).resolve().parents[3]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; checked by :func:`mirrorla.engine.distributed.resolve_device`."""
    from mirrorla.engine.distributed import resolve_device as checked

    return checked(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_CHECKOUT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The code this process runs: ``{"commit", "dirty", "changed_files"}`` of the git checkout mirrorla was
    imported from, or ``{"commit": None, "note": ...}`` for an installed copy without git.

    Cached for the process: the modules were imported when it started, so that is the code that produced its
    numbers even if the checkout changes while it runs. ``dirty``: a tracked file differs from the commit
    (``git status --porcelain --untracked-files=no``; run outputs and data are untracked and do not count).
    """
    commit = _git("rev-parse", "HEAD") if (_CHECKOUT / "src" / "mirrorla").is_dir() else None
    if commit is None:
        import mirrorla

        return {"commit": None, "note": f"not a git checkout (mirrorla {mirrorla.__version__} from {_CHECKOUT})"}
    status = _git("status", "--porcelain", "--untracked-files=no")
    changed = [line[3:] for line in (status or "").splitlines()]
    return {"commit": commit, "dirty": bool(changed) if status is not None else None, "changed_files": changed[:20]}


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    """What produced a number: the code (:func:`code_version`), the library versions, the SIMD level torch's CPU
    kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``: AVX2 and AVX-512 kernels sum in different
    orders, so the same commit trains different last bits on the two), the threads and the CUDA device when used.
    """
    import numpy

    device = torch.device(device) if device is not None else None
    cuda = None
    if device is not None and device.type == "cuda":
        cuda = {"name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    return {
        **code_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
        "cuda_device": cuda,
    }


def describe_machine(device: torch.device | str = "cpu") -> dict:
    """CPU model, core and thread counts, load, library versions and the accelerator, as a dict."""
    device = torch.device(device)
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "device_name": _cpu_model(),
        "provenance": provenance(device),
    }
    try:
        import mirrorla

        info["mirrorla"] = mirrorla.__version__
    except Exception:  # pragma: no cover - the package always imports inside the repo
        pass
    try:
        import timm

        info["timm"] = timm.__version__
    except Exception:
        info["timm"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def measure_gemm_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int = 2048,
    repeats: int = 5,
) -> dict:
    """Time ``size³`` matrix products and return the achieved GFLOP/s (2 FLOPs per MAC).

    Returns ``{"size", "dtype", "gflops_best", "gflops_median", "repeats"}``. The best repeat is
    the peak used for "share of peak": it is what this machine reached under the current load.
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: BLAS thread pool and workspace
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * size**3
    times.sort()
    return {
        "size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "gflops_best": flops / times[0] / 1e9,
        "gflops_median": flops / times[len(times) // 2] / 1e9,
        "repeats": repeats,
        **measure_bandwidth_peak(device),
    }


def measure_bandwidth_peak(device: torch.device | str = "cpu", mib: int = 256, repeats: int = 5) -> dict:
    """Time a ``mib``-MiB tensor copy (one read, one write) and return the achieved GB/s.

    Returns ``{"bandwidth_gbs_best", "bandwidth_gbs_median", "bandwidth_mib"}``: the peak that "share
    of the bandwidth peak" refers to, measured under the current load like the GEMM peak.
    """
    device = torch.device(device)
    src = torch.empty(mib * 2**18, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    moved = 2.0 * src.numel() * src.element_size()
    return {
        "bandwidth_gbs_best": moved / times[0] / 1e9,
        "bandwidth_gbs_median": moved / times[len(times) // 2] / 1e9,
        "bandwidth_mib": mib,
    }
