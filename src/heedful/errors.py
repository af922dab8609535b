"""Errors a user can act on.

Every exception here carries a one-line message that names the file, line, key or value at fault.
The CLI prints that line to stderr and exits with code 2; any other exception is a bug in heedful
and keeps its traceback.
"""

import os


def article(word: str) -> str:
    """The article a word takes in a message: "a translate run", "an imagegen run"."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def a_run(task: str) -> str:
    """ "a 'translate' run", "an 'imagegen' run": a task's run, named in a message."""
    return f"{article(task)} {task!r} run"


def not_found(path: object, also: str = "") -> str:
    """ "train.en: file not found", saying where a relative path was looked for: a run's config
    keeps data paths as typed, so one evaluated from another folder misses them."""
    text = str(path)
    where = "" if text.startswith(("/", "~")) else f"; a relative path, read from {os.getcwd()}"
    return f"{text}: file not found{f' ({also}' if also else ''}{where}{')' if also else ''}"


class UserError(Exception):
    """Something the user can fix: a bad config, a missing file, a malformed line."""


class ConfigError(UserError):
    """An unknown key, a value of the wrong type, or an inconsistent combination of settings."""


class DataError(UserError):
    """Input data that cannot be read: names the file and line (or record) and the problem."""


class CheckpointError(UserError):
    """A run directory or checkpoint that is missing, incomplete or from an incompatible version."""
