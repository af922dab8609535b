"""The run directory's contract (docs/RUN_DIRECTORY.md): heedful writes only where it may, deletes
only what it wrote, and a run directory can be moved, copied and resumed where it lies."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heedful.config import ConfigError
from heedful.errors import DataError, UserError
from heedful.runs import load_config
from heedful.tasks import get_task
from heedful.train import History, fit
from heedful.train.rundir import MARKER, RunDirectory, RunDirectoryError
from tests.conftest import ROOT, run_cli, tiny_dates_overrides
from tests.test_cli import one_line_error


def config(configs_dir, run_dir, **extra):
    return load_config(configs_dir / "dates.yaml", tiny_dates_overrides(run_dir, **{"train.epochs": 1, **extra}))


def cli_args(run_dir, **extra) -> list[str]:
    return [a for o in tiny_dates_overrides(run_dir, **{"train.epochs": 1, **extra}) for a in ("--set", o)]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` with its bytes (None for a folder)."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))
    }


def foreign_folder(tmp_path: Path) -> Path:
    """A user's folder that happens to look like a run: a model/ with their file, a history.json."""
    home = tmp_path / "home"
    (home / "model").mkdir(parents=True)
    (home / "model" / "mine.txt").write_text("the user's own file\n")
    (home / "history.json").write_text('{"mine": true}\n')
    (home / "plots").mkdir()
    (home / "plots" / "holiday.png").write_bytes(b"\x89PNG not ours")
    return home


# --------------------------------------------------------------------------- where heedful may write
@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_foreign_folder_is_refused_and_left_unchanged(tmp_path, flags):
    home = foreign_folder(tmp_path)
    before = snapshot(home)
    line = one_line_error(run_cli("train", "configs/dates.yaml", *cli_args(home), *flags))
    assert line == (
        f"heedful: error: {home}: is not empty and is not a heedful run directory; heedful writes only into a new "
        "or empty folder, or one it made — choose another --run-dir"
    )
    assert snapshot(home) == before


def test_a_foreign_folder_is_refused_by_the_python_api_too(configs_dir, tmp_path):
    home = foreign_folder(tmp_path)
    before = snapshot(home)
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunDirectoryError, match="not a heedful run directory"):
            fit(config(configs_dir, home), **kwargs)
    assert snapshot(home) == before


def test_an_empty_folder_is_used_and_marked(configs_dir, tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    fit(config(configs_dir, run))
    written = json.loads((run / MARKER / "run.json").read_text())["written"]
    assert {"config.yaml", "history.json", "checkpoints/", "model/", "plots/history.png"} <= set(written)


def test_a_name_cannot_leave_the_runs_folder(configs_dir, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # runs/../../x would be tmp_path/a/x
    for name in ("../../x", "runs/../../x", "/tmp/heedful-x", "..", "''"):
        cfg = config(configs_dir, "null", name=name)
        with pytest.raises(ConfigError, match="would put the run outside runs/"):
            fit(cfg)
    assert not list(work.iterdir()) and [p.name for p in (tmp_path / "a").iterdir()] == ["b"]
    # Inside runs/ a name may have parts; an explicit run_dir goes where it says.
    assert config(configs_dir, "null", name="group/exp1").resolved_run_dir() == Path("runs/group/exp1")
    assert config(configs_dir, "../elsewhere").resolved_run_dir() == Path("../elsewhere")


@pytest.mark.slow
def test_a_name_that_leaves_runs_is_one_line_on_the_command_line():
    line = one_line_error(run_cli("train", "configs/dates.yaml", "--set", "name=../../x", "--set", "device=cpu"))
    assert "config key 'name': '../../x' would put the run outside runs/" in line


@pytest.mark.slow
def test_path_values_keep_their_text(configs_dir, tmp_path):
    assert config(configs_dir, "runs/exp #2").run_dir == Path("runs/exp #2")  # --set run_dir=runs/exp #2
    assert config(configs_dir, "runs/a: b").run_dir == Path("runs/a: b")
    assert config(configs_dir, "null").run_dir is None
    assert config(configs_dir, tmp_path, name="exp #2").name == "exp #2"
    run = tmp_path / "runs" / "exp #2"
    trained = run_cli("train", "configs/dates.yaml", *cli_args(tmp_path / "other"), "--run-dir", str(run))
    assert trained.returncode == 0, trained.stderr
    assert (run / "model" / "model.safetensors").is_file() and not (tmp_path / "other").exists()
    assert f"run directory: {run} " in trained.stdout


def test_a_failed_start_leaves_nothing_behind(configs_dir, tmp_path):
    new = tmp_path / "new" / "deeper"
    with pytest.raises(ConfigError, match="train.monitor"):  # fails at the end of the first epoch
        fit(config(configs_dir, new, **{"train.monitor": "nope"}))
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="train.monitor"):
        fit(config(configs_dir, empty, **{"train.monitor": "nope"}))
    assert empty.is_dir() and not list(empty.iterdir())


@pytest.mark.slow
def test_a_failed_start_on_the_command_line_leaves_no_folder(tmp_path):
    new = tmp_path / "new"
    line = one_line_error(run_cli("train", "configs/dates.yaml", *cli_args(new, **{"train.monitor": "nope"})))
    assert "train.monitor" in line and not new.exists()


@pytest.mark.parametrize("made", ["with-marker", "before-the-marker"])
def test_overwrite_keeps_the_old_run_until_the_new_one_starts(configs_dir, tmp_path, monkeypatch, made):
    run = tmp_path / "run"
    fit(config(configs_dir, run))
    if made == "before-the-marker":
        shutil.rmtree(run / MARKER)
        shutil.rmtree(run / "checkpoints")  # only a model: a failed start must not count as the first
    before = {k: v for k, v in snapshot(run).items() if not k.startswith(MARKER)}

    def broken(self, cfg):
        raise DataError("data.path: cannot be read")

    monkeypatch.setattr(get_task("translate"), "build_data", broken)
    with pytest.raises(DataError):
        fit(config(configs_dir, run), overwrite=True)
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not k.startswith(MARKER)} == before


def test_a_run_shared_without_its_checkpoints_is_not_trained_over(configs_dir, tmp_path):
    run = tmp_path / "run"
    fit(config(configs_dir, run))
    shutil.rmtree(run / "checkpoints")  # the share layout: `tar --exclude checkpoints`
    before = snapshot(run)
    refused = r"already holds a trained run \(a model, but no checkpoint to resume\); pass --overwrite to start again"
    with pytest.raises(RunDirectoryError, match=refused):
        fit(config(configs_dir, run))
    nothing = r"holds a trained model and no checkpoint to resume from \(checkpoints/ is gone\); --overwrite starts"
    with pytest.raises(RunDirectoryError, match=rf"--resume given, but it {nothing} the run again"):
        fit(config(configs_dir, run), resume=True)
    assert snapshot(run) == before
    history = fit(config(configs_dir, run, seed=7), overwrite=True)
    assert history.completed and load_config(run).seed == 7 and (run / "checkpoints" / "step-4").is_dir()


@pytest.mark.slow
def test_overwrite_deletes_only_what_heedful_wrote(configs_dir, tmp_path):
    run = tmp_path / "run"
    fit(config(configs_dir, run, **{"train.tensorboard": True}))
    assert list((run / "tb").iterdir())
    (run / "notes.txt").write_text("mine\n")
    (run / "plots" / "mine.png").write_bytes(b"mine")
    (run / "eval-test.json").write_text("{}\n")  # as `heedful evaluate` writes it …
    from heedful.train.rundir import record_written

    record_written(run, run / "eval-test.json")  # … and records it
    (run / "checkpoints" / ".tmp-step-9-1").mkdir()  # leftovers in heedful's own folder go too
    (run / "checkpoints" / ".damaged-step-9-1").mkdir()  # as is a damaged checkpoint a resume set aside
    fit(config(configs_dir, run, **{"train.tensorboard": False}), overwrite=True)
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "plots" / "mine.png").read_bytes() == b"mine"
    assert not (run / "eval-test.json").exists() and not (run / "tb").exists()
    assert not (run / "checkpoints" / ".tmp-step-9-1").exists()
    assert not (run / "checkpoints" / ".damaged-step-9-1").exists()
    assert (run / "plots" / "history.png").is_file() and History.load(run / "history.json").completed


@pytest.mark.slow
def test_a_run_made_before_the_marker_is_resumed(configs_dir, tmp_path):
    run = tmp_path / "run"
    fit(config(configs_dir, run, **{"train.tensorboard": True}))
    shutil.rmtree(run / MARKER)
    (run / "eval-test.json").write_text("{}\n")
    history = fit(config(configs_dir, run, **{"train.epochs": 2}), resume=True)
    assert history["step"] == [4, 8]
    written = json.loads((run / MARKER / "run.json").read_text())["written"]
    assert "eval-test.json" in written and any(name.startswith("tb/events.out") for name in written)


# ------------------------------------------------------------------------------------- the manifest
def written(run: Path) -> set[str]:
    return set(json.loads((run / MARKER / "run.json").read_text())["written"])


def test_the_manifest_keeps_what_another_command_recorded_meanwhile(tmp_path):
    """A training keeps its own list; `heedful evaluate` adds eval-test.json while it runs."""
    from heedful.train.rundir import record_written

    path = tmp_path / "run"
    training = RunDirectory.claim(path, resume=False, overwrite=False)
    training.begin(overwrite=False)
    (path / "eval-test.json").write_text('{"exact_match": 0.1}\n')
    record_written(path, path / "eval-test.json")  # evaluate, between two of the training's records
    training.record("plots/samples-epoch-1.png")
    assert {"eval-test.json", "plots/samples-epoch-1.png", "model/"} <= written(path)
    training.release()

    # --overwrite removes what the list holds when it starts, not what it held when it was claimed.
    again = RunDirectory.claim(path, resume=False, overwrite=True)
    (path / "eval-val.json").write_text('{"exact_match": 0.2}\n')
    record_written(path, "eval-val.json")
    again.begin(overwrite=True)
    again.release()
    assert not (path / "eval-test.json").exists() and not (path / "eval-val.json").exists()
    assert "eval-val.json" not in written(path) and "model/" in written(path)


def test_a_garbled_manifest_says_the_way_out_and_the_way_out_works(configs_dir, tmp_path):
    run = tmp_path / "run"
    fit(config(configs_dir, run))
    (run / "notes.txt").write_text("mine\n")
    (run / "plots" / "mine.png").write_bytes(b"mine")
    (run / "eval-test.json").write_text("{}\n")
    shutil.copytree(run / "checkpoints" / "step-4", run / "checkpoints" / "step-100")  # of the old run
    (run / MARKER / "run.json").write_text('{"written": ["config.yaml", ')  # cut short
    with pytest.raises(RunDirectoryError) as refused:
        fit(config(configs_dir, run), overwrite=True)
    assert str(refused.value) == (
        f"{run / MARKER / 'run.json'}: unreadable; it lists which files here are heedful's, the ones --overwrite "
        "removes — delete it to have heedful count only its standard ones as its own (config.yaml, history.json, "
        "checkpoints/, model/, tb/, eval-*.json), or choose another --run-dir"
    )
    (run / MARKER / "run.json").unlink()  # as the line says
    fit(config(configs_dir, run), overwrite=True)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-4"]  # the old run's step-100 went
    assert not (run / "eval-test.json").exists() and (run / "notes.txt").read_text() == "mine\n"
    assert (run / "plots" / "mine.png").read_bytes() == b"mine"


RECORDING = """
import sys
from heedful.train.rundir import record_written
for i in range(int(sys.argv[2])):
    record_written(sys.argv[1], f"eval-{i}.json")
"""


@pytest.mark.slow  # a second process: 2 s
def test_writers_of_the_manifest_at_the_same_time_lose_nothing(tmp_path):
    path, n = tmp_path / "run", 400
    training = RunDirectory.claim(path, resume=False, overwrite=False)
    training.begin(overwrite=False)
    other = subprocess.Popen([sys.executable, "-c", RECORDING, str(path), str(n)], cwd=ROOT)
    recorded = 0
    try:
        deadline = time.monotonic() + 120
        while '"eval-0.json"' not in (path / MARKER / "run.json").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        while other.poll() is None:  # the training records while the other command does
            training.record(f"plots/samples-epoch-{recorded}.png")
            recorded += 1
    finally:
        assert other.wait(timeout=120) == 0
        training.release()
    listed = written(path)
    assert recorded > 0
    assert {f"eval-{i}.json" for i in range(n)} | {f"plots/samples-epoch-{i}.png" for i in range(recorded)} <= listed


# --------------------------------------------------------------------------------- moving and copying
@pytest.mark.slow
def test_resuming_a_copy_writes_only_into_the_copy(configs_dir, tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    fit(config(configs_dir, original, **{"train.checkpoint_every": 1}))
    shutil.copytree(original, copy)
    before = snapshot(original)
    resumed = run_cli("train", str(copy), "--resume", "--set", "train.epochs=2")
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(original) == before
    assert History.load(copy / "history.json")["step"] == [4, 8]
    assert load_config(copy / "config.yaml").run_dir == copy  # config.yaml says where it now is
    assert load_config(copy).train.epochs == 2


def test_a_loaded_copy_is_configured_where_it_lies(configs_dir, tmp_path):
    from heedful.runs import load_run

    original, copy = tmp_path / "original", tmp_path / "elsewhere" / "copy"
    fit(config(configs_dir, original))
    shutil.copytree(original, copy)
    run = load_run(copy, device="cpu")
    assert load_config(original).run_dir == original  # config.yaml still remembers the original
    assert run.run_dir == run.cfg.run_dir == run.cfg.resolved_run_dir() == copy


def test_a_failed_resume_does_not_rewrite_the_config(configs_dir, tmp_path):
    run = tmp_path / "run"
    fit(config(configs_dir, run))
    before = snapshot(run)
    with pytest.raises(UserError, match="--resume: model.d_model is 64, but .* was trained with 32"):
        fit(config(configs_dir, run, **{"train.epochs": 2, "model.d_model": 64}), resume=True)
    after = snapshot(run)
    assert after["config.yaml"] == before["config.yaml"]
    assert {k for k in after if not k.startswith(MARKER)} == {k for k in before if not k.startswith(MARKER)}


def test_resuming_another_tasks_run_is_one_line(configs_dir, tmp_path):
    run = tmp_path / "run"
    fit(config(configs_dir, run))
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace("task: translate", "task: imagegen"))
    before = snapshot(run)
    with pytest.raises(UserError, match=r"holds an 'imagegen' run, and this config trains 'translate'; resume it with"):
        fit(config(configs_dir, run, **{"train.epochs": 2}), resume=True)
    assert snapshot(run) == before


# ------------------------------------------------------------------------------ folders it cannot write
@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("/", "/: is not empty and is not a heedful run directory"),
        ("file", "{tmp}/file: is a file, not a folder"),
        ("file/sub", "{tmp}/file/sub: cannot write the run directory: Not a directory"),
    ],
)
def test_a_folder_it_cannot_write_is_one_line(tmp_path, where, expected):
    (tmp_path / "file").write_text("in the way\n")
    run_dir = where if where == "/" else str(tmp_path / where)
    line = one_line_error(run_cli("train", "configs/dates.yaml", *cli_args(tmp_path / "x"), "--run-dir", run_dir))
    assert line.startswith("heedful: error: " + expected.format(tmp=tmp_path))
    assert (tmp_path / "file").read_text() == "in the way\n" and not (tmp_path / "x").exists()


def test_a_read_only_folder_is_one_line(configs_dir, tmp_path, monkeypatch):
    """Tests run as root, which chmod does not stop: the file system says no instead."""
    parent = tmp_path / "mounted"
    parent.mkdir()
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if parent in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    with pytest.raises(RunDirectoryError, match=f"^{parent / 'run'}: cannot write the run directory: Read-only"):
        fit(config(configs_dir, parent / "run"))
    assert not list(parent.iterdir())


def test_a_run_directory_that_turns_read_only_stops_with_one_line(configs_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    task_class = get_task("translate")
    original = task_class.after_validation

    def full_disk(self, model, epoch, run_dir):
        original(self, model, epoch, run_dir)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "plots" / "x.png"))

    monkeypatch.setattr(task_class, "after_validation", full_disk)
    with pytest.raises(RunDirectoryError, match=f"^{run}: cannot write the run directory: No space left"):
        fit(config(configs_dir, run))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_really_read_only_folder_is_one_line(configs_dir, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(RunDirectoryError, match="cannot write the run directory"):
            fit(config(configs_dir, parent / "run"))
    finally:
        parent.chmod(0o755)


# ------------------------------------------------------------------------------------------ the lock
WAITING_TRAINER = """
import sys, time
from pathlib import Path
from heedful.tasks import get_task
from heedful import cli

signals = Path(sys.argv[1])
task_class = get_task("translate")
original = task_class.loss

def waiting_loss(self, model, batch):
    (signals / "started").touch()
    while not (signals / "go").exists():
        time.sleep(0.05)
    return original(self, model, batch)

task_class.loss = waiting_loss
sys.argv = ["heedful", *sys.argv[2:]]
cli.main()
"""


@pytest.mark.slow
def test_a_second_training_into_a_run_directory_in_use_is_refused(tmp_path):
    run, signals = tmp_path / "run", tmp_path / "signals"
    signals.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-c", WAITING_TRAINER, str(signals), "train", "configs/dates.yaml", *cli_args(run, seed=1)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (signals / "started").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = run_cli("train", "configs/dates.yaml", *cli_args(run, seed=2), "--overwrite")
        line = one_line_error(second)
        assert line == (
            f"heedful: error: {run}: another training is running in this run directory (pid {first.pid}); "
            "wait for it or choose another --run-dir"
        )
    finally:
        (signals / "go").touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert load_config(run).seed == 1 and History.load(run / "history.json").completed


@pytest.mark.slow
def test_the_lock_of_a_killed_training_does_not_block(configs_dir, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from heedful.train.rundir import RunDirectory; "
            "RunDirectory.claim(Path(sys.argv[1]), resume=False, overwrite=False); print('held', flush=True); "
            "time.sleep(600)",
            str(run),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryError, match="another training is running"):
            RunDirectory.claim(run, resume=False, overwrite=False)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs
        holder.wait()
    history = fit(config(configs_dir, run))
    assert history.completed


def test_what_a_kill_mid_replace_leaves_is_put_back(configs_dir, tmp_path):
    """Killed between moving the old checkpoint (or model) aside and renaming the new one in."""
    run = tmp_path / "run"
    fit(config(configs_dir, run))
    checkpoints = run / "checkpoints"
    weights = (checkpoints / "step-4" / "model.safetensors").read_bytes()
    (checkpoints / "step-4").rename(checkpoints / ".old-step-4-999999")
    (checkpoints / ".tmp-step-4-999999").mkdir()  # the new one, never finished
    (run / "model").rename(run / ".model.old")
    (run / ".model.tmp").mkdir()
    RunDirectory.claim(run, resume=True, overwrite=False).release()
    assert (checkpoints / "step-4" / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-4"]
    assert (run / "model" / "model.safetensors").is_file()
    assert not (run / ".model.old").exists() and not (run / ".model.tmp").exists()


KILLED_MID_SAVE = """
import os, sys, time
from pathlib import Path
from heedful.train import checkpoint
from heedful import cli

signals, calls, original = Path(sys.argv[1]), [0], checkpoint.rng_state

def stalling_rng_state():  # the third save (step 6) stalls after writing its model file
    calls[0] += 1
    if calls[0] == 3:
        (signals / "mid-save").touch()
        time.sleep(600)
    return original()

checkpoint.rng_state = stalling_rng_state
sys.argv = ["heedful", *sys.argv[2:]]
cli.main()
"""


@pytest.mark.slow
def test_a_run_killed_mid_save_resumes_bit_identically(configs_dir, tmp_path):
    extra = {"train.epochs": 2, "train.checkpoint_every": 3, "train.keep_checkpoints": 5}
    fit(config(configs_dir, tmp_path / "straight", **extra))
    run, signals = tmp_path / "killed", tmp_path / "signals"
    signals.mkdir()
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_SAVE, str(signals), "train", "configs/dates.yaml", *cli_args(run, **extra)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (signals / "mid-save").exists():
            assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
            time.sleep(0.05)
    finally:
        killed.kill()  # SIGKILL, holding the lock, a .tmp-step-6 folder half written
        killed.wait()
    assert list((run / "checkpoints").glob(".tmp-step-6-*"))
    resumed = run_cli("train", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run / 'checkpoints' / 'step-4'} " in resumed.stderr  # progress, as the epoch lines
    assert not list((run / "checkpoints").glob(".tmp-*"))
    straight = tmp_path / "straight"
    assert snapshot(run / "model") == snapshot(straight / "model")  # the weights, bit for bit
    assert History.load(run / "history.json")["train_loss"] == History.load(straight / "history.json")["train_loss"]


def test_resume_and_overwrite_together_are_refused_before_anything_is_made(tmp_path):
    from heedful.train.rundir import RunDirectory

    with pytest.raises(UserError, match=r"run: --resume continues the run and --overwrite discards it; give one$"):
        RunDirectory.claim(tmp_path / "run", resume=True, overwrite=True)
    assert not (tmp_path / "run").exists()


def _without_locks(snap: dict[str, bytes | None]) -> dict[str, bytes | None]:
    return {k: v for k, v in snap.items() if not k.endswith((f"{MARKER}/lock", "run.json.lock"))}


@pytest.mark.slow  # about a second: out of the fast subset
def test_an_overwrite_or_resume_that_fails_in_its_first_epoch_gives_the_old_run_back(configs_dir, tmp_path):
    """A mistyped train.monitor is found at the first epoch's end: --overwrite had already deleted
    the old run, and --resume had rewritten config.yaml with the typo (every later resume failed)."""
    run = tmp_path / "run"
    fit(config(configs_dir, run))
    before = _without_locks(snapshot(run))
    typo = {"train.monitor": "val_exact_mtch"}
    with pytest.raises(ConfigError, match="'val_exact_mtch' is not a metric"):
        fit(config(configs_dir, run, **typo), overwrite=True)
    assert _without_locks(snapshot(run)) == before
    with pytest.raises(ConfigError, match="'val_exact_mtch' is not a metric"):
        fit(config(configs_dir, run, **{"train.epochs": 3, **typo}), resume=True)
    assert snapshot(run)["config.yaml"] == before["config.yaml"]
    fit(config(configs_dir, run), overwrite=True)  # and one that succeeds replaces it for good
    assert not (run / MARKER / "replaced").exists() and not (run / MARKER / "replaced.json").exists()
    assert set(json.loads((run / MARKER / "run.json").read_text())["written"]) >= {"config.yaml", "model/"}


def test_a_run_set_aside_by_a_killed_overwrite_comes_back_at_the_next_claim(configs_dir, tmp_path):
    run = tmp_path / "run"
    fit(config(configs_dir, run))
    before = _without_locks(snapshot(run))
    claimed = RunDirectory.claim(run, resume=False, overwrite=True)
    claimed.begin(overwrite=True)  # the old run set aside …
    (run / "config.yaml").write_text("the new run's\n")
    assert not (run / "model").exists()
    claimed.release()  # … and the process killed before its first checkpoint
    again = RunDirectory.claim(run, resume=True, overwrite=False)
    again.release()
    assert _without_locks(snapshot(run)) == before


def test_tensorboard_and_a_tasks_plots_are_listed_before_they_are_written(configs_dir, tmp_path, monkeypatch):
    """A kill just after the writer made its file left it unlisted, and --overwrite never removed it."""
    from torch.utils import tensorboard

    run, seen = tmp_path / "run", {}
    real_writer, task_class = tensorboard.SummaryWriter, get_task("translate")

    def writer(log_dir, **kwargs):
        seen["tb"] = ("tb/" in written(run), list(Path(log_dir).glob("events.out.*")))
        return real_writer(log_dir=log_dir, **kwargs)

    def draw(self, model, epoch, run_dir):
        path = run_dir / self.after_validation_files(epoch)[0]
        seen[epoch] = (path.relative_to(run).as_posix() in written(run), path.exists())
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"grid")

    monkeypatch.setattr(tensorboard, "SummaryWriter", writer)
    monkeypatch.setattr(task_class, "after_validation_files", lambda self, epoch: [f"plots/grid-{epoch}.png"])
    monkeypatch.setattr(task_class, "after_validation", draw)
    fit(config(configs_dir, run, **{"train.tensorboard": True}))
    assert seen == {"tb": (True, []), 1: (True, False)}  # listed; not yet written
    assert {"tb/", "plots/grid-1.png"} <= written(run)
