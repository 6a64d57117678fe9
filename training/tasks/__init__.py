"""One :class:`~training.tasks.base.Task` per model type, registered by the config's ``task`` name: the DR grader
(:mod:`training.tasks.grader`), the lesion detector (:mod:`training.tasks.detector`) and the image-quality model
(:mod:`training.tasks.quality`)."""

from training.tasks.base import HeldOut, Measured, OutputSpec, Task, Validation
from training.tasks.registry import TASKS, get_task, register_task
from training.tasks import detector, grader, quality  # noqa: F401  (each registers its task)

__all__ = ["TASKS", "HeldOut", "Measured", "OutputSpec", "Task", "Validation", "get_task", "register_task"]
