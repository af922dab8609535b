"""Which tasks exist: a name → module table, imported on first use.

``get_task("translate")`` imports ``heedful.tasks.translate`` the first time it is asked for,
and that module's ``@register_task`` puts the class in ``TASKS``. Nothing else is imported:
the dates task never loads soundfile or scikit-learn. A task from outside the package (a
plugin, a test) joins with ``add_task("toy", "tests.toy_task")``.

Task modules import their optional extras (soundfile, scikit-learn, …) inside the functions
that use them, so every task module imports on a bare install: the CLI lists every task's
verbs and options that way. A task names what it needs in ``Task.requires``, and
``get_task`` — the door through which a config or a run directory reaches a task — refuses,
in one line naming the extra, a task whose modules are missing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heedful.errors import ConfigError
from heedful.extras import MissingExtra, install_hint

if TYPE_CHECKING:
    from heedful.config import RunConfig
    from heedful.tasks.base import Task

MODULES: dict[str, str] = {
    "translate": "heedful.tasks.translate",
    "classify": "heedful.tasks.classify",
    "mlm": "heedful.tasks.mlm",
    "speech": "heedful.tasks.speech",
    "imagegen": "heedful.tasks.imagegen",
}

TASKS: dict[str, type[Task]] = {}  # the classes imported so far


def add_task(name: str, module: str) -> None:
    """Make ``name`` a task, defined (with ``@register_task``) in the module at import path ``module``."""
    MODULES[name] = module


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(set(MODULES) | set(TASKS))


def load_task_class(name: str) -> type[Task]:
    """The class of task ``name``, importing its module on first use (its extras are not checked)."""
    if name not in TASKS:
        if name not in MODULES:
            raise ConfigError(f"unknown task {name!r}; available: {', '.join(task_names())}")
        importlib.import_module(MODULES[name])
        if name not in TASKS:
            raise ConfigError(f"task module {MODULES[name]} registers no task {name!r} (@register_task)")
    return TASKS[name]


def get_task(name: str) -> type[Task]:
    """The class of task ``name``, ready to use: a ``MissingExtra`` error if a package it needs is absent."""
    cls = load_task_class(name)
    for module in cls.requires:
        if not installed(module):
            raise MissingExtra(f"the {name} task needs {module}: {install_hint(module)}")
    return cls


def all_task_classes() -> list[type[Task]]:
    """Every known task's class (for the CLI's verbs and options); task modules import without extras."""
    return [load_task_class(name) for name in task_names()]


def installed(module: str) -> bool:
    """Whether ``module`` imports (it is imported: the task is about to use it anyway)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        return False
    return True


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or a run directory's config.yaml), apply ``key=value`` overrides, validate
    it as its task's config class (``heedful.runs.load_config``; here, below the runs and the
    optimizations, so that both can read a config). A run directory's config runs in that
    directory, wherever it was made (runs move and copy)."""
    from heedful.config import read_yaml

    if not isinstance(path, str | Path):
        raise ConfigError(f"load_config: path={path!r}: a YAML config file or a run directory (str or Path)")
    path = Path(path)
    run_dir = path if path.is_dir() else None
    if run_dir is not None:
        path = path / "config.yaml"
    data = read_yaml(path)
    if run_dir is not None:
        data["run_dir"] = str(run_dir)
    return config_from_data(data, path, overrides)


def config_from_data(data: dict[str, Any], path: Path, overrides: list[str] | None = None) -> RunConfig:
    """``load_config`` of a config already read from ``path`` (``data``, which the overrides
    change in place): for a caller that looked into the YAML first, so it is read once."""
    from heedful.config import apply_overrides, validate

    data = apply_overrides(data, overrides)
    if "task" not in data:
        raise ConfigError(f"{path}: missing config key 'task'")
    try:
        task_class = get_task(str(data["task"]))
    except ConfigError as exc:  # an unknown task: say which file names it
        raise ConfigError(f"{path}: config key 'task': {exc}") from None
    return validate(task_class.config_class, data, source=str(path))
