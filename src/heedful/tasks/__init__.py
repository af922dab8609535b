"""Tasks: one module per kind of prediction, each registered by name."""

from heedful.tasks import classify, imagegen, mlm, speech, translate  # noqa: F401 - registers the built-in tasks
from heedful.tasks.base import TASKS, DataBundle, Explanation, Prediction, Task, get_task, register_task

__all__ = ["TASKS", "DataBundle", "Explanation", "Prediction", "Task", "get_task", "register_task"]
