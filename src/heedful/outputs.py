"""Files a command writes where the user says (``predict --output``, ``report --out``,
``translate --attention``, ``align --out``, ``--html``): checked before any work, and written whole.

- ``check_output`` refuses, in one line, a path that is a folder, one of the command's inputs
  (writing would empty it before it is read), or one of the files that make a run what it is
  (its config, model, checkpoints, history, marker; anything inside an export folder): such an
  output would leave the run unloadable.
- ``written_whole`` writes to a temporary file beside the target and renames it into place when
  the command succeeds, so a command that fails or is interrupted leaves an earlier file as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from heedful.errors import UserError

# What a run directory cannot lose (docs/RUN_DIRECTORY.md); an export folder is whole.
RUN_OWN = ("config.yaml", "history.json", "model", "checkpoints", ".heedful", "tb")
EXPORT_RECORD = "export.json"  # what every export (`heedful export`) writes at its top: format, source run, files


def check_output(path: Path, option: str, *, inputs: Iterable[Path] = (), runs: Iterable[Path] = ()) -> Path:
    """``path`` if a command may write its ``option`` there, else a one-line ``UserError``."""
    path = Path(path)
    if str(path) in ("", "."):
        raise UserError(f"{option}: give a file name")
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise UserError(f"{option} {path}: is also an input of this command; write elsewhere")
    target = _resolved(path)
    for run in runs:
        if run is None:
            continue
        root = _resolved(Path(run))
        if root not in target.parents:
            continue
        inside = target.relative_to(root).parts
        if (root / EXPORT_RECORD).is_file() or inside[0] in RUN_OWN or "/".join(inside) in _written_by_heedful(root):
            raise UserError(f"{option} {path}: would overwrite {run}'s own files; write elsewhere")
    return path


def _written_by_heedful(run: Path) -> set[str]:
    """The files a run's manifest lists as heedful's (``.heedful/run.json``: plots/history.png,
    eval-test.json, …); none where it is missing or unreadable (a run from before the manifest)."""
    try:
        written = json.loads((run / ".heedful" / "run.json").read_text(encoding="utf-8")).get("written", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {entry for entry in written if isinstance(entry, str) and not entry.endswith("/")}


def check_output_folder(path: Path | None, option: str) -> Path | None:
    """A folder a command writes files into (``--out-dir``): refused in one line if it is a file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{option} {path}: is a file; give a folder")
    return path


@contextlib.contextmanager
def written_whole(path: Path, option: str, newline: str | None = None, *, binary: bool = False) -> Iterator[IO[Any]]:
    """A text handle (UTF-8; with ``binary``, a bytes one) whose content becomes ``path`` only when
    the block ends without an error; the folder is made if missing. An OS error (no room, no
    permission) is one line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline=newline)  # noqa: SIM115
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    try:
        with handle:
            yield handle
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc}); nothing written") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_whole(path: Path, option: str, text: str) -> Path:
    """``text`` written to ``path`` as ``written_whole`` writes (a page: the report, --html)."""
    with written_whole(path, option) as handle:
        handle.write(text)
    return Path(path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))
