"""Training engine: config, the one training loop, checkpoints, run folders, DDP helpers.

Names load on first use, so the command line can read :mod:`mirrorla.engine.config` (no torch)
without importing the trainer.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CheckpointError": "mirrorla.engine.checkpoint",
    "load_checkpoint": "mirrorla.engine.checkpoint",
    "save_checkpoint": "mirrorla.engine.checkpoint",
    "TrainConfig": "mirrorla.engine.config",
    "count_macs": "mirrorla.engine.model",
    "count_params": "mirrorla.engine.model",
    "create_classifier": "mirrorla.engine.model",
    "measure_throughput": "mirrorla.engine.model",
    "measure_throughput_rounds": "mirrorla.engine.model",
    "TrainingDivergedError": "mirrorla.engine.trainer",
    "evaluate": "mirrorla.engine.trainer",
    "train": "mirrorla.engine.trainer",
    "warmup_cosine": "mirrorla.engine.trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
