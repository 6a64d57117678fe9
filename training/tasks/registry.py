"""The registry of tasks, keyed by the config's ``task`` name."""

from __future__ import annotations

from typing import TypeVar

from training.tasks.base import Task

T = TypeVar("T", bound=Task)

#: Every registered task by name.
TASKS: dict[str, Task] = {}


def register_task(task: T) -> T:
    """Add ``task`` under its name; ``ValueError`` when the name is taken."""
    if task.name in TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered ({type(TASKS[task.name]).__name__})")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
