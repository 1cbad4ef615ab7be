"""Tasks: data + model head + loss + metric, each plugged into the one training loop of :mod:`mirrorla.engine`."""

from mirrorla.tasks.base import Task, create_task, list_tasks, register_task
from mirrorla.tasks.classification import ClassificationTask

__all__ = ["Task", "ClassificationTask", "create_task", "list_tasks", "register_task"]
