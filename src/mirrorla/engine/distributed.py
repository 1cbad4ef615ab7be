"""DistributedDataParallel plumbing for runs under ``torchrun`` (gloo on CPU, nccl on CUDA).

Without the ``WORLD_SIZE`` environment variable that torchrun sets, every function here is the
single-process identity, so the same engine code runs with or without torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistEnv",
    "resolve_device",
    "setup_distributed",
    "cleanup_distributed",
    "all_reduce_sum",
    "all_gather_floats",
]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str | torch.device) -> torch.device:
    """The device a ``--device`` names, checked: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``. A ``ValueError`` in one line for a name torch does not know or a device this
    machine lacks. Every command with ``--device`` goes through here."""
    if isinstance(requested, torch.device):
        device = requested
    elif requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ValueError(f"--device {requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r} requested but this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {str(device)!r}: mirrorla runs on auto, cpu, cuda or cuda:N")
    return device


def _pick_device(requested: str, local_rank: int) -> torch.device:
    device = resolve_device(requested)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a list of numbers over ranks (float64, so counts and sums stay exact)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_floats(value: float, env: DistEnv) -> list[float]:
    """Every rank's ``value``, in rank order."""
    if not env.distributed:
        return [value]
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    out = [torch.zeros_like(t) for _ in range(env.world_size)]
    dist.all_gather(out, t)
    return [float(o.item()) for o in out]
