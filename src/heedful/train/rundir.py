"""The run directory's contract: heedful writes only into a folder it made (or found empty), and
deletes only what it wrote there.

    run = RunDirectory.claim(Path("runs/dates"), resume=False, overwrite=False)  # checks, locks
    run.begin(overwrite=False)           # the start succeeded: clear the old run if asked, record
    run.record("plots/history.png")      # before writing a file, so a kill never hides it
    run.release()                        # or run.abandon() when the start failed

Every run directory holds ``.heedful/``: ``run.json`` (the marker, and the list of what heedful
wrote: files, and folders it owns whole with a trailing ``/``) and ``lock``, locked with
``flock`` for as long as a training runs there (the kernel drops the lock when the process dies,
so a killed run never blocks the next). A folder that exists, is not empty and has no
``.heedful/`` is refused, whatever the flags. docs/RUN_DIRECTORY.md is the user's page.

``run.json`` has more than one writer: the training, and the commands that add their files
while it runs (``evaluate`` writing ``eval-test.json``, through ``record_written``). Each write
takes ``run.json.lock`` (not ``lock``, which the training holds throughout), reads the list
again, changes it and replaces the file whole, so no writer drops what another added.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

from heedful.errors import UserError
from heedful.train.checkpoint import checkpoint_holding, list_checkpoints

MARKER = ".heedful"
MANIFEST = "run.json"
LOCK = "lock"
# Taken only while run.json is read and rewritten; LOCK cannot serve: the training holds it for the
# whole run, and flock on a second descriptor of the same file would block on the trainer's own.
MANIFEST_LOCK = "run.json.lock"
# What a training writes; the folders are heedful's whole (nobody else writes into them).
STANDARD = ("config.yaml", "history.json", "checkpoints/", "model/", "plots/history.png")
# Names heedful writes while replacing a file or folder; a kill can leave them behind.
TRANSIENT = ("history.tmp", "config.yaml.tmp", ".model.tmp", ".model.old")
# Where --overwrite sets the earlier run aside (its files, and REPLACED_LIST: the list of them) until
# the new run writes its first checkpoint: a start that fails before then gives the old run back.
REPLACED = "replaced"
REPLACED_LIST = "replaced.json"
# A run made before the marker existed: only these names at its top level.
_LEGACY = re.compile(r"^(config\.yaml|history\.json|history\.tmp|checkpoints|model|tb|plots|wandb|\.model\.(tmp|old)"
                     r"|eval-.+\.json|hyps-.+\.txt|bench-.+\.json)$")  # fmt: skip
_LEFTOVER = re.compile(r"^\.(tmp|old)-step-(\d+)-\d+$")


class RunDirectoryError(UserError):
    """A run directory heedful must not or cannot write: names the folder and why."""


def _cannot_write(path: Path, exc: OSError) -> RunDirectoryError:
    reason = exc.strerror or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != path else ""
    return RunDirectoryError(f"{path}: cannot write the run directory: {reason}{where}")


def _is_empty(path: Path) -> bool:
    return next(path.iterdir(), None) is None


def _is_legacy_run(path: Path) -> bool:
    names = [child.name for child in path.iterdir() if child.name != MARKER]
    return (
        (path / "config.yaml").is_file()
        and (bool(list_checkpoints(path / "checkpoints")) or (path / "model" / "config.json").is_file())
        and all(_LEGACY.match(name) for name in names)
    )


def _holds_model(path: Path) -> bool:
    model = path / "model"
    return (model / "model.safetensors").is_file() or (model / "config.json").is_file()


def restore_model_hint(run_dir: Path, digest: str | None) -> str:
    """How to get back ``run_dir/model/model.safetensors`` whose bytes changed on disk (``digest``:
    the sum its config.json recorded). A kept checkpoint with the same bytes is copied back; else it
    is written again — by the optimization that made it, or by training again: ``--resume`` does not
    rewrite model/ (only an epoch that beats the recorded best does, and a finished run has none left).
    ``digest`` None: a file no checkpoint keeps (imagegen's feature classifier), written the same ways."""
    weights = run_dir / "model" / "model.safetensors"
    kept = checkpoint_holding(run_dir / "checkpoints", digest) if digest else None
    if kept is not None:
        source, target = shlex.quote(str(kept / weights.name)), shlex.quote(str(weights))
        return f"checkpoint {kept.name} holds the same weights: cp {source} {target}"
    if (run_dir / "optimize.json").is_file():
        return "restore it from a copy, or run the heedful optimize that wrote it again (optimize.json says how)"
    return f"restore it from a copy, or train the run again (heedful train {shlex.quote(str(run_dir))} --overwrite)"


def files_under(folder: Path) -> set[Path]:
    """Every file below ``folder`` (none when it does not exist)."""
    return {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


class RunDirectory:
    """A run directory this process holds the lock of."""

    def __init__(self, path: Path, lock_fd: int, created: list[Path], new_marker: bool):
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._created = created  # folders this claim made, deepest first
        self._new_marker = new_marker
        self.written: set[str] = set()

    # ------------------------------------------------------------------------------------ claim
    @classmethod
    def claim(cls, path: Path, *, resume: bool, overwrite: bool) -> RunDirectory:
        """Check that heedful may write ``path``, create it, lock it. Nothing is deleted here."""
        path = Path(path)
        if resume and overwrite:  # one continues the run, the other deletes it
            raise RunDirectoryError(f"{path}: --resume continues the run and --overwrite discards it; give one")
        if path.exists() and not path.is_dir():
            raise RunDirectoryError(f"{path}: is a file, not a folder; choose another --run-dir")
        exists = path.is_dir()
        try:
            empty = not exists or _is_empty(path)
            foreign = not empty and not (path / MARKER).is_dir() and not _is_legacy_run(path)
        except OSError as exc:  # a folder we may not even list
            raise _cannot_write(path, exc) from None
        if foreign:
            raise RunDirectoryError(
                f"{path}: is not empty and is not a heedful run directory; heedful writes only into a new "
                "or empty folder, or one it made — choose another --run-dir"
            )
        if resume and not exists:
            raise RunDirectoryError(f"{path}: --resume given, but there is no checkpoint to resume from")
        created = [p for p in (path, *path.parents) if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
            new_marker = empty and not (path / MARKER).is_dir()  # abandon() may then remove it all
            (path / MARKER).mkdir(exist_ok=True)
            fd = os.open(path / MARKER / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            _remove_empty(created)
            raise _cannot_write(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise _cannot_write(path, exc) from None
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise RunDirectoryError(
                f"{path}: another training is running in this run directory{pid}; wait for it or choose "
                "another --run-dir"
            ) from None
        run = cls(path, fd, created, new_marker)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            run._clean_leftovers()
            run._check(resume=resume, overwrite=overwrite)
            run._load_manifest()
        except BaseException as exc:
            run.abandon()
            if isinstance(exc, OSError):
                raise _cannot_write(path, exc) from None
            raise
        return run

    def _check(self, *, resume: bool, overwrite: bool) -> None:
        """Under the lock (another run may have finished meanwhile)."""
        has_checkpoint = bool(list_checkpoints(self.path / "checkpoints"))
        # A trained run shared without its checkpoints (`tar --exclude checkpoints`) still holds a
        # model someone may want: training over it needs --overwrite as much as a resumable run does.
        has_model = _holds_model(self.path)
        if resume and not has_checkpoint:
            if has_model:
                raise RunDirectoryError(
                    f"{self.path}: --resume given, but it holds a trained model and no checkpoint to resume from "
                    "(checkpoints/ is gone); --overwrite starts the run again, or choose another --run-dir"
                )
            raise RunDirectoryError(f"{self.path}: --resume given, but there is no checkpoint to resume from")
        if resume or overwrite:
            return
        if has_checkpoint:
            raise RunDirectoryError(
                f"{self.path}: already holds a trained run; pass --resume to continue it, "
                "--overwrite to start again, or choose another --run-dir (Python: fit(cfg, resume=True), "
                "fit(cfg, overwrite=True), or another run_dir)"
            )
        if has_model:
            raise RunDirectoryError(
                f"{self.path}: already holds a trained run (a model, but no checkpoint to resume); pass "
                "--overwrite to start again, or choose another --run-dir (Python: fit(cfg, overwrite=True), "
                "or another run_dir)"
            )

    # --------------------------------------------------------------------------------- manifest
    def _load_manifest(self) -> None:
        with _manifest_locked(self.path):
            written = _read_manifest(self.path)
            if written is not None:
                self.written = written
                return
            # A run made before the marker: its standard names are heedful's; so are tb/ and plots/.
            if _is_legacy_run(self.path):
                self.written = {*STANDARD, *self._relative(self._own_files() | files_under(self.path / "plots"))}
            elif not self._new_marker:
                # The marker without its list: deleted, the way out of a garbled one. Without it
                # --overwrite would remove nothing and leave the old checkpoints beside the new. The
                # names only heedful writes are its own; plots/ may hold the user's, and keeps them.
                self.written = {*STANDARD, *self._relative(self._own_files())}
            _write_manifest(self.path, self.written)

    def _own_files(self) -> set[Path]:
        found = files_under(self.path / "tb")
        return found | {p for p in self.path.glob("eval-*.json")} | {p for p in self.path.glob("hyps-*.txt")}

    def _relative(self, paths: set[Path]) -> set[str]:
        return {p.relative_to(self.path).as_posix() for p in paths}

    def record(self, *names: str | Path) -> None:
        """Add paths (relative to the run directory, or inside it) to what heedful wrote here."""
        new = {_relative(self.path, name) for name in names} - self.written
        if new:
            with _manifest_locked(self.path):
                # What another command recorded since this run last read the list stays in it.
                self.written |= (_read_manifest(self.path, strict=False) or set()) | new
                _write_manifest(self.path, self.written)

    def record_new(self, folder: str, before: set[Path]) -> None:
        """Record the files that appeared under ``folder`` since ``before = files_under(...)``."""
        self.record(*(files_under(self.path / folder) - before))

    # ---------------------------------------------------------------------------------- start
    def begin(self, *, overwrite: bool) -> None:
        """The start succeeded (data read, model built, checkpoint loaded): with ``overwrite``,
        set what heedful wrote here before aside (``settle`` deletes it at the new run's first
        checkpoint, ``abandon`` or the next claim puts it back); then record what a training writes."""
        if overwrite:
            self._set_aside()
        self.record(*STANDARD)

    def _set_aside(self) -> None:
        aside = self.path / MARKER / REPLACED
        shutil.rmtree(aside, ignore_errors=True)
        with _manifest_locked(self.path):
            written = self.written | (_read_manifest(self.path, strict=False) or set())
            for name in sorted(written | set(TRANSIENT)):
                target = self.path / name.rstrip("/")
                if target.exists() or target.is_symlink():
                    (aside / name).parent.mkdir(parents=True, exist_ok=True)
                    target.rename(aside / name.rstrip("/"))
            (self.path / MARKER / REPLACED_LIST).write_text(json.dumps({"written": sorted(written)}) + "\n")
            self.written = set()
            _write_manifest(self.path, self.written)
        _remove_empty_below(self.path, {self.path / name for name in written})

    def settle(self) -> None:
        """The new run has its first checkpoint: the run it replaced is gone for good."""
        shutil.rmtree(self.path / MARKER / REPLACED, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.path / MARKER / REPLACED_LIST).unlink()

    def _restore_replaced(self) -> None:
        """Give back the run set aside by a start that never reached its first checkpoint: what
        that start wrote goes, the old files return, and so does the old list."""
        listed = self.path / MARKER / REPLACED_LIST
        if not listed.is_file():
            return
        old = set(json.loads(listed.read_text(encoding="utf-8"))["written"])
        self.remove_written()
        aside = self.path / MARKER / REPLACED
        for name in sorted(old):
            source = aside / name.rstrip("/")
            if source.exists() or source.is_symlink():
                (self.path / name).parent.mkdir(parents=True, exist_ok=True)
                source.rename(self.path / name.rstrip("/"))
        with _manifest_locked(self.path):
            self.written = old
            _write_manifest(self.path, self.written)
        self.settle()

    def remove_written(self) -> None:
        """Delete every path heedful wrote here, and folders that held only those."""
        with _manifest_locked(self.path):
            # The list as it is now: an eval-test.json recorded since the claim goes with the old run.
            written = self.written | (_read_manifest(self.path, strict=False) or set())
            targets = {self.path / name.rstrip("/") for name in written | set(TRANSIENT)}
            for target in sorted(targets):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
            _remove_empty_below(self.path, targets)
            self.written = set()
            _write_manifest(self.path, self.written)

    def _clean_leftovers(self) -> None:
        """What a kill mid-save leaves: ``.tmp-step-N-pid`` folders, a checkpoint moved aside
        (``.old-step-N-pid``, put back when its replacement never arrived), a model folder mid-swap;
        and a run set aside by --overwrite, put back when its replacement never reached a checkpoint."""
        if (self.path / MARKER / REPLACED_LIST).is_file():
            if list_checkpoints(self.path / "checkpoints"):
                self.settle()
            else:
                self._load_manifest()
                self._restore_replaced()
        checkpoints = self.path / "checkpoints"
        if checkpoints.is_dir():
            for child in sorted(checkpoints.iterdir()):
                match = _LEFTOVER.match(child.name)
                if not match:
                    continue
                final = checkpoints / f"step-{match.group(2)}"
                if match.group(1) == "old" and not (final / "state.json").is_file():
                    shutil.rmtree(final, ignore_errors=True)
                    child.rename(final)
                else:
                    shutil.rmtree(child)
        model, old = self.path / "model", self.path / ".model.old"
        if old.is_dir() and not model.exists():
            old.rename(model)
        for name in TRANSIENT:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    # ------------------------------------------------------------------------------------- end
    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def abandon(self) -> None:
        """A failed start: remove what this start wrote — the marker too, and the folders, when
        it made them — and release the lock. A folder that holds anything else stays."""
        try:
            if self._new_marker:
                self.remove_written()
                shutil.rmtree(self.path / MARKER, ignore_errors=True)
            else:
                self._restore_replaced()  # --overwrite's earlier run, when this start set it aside
            _remove_empty(self._created)
        finally:
            self.release()


def _relative(root: Path, name: str | Path) -> str:
    path = Path(name)
    if path.is_absolute() or path.parts[: len(root.parts)] == root.parts:
        path = path.relative_to(root)
    return path.as_posix() + ("/" if str(name).endswith("/") else "")


def _remove_empty_below(root: Path, removed: set[Path]) -> None:
    """Remove the folders under ``root`` that held ``removed`` paths and are empty now, deepest first."""
    parents = {p for path in removed for p in path.parents if root in p.parents}
    _remove_empty(sorted(parents, key=lambda p: len(p.parts), reverse=True))


def _remove_empty(folders: list[Path]) -> None:
    """Remove each folder that is empty, deepest first; keep the others."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def _manifest_locked(run_dir: Path) -> Iterator[None]:
    """Hold ``.heedful/run.json.lock`` (an OSError when the marker folder cannot hold it)."""
    fd = os.open(run_dir / MARKER / MANIFEST_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # which releases the lock


def _read_manifest(run_dir: Path, *, strict: bool = True) -> set[str] | None:
    """What ``run.json`` lists; None when there is none. A garbled one is refused in one line, or
    with ``strict=False`` read as none (a writer that has its own list to go on, or nothing to lose)."""
    manifest = run_dir / MARKER / MANIFEST
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        written = json.loads(text)["written"]
        if not isinstance(written, list) or not all(isinstance(name, str) for name in written):
            raise TypeError
        return set(written)
    except (ValueError, KeyError, TypeError):
        if not strict:
            return None
        raise RunDirectoryError(
            f"{manifest}: unreadable; it lists which files here are heedful's, the ones --overwrite removes — "
            "delete it to have heedful count only its standard ones as its own (config.yaml, history.json, "
            "checkpoints/, model/, tb/, eval-*.json), or choose another --run-dir"
        ) from None


def _write_manifest(run_dir: Path, written: set[str]) -> None:
    """Replace ``run.json`` whole (a reader never sees half a list); under ``_manifest_locked``."""
    manifest = run_dir / MARKER / MANIFEST
    tmp = manifest.with_name(f"{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"heedful_run": 1, "written": sorted(written)}, indent=1) + "\n")
    os.replace(tmp, manifest)


def record_written(run_dir: str | Path, *names: str | Path) -> None:
    """Add files a command other than ``train`` wrote (``eval-test.json``…) to a run's list, so that
    ``--overwrite`` clears them too; a training running there meanwhile keeps them. A folder
    without the marker (or with a damaged list, or one this user may not write) is left alone."""
    run_dir = Path(run_dir)
    if not (run_dir / MARKER / MANIFEST).is_file():
        return
    try:
        with _manifest_locked(run_dir):
            written = _read_manifest(run_dir, strict=False)
            if written is not None:
                _write_manifest(run_dir, written | {_relative(run_dir, name) for name in names})
    except OSError:
        return
