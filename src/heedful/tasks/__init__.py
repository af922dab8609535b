"""Tasks: one module per kind of prediction, registered by name in ``tasks/registry.py`` and
imported on first use (``get_task``). Importing this package imports no task."""

from heedful.tasks.registry import TASKS, add_task, get_task, register_task

__all__ = ["TASKS", "add_task", "get_task", "register_task"]
