"""Peak memory of a callable, on CUDA and on CPU.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
allocated before the call.

CPU (Linux): the kernel's resident-set high-water mark. Writing ``5`` to ``/proc/self/clear_refs``
resets ``VmHWM`` to the current RSS; after the call, ``VmHWM − VmRSS(before)`` is the most memory
the call held at once, transient buffers included. For this to see every allocation, freed
memory must go back to the OS instead of into malloc's free lists, where a later allocation would
reuse it without raising the RSS: :func:`exact_cpu_accounting` sets glibc's mmap threshold to
64 KiB (every tensor larger than that is its own mapping, unmapped on free) and trimming to 0.
That makes allocation slower, so a worker switches to it only after all its timings are taken
(it cannot be switched back). ``tests/test_bench_memory.py`` checks the method against known
allocations. Pages that are allocated but never written are not resident and not counted.
"""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Callable

import torch

__all__ = [
    "measure_peak_memory",
    "cpu_peak_supported",
    "worker_env",
    "exact_cpu_accounting",
    "CPU_METHOD",
    "available_memory_bytes",
]

CPU_METHOD = (
    "peak RSS: VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before the call, "
    "after mallopt(M_MMAP_THRESHOLD=64 KiB, M_TRIM_THRESHOLD=0) so freed buffers leave the RSS"
)
CUDA_METHOD = "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def exact_cpu_accounting() -> bool:
    """Make freed CPU buffers leave the RSS at once (glibc ``mallopt``); irreversible for the process.

    Returns False where glibc is not the allocator (then CPU peaks may be underestimated when a
    call reuses memory freed before it).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 65536) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 0) == 1
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):
        return False


def worker_env(threads: int | None = None) -> dict[str, str]:
    """Environment of a benchmark worker process: fixed OpenMP/MKL thread counts."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    return env


def cpu_peak_supported() -> bool:
    """True on Linux when ``/proc/self/clear_refs`` accepts a reset of the RSS high-water mark."""
    try:
        _reset_hwm()
        _status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_peak_memory(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Run ``fn()`` once and return the peak bytes it held above the level before the call.

    The return value of ``fn`` is dropped before the measurement ends only if the caller drops it:
    pass a closure that returns nothing. Returns ``None`` on a CPU without ``/proc`` support.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if not cpu_peak_supported():
        return None
    _malloc_trim()  # free heap chunks leave the RSS, so reusing them is counted
    _reset_hwm()
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    return max(0, (peak - before) * 1024)


def available_memory_bytes(device: torch.device | str) -> int | None:
    """Free memory a case may use: :func:`mirrorla.memory.available_memory_bytes` (CUDA free memory; on CPU
    the least of MemAvailable, the cgroup's room and the address-space limit)."""
    from mirrorla.memory import available_memory_bytes as available

    return available(device)
