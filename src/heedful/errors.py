"""Errors a user can act on.

Every exception here carries a one-line message that names the file, line, key or value at fault.
The CLI prints that line to stderr and exits with code 2; any other exception is a bug in heedful
and keeps its traceback.
"""

import os
import sys


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


def lines_shown(numbers: list[int]) -> str:
    """``lines 2, 4`` (the first five, then how many in all), for a one-line message."""
    shown = ", ".join(map(str, numbers[:5])) + (f", … ({len(numbers)} in all)" if len(numbers) > 5 else "")
    return f"line{'s' * (len(numbers) != 1)} {shown}"


def torchrun_world() -> int:
    """How many processes torchrun started for this job (``WORLD_SIZE``); 1 for one on its own."""
    world = os.environ.get("WORLD_SIZE", "1")
    return int(world) if world.isdigit() and int(world) > 1 else 1


def torchrun_ranks() -> tuple[int, int]:
    """This process's (rank, local rank) among those torchrun started; (0, 0) for one on its own."""
    if torchrun_world() == 1:
        return 0, 0
    rank, local = os.environ.get("RANK", "0"), os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))
    return (int(rank) if rank.isdigit() else 0), (int(local) if local.isdigit() else 0)


def said_here(rank_specific: bool = False) -> bool:
    """Whether this process prints what it met (an error, a warning): the first process of each
    machine of a torchrun job (local rank 0) says what every process meets alike, each process
    what befell it alone (``rank_specific``); a process on its own says everything."""
    return torchrun_ranks()[1] == 0 or rank_specific


def warn(message: str, *, rank_specific: bool = False) -> None:
    """``heedful: warning: MESSAGE`` on stderr, once per machine of a torchrun job, as the CLI says
    an error: what every process meets alike (a changed setting, a skipped step the ranks agreed on)
    is said by the first process of each machine (local rank 0), so a second machine's own trouble
    is still said there. What befell this process only (``rank_specific``) it says itself; a rank
    other than 0 is named."""
    say("warning", message, rank_specific)


def note(message: str) -> None:
    """``heedful: note: MESSAGE`` on stderr: something worth knowing that needs no action (a changed
    schedule, inputs cut to fit), said by the same rule as ``warn``: once per machine of a torchrun job."""
    say("note", message, rank_specific=False)


def say(kind: str, message: str, rank_specific: bool = False) -> None:
    """``heedful: KIND: MESSAGE`` on stderr by the rule of :func:`said_here` (``kind``: error,
    warning, note), a rank other than 0 named."""
    if said_here(rank_specific):
        rank = torchrun_ranks()[0]
        print(f"heedful: {kind}: {f'rank {rank}: ' if rank else ''}{message}", file=sys.stderr, flush=True)


class UserError(Exception):
    """Something the user can fix: a bad config, a missing file, a malformed line."""


class ConfigError(UserError):
    """An unknown key, a value of the wrong type, or an inconsistent combination of settings."""


class DataError(UserError):
    """Input data that cannot be read: names the file and line (or record) and the problem."""


class CheckpointError(UserError):
    """A run directory or checkpoint that is missing, incomplete or from an incompatible version."""
