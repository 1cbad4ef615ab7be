"""What a task gives the generic training loop, and the registry of tasks.

A task is data + model head + loss + metric, made for one run by ``create_task(name, cfg)``.
:func:`mirrorla.engine.train` runs the same loop for every task (seeding, schedule, AMP, EMA, DDP,
checkpoints, resume) and asks the task for:

- ``build_datasets(cfg)`` → (train, eval, info): datasets whose items are (input, target);
- ``build_model(cfg, info)`` → the model, built by :func:`mirrorla.models.create_model`;
- ``build_loss(cfg, info)`` → (loss(output, target) → scalar, batch_transform or None): the
  transform maps a training batch (x, y) to (x, target) (e.g. Mixup);
- ``batch_sums(output, y)`` → {name: sum over the batch}: the loop divides by the number of samples
  (``train_<name>`` in the metrics; classification: ``top1``);
- ``eval_sums(output, y)`` → {name: sum over the batch} for the evaluation split (``eval_<name>``);
- ``metric``: the name of the evaluation metric that ranks checkpoints (``best_<metric>``, higher is better).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

__all__ = ["Task", "register_task", "create_task", "list_tasks"]


class Task(Protocol):
    name: str
    metric: str

    def build_datasets(self, cfg: Any) -> tuple[Any, Any, Any]: ...

    def build_model(self, cfg: Any, info: Any) -> nn.Module: ...

    def build_loss(self, cfg: Any, info: Any) -> tuple[Any, Any]: ...

    def batch_sums(self, output: Tensor, y: Tensor) -> dict[str, float]: ...

    def eval_sums(self, output: Tensor, y: Tensor) -> dict[str, float]: ...


_TASKS: dict[str, type] = {}


def register_task(cls: type) -> type:
    """Class decorator: register a task class under its ``name``; a duplicate name raises."""
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is already registered (by {_TASKS[cls.name].__name__})")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    _ensure_loaded()
    return sorted(_TASKS)


def create_task(name: str, cfg: Any = None) -> Task:
    """The task ``name`` for the run configuration ``cfg`` (a task may read settings its sums need, e.g.
    super-resolution's border); an unknown name raises listing the valid ones."""
    _ensure_loaded()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(sorted(_TASKS))}")
    return _TASKS[name](cfg)


def _ensure_loaded() -> None:
    import mirrorla.tasks  # noqa: F401  (each task module registers itself on import)
