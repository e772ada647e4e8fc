"""The task registry: one small file per task, each a :class:`Task` registered by name."""

from __future__ import annotations

from cache import MidprobeError
from probe.tasks.base import DenseTask, Task, ZeroShotTask

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise MidprobeError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def _load() -> None:
    # each module registers its task on import
    from probe.tasks import correspondence, depth, normals, segmentation, similarity  # noqa: F401


_load()

__all__ = ["TASKS", "Task", "DenseTask", "ZeroShotTask", "get_task", "register_task"]
