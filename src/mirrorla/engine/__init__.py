"""Training engine: config, model factory, loop, checkpoints, DDP helpers."""

from mirrorla.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mirrorla.engine.config import TrainConfig
from mirrorla.engine.model import (
    count_macs,
    count_params,
    create_classifier,
    measure_throughput,
    measure_throughput_rounds,
)
from mirrorla.engine.trainer import TrainingDivergedError, evaluate, train, warmup_cosine

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainingDivergedError",
    "count_macs",
    "count_params",
    "create_classifier",
    "evaluate",
    "load_checkpoint",
    "measure_throughput",
    "measure_throughput_rounds",
    "save_checkpoint",
    "train",
    "warmup_cosine",
]
