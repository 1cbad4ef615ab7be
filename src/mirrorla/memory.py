"""Will it fit? The memory a forward pass needs, the memory this process may still use, and the
allocator's own out-of-memory errors, each turned into one line that says what to do.

The estimate (:func:`traced_peak_bytes`) runs the computation under ``FakeTensorMode``: tensors have
shapes but no storage, so a 9-megapixel forward costs a fraction of a second and no memory, and every
aten op dispatches exactly as on the real device (the fused CPU softmax kernel included, so its
O(N) memory is not mistaken for an N×N matrix). A dispatch mode above it adds the bytes of each new
output storage and subtracts them when the tensor is freed; the peak of that sum is what the
computation itself allocates. Kernel workspaces and the allocator's fragmentation are not seen:
on the SR network (sr_tiny with mirror, softmax, nala, pola; 128² to 800² LR pixels, whole and tiled;
``scripts/sr_tiling_check.py memory``) the measured peak RSS was 1.03–1.23× this trace from 256² up, and
the trace plus 2–17 MiB below; :func:`check_fits` adds 30 % and 64 MiB.

The limit (:func:`available_memory_bytes`) is the smallest of ``MemAvailable`` (``/proc/meminfo``),
the cgroup's ``memory.max − memory.current`` (v2; ``limit_in_bytes − usage_in_bytes`` for v1) and the
address-space limit ``RLIMIT_AS`` minus this process's ``VmSize``; CUDA: the device's free memory.
"""

from __future__ import annotations

import resource
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "InsufficientMemoryError",
    "available_memory_bytes",
    "check_fits",
    "format_bytes",
    "is_allocation_error",
    "traced_peak_bytes",
    "ESTIMATE_FACTOR",
    "ESTIMATE_FLOOR",
]

#: :func:`check_fits` compares ``ESTIMATE_FACTOR × estimate + ESTIMATE_FLOOR`` with the limit: kernel
#: workspaces and malloc fragmentation the trace cannot see (calibrated in tests/test_memory.py).
ESTIMATE_FACTOR = 1.3
ESTIMATE_FLOOR = 64 * 2**20


class InsufficientMemoryError(ValueError):
    """An input needs more memory than this process may use; the message says how much and what to do."""


def format_bytes(n: float) -> str:
    """``1152000000`` → ``'1.07 GiB'``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"


class _LiveBytes(TorchDispatchMode):
    """Bytes of live op outputs and their peak; views share their base's storage and count once."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata  # fake storages have no data pointer; the StorageImpl's address is unique
            if key in self._seen:
                continue
            nbytes = storage.nbytes()
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key, nbytes)
        return out


def traced_peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes ``fn()`` holds at once in tensors it creates (inputs it makes itself included), found
    without running it: under ``FakeTensorMode``, in inference mode. Parameters already there are not counted."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker = _LiveBytes()
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True), tracker:
        fn()
    return tracker.peak


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """What the cgroup of this process still lets it allocate, or None without a limit."""
    room = []
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2 ("max": no limit)
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        limit, usage = _read_int(Path(limit_file)), _read_int(Path(usage_file))
        if limit is not None and limit < 2**60:  # v1 writes a huge number for "no limit"
            room.append(max(0, limit - (usage or 0)))
    return min(room) if room else None


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _address_space_room() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = _status_bytes("VmSize")
    return max(0, soft - size) if size is not None else soft


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # not Linux: free physical pages
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory this process may still allocate on ``device`` (module docstring), or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    known = [v for v in (_meminfo_available(), _cgroup_room(), _address_space_room()) if v is not None]
    return min(known) if known else None


def check_fits(estimate: int, device: torch.device | str, what: str, fix: str) -> None:
    """:class:`InsufficientMemoryError` when ``what`` (estimated to hold ``estimate`` bytes at its peak)
    would not fit in the memory available on ``device``; ``fix``: what the user can do instead."""
    available = available_memory_bytes(device)
    needed = ESTIMATE_FACTOR * estimate + ESTIMATE_FLOOR
    if available is not None and needed > available:
        raise InsufficientMemoryError(
            f"{what} needs about {format_bytes(needed)} of memory, more than the {format_bytes(available)} available "
            f"on {torch.device(device)}; {fix}"
        )


def is_allocation_error(err: BaseException) -> bool:
    """Whether ``err`` is an allocator's out-of-memory error (torch CPU or CUDA, numpy, Python)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
