"""Tasks: data + model head + loss + metric, each plugged into the one training loop of :mod:`mirrorla.engine`:
``classification``, ``super_resolution`` and ``long_range``."""

from mirrorla.tasks.base import Task, create_task, list_tasks, register_task
from mirrorla.tasks.classification import ClassificationTask
from mirrorla.tasks.long_range import LongRangeTask
from mirrorla.tasks.super_resolution import SuperResolutionTask

__all__ = [
    "Task",
    "ClassificationTask",
    "LongRangeTask",
    "SuperResolutionTask",
    "create_task",
    "list_tasks",
    "register_task",
]
