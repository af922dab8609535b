"""Output files (heedful/outputs.py): refused before any work where writing would destroy a run or
an input, and written whole, so that a failure leaves an earlier file as it was."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from heedful import cli
from heedful.errors import UserError
from heedful.outputs import check_output, check_output_folder, written_whole
from heedful.runs import load_config
from heedful.train.trainer import fit
from tests.conftest import ROOT, run_cli, tiny_dates_overrides


@pytest.fixture
def run_folder(tmp_path):
    """The shape of a run directory, without training one."""
    run = tmp_path / "run"
    for name in ["config.yaml", "history.json", "model/model.safetensors", "checkpoints/step-4/state.json"]:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("kept")
    return run


@pytest.mark.parametrize("own", ["config.yaml", "history.json", "model/model.safetensors", "checkpoints/step-4/x"])
def test_a_runs_own_files_are_refused(run_folder, own, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"^--output .*: would overwrite .*run's own files; write elsewhere$"):
        check_output(run_folder / own, "--output", runs=[run_folder])
    monkeypatch.chdir(tmp_path)  # the same file named relative to another folder, through a link
    (tmp_path / "link").symlink_to(run_folder)
    with pytest.raises(UserError, match="own files"):
        check_output(tmp_path / "link" / own, "--output", runs=["run"])


def test_what_a_run_may_hold_beside_its_own_files_is_allowed(run_folder, tmp_path):
    for allowed in [run_folder / "report.html", run_folder / "plots" / "why.html", tmp_path / "elsewhere.csv"]:
        assert check_output(allowed, "--out", runs=[run_folder]) == allowed


def test_a_file_the_runs_manifest_lists_is_refused_and_a_damaged_manifest_lists_none(run_folder):
    """``report --out RUN/plots/history.png`` turned the run's curves into an HTML page."""
    (run_folder / ".heedful").mkdir()
    manifest = run_folder / ".heedful" / "run.json"
    manifest.write_text('{"heedful_run": 1, "written": ["plots/history.png", "eval-test.json", "plots/"]}')
    for listed in ("plots/history.png", "eval-test.json"):
        with pytest.raises(UserError, match=r"^--out .*: would overwrite .*run's own files; write elsewhere$"):
            check_output(run_folder / listed, "--out", runs=[run_folder])
    assert check_output(run_folder / "plots" / "why.html", "--out", runs=[run_folder])  # not listed: a user's file
    for damaged in ("{not json", "[1, 2]", '{"written": "plots/history.png"}'):
        manifest.write_text(damaged)
        assert check_output(run_folder / "plots" / "history.png", "--out", runs=[run_folder])


def test_anything_inside_an_export_folder_is_refused(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "export.json").write_text("{}")
    with pytest.raises(UserError, match="own files"):
        check_output(export / "predictions.csv", "--output", runs=[export])


def test_an_input_a_folder_or_no_name_is_refused(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("5. März 2021\n")
    with pytest.raises(UserError, match=r"^--out .*in.txt: is also an input of this command; write elsewhere$"):
        check_output(tmp_path / "." / "in.txt", "--out", inputs=[tmp_path / "other.txt", source])
    with pytest.raises(UserError, match="is a folder; give a file name"):
        check_output(tmp_path, "--out")
    with pytest.raises(UserError, match="give a file name"):
        check_output("", "--out")
    with pytest.raises(UserError, match="is a file; give a folder"):
        check_output_folder(source, "--out-dir")
    assert check_output_folder(tmp_path / "new", "--out-dir") == tmp_path / "new"


def test_an_output_is_written_whole_or_not_at_all(tmp_path):
    target = tmp_path / "deep" / "er" / "out.txt"  # its folders are made
    with written_whole(target, "--out") as handle:
        handle.write("first\n")
        assert not target.exists()  # only once the block ends
    assert target.read_text() == "first\n"
    with pytest.raises(RuntimeError, match="mid-way"), written_whole(target, "--out") as handle:
        handle.write("second, half")
        raise RuntimeError("mid-way")
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # no temporary file left


def test_a_place_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with (
        pytest.raises(UserError, match=r"^--out .*file/out.txt: cannot write there \("),
        written_whole(blocker / "out.txt", "--out"),
    ):
        pass


def test_an_argument_that_is_not_utf8_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["heedful", "predict", "runs/x", "5. M\udce4rz"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "heedful: error: '5. M\\udce4rz': is not UTF-8 text (the terminal's encoding?)\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("outputs") / "dates"
    fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(directory)))
    return directory


@pytest.mark.slow
def test_no_verb_writes_over_its_run_or_its_input(tiny_run, tmp_path):
    lines = tmp_path / "in.txt"
    lines.write_text("5. März 2021\n")
    table = tmp_path / "in.csv"
    table.write_text("text\n5. März 2021\n")
    before = {p: p.read_bytes() for p in [*tiny_run.rglob("*"), lines, table] if p.is_file()}
    cases = [
        (["report", str(tiny_run), "--out", str(tiny_run / "model" / "model.safetensors")], "own files", None),
        (["predict", str(tiny_run), "--input", str(table), "--output", str(tiny_run / "config.yaml")], "own", None),
        (["predict", str(tiny_run), "--input", str(table), "--output", str(table)], "also an input", None),
        (["translate", str(tiny_run), "--attention", str(lines)], "also an input", lines),  # stdin is the file
        (["align", str(tiny_run), "--src", str(lines), "--tgt", str(lines), "--out", str(lines)], "an input", None),
        (["predict", str(tiny_run), "--input", str(table), "--output", str(tmp_path)], "is a folder", None),
        (["predict", str(tiny_run), "--input", str(tmp_path)], "is a folder; give a file", None),
    ]
    for args, message, stdin in cases:
        with stdin.open() if stdin else open(os.devnull) as source:
            result = subprocess.run(
                [sys.executable, "-m", "heedful.cli", *args], stdin=source, capture_output=True, text=True, cwd=ROOT
            )
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow
def test_a_full_disk_is_one_line(tiny_run):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "heedful.cli", "predict", str(tiny_run), "5. März 2021"],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"heedful: error: {os.strerror(errno.ENOSPC)} while writing the output"
    ]
    assert run_cli("predict", str(tiny_run), "5. März 2021").returncode == 0  # the run is whole
