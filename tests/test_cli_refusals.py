"""What the command line refuses, or turns into one line, in process (``cli.main`` with an argv):
options that would be ignored, a closed stdin, memory that runs out; and what the Python API
refuses that would otherwise do something else than asked."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from heedful import cli
from heedful.runs import load_config
from heedful.train.trainer import fit
from tests.conftest import ROOT, tiny_dates_overrides


def heedful(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["heedful", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "nowhere", "x", "--input", "in.csv"], "give inputs to predict or --input FILE, not both"),
        (["predict", "nowhere", "x", "--html", "why.html"], "--html needs --explain"),
        (["predict", "nowhere", "x", "--out-dir", "maps"], "--out-dir needs --show-attention"),
        (["transcribe", "nowhere", "x.wav", "--out-dir", "maps"], "--out-dir needs --show-attention"),
        # Before the run is even read, so before any file is transcribed (it named the Python `out_dir`, after).
        (
            ["transcribe", "nowhere", "x.wav", "--show-attention", "--out-dir", "in.csv"],
            "--out-dir in.csv: is a file; give a folder",
        ),
        (["predict", "nowhere", "--input", "in.csv", "--output", "p.csv", "--json"], "--json prints the predictions"),
        (["predict", "nowhere", "--input", "no_such.csv"], "--input no_such.csv: file not found"),
        (
            ["align", "nowhere", "--src", "a", "--tgt", "b", "--threshold", "0.3"],
            "--threshold needs --extract threshold",
        ),
        (["align", "nowhere", "--src", "a", "--tgt", "b", "--extract", "max"], "--extract 'max': argmax or threshold"),
        (
            ["align", "nowhere", "--src", "a", "--tgt", "b", "--direction", "gdf"],
            "--direction 'gdf': grow-diag-final, intersection, union, target or source",
        ),
    ],
)
def test_options_that_would_be_ignored_are_refused(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("text\n5. März 2021\n")
    code, out, err = heedful(monkeypatch, capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith(f"heedful: error: {message}") and err.count("\n") == 1, err


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    def app(**_):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 8e10 bytes")

    monkeypatch.setattr(cli, "app", app)
    code, _, err = heedful(monkeypatch, capsys, "translate", "run")
    assert code == 2
    assert err.startswith("heedful: error: out of memory ([enforce fail") and err.count("\n") == 1
    assert err.rstrip().endswith("try a smaller --beam or smaller batches")

    def other(**_):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(cli, "app", other)
    with pytest.raises(RuntimeError, match="a bug"):  # anything else still shows its traceback
        heedful(monkeypatch, capsys, "translate", "run")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("refusals") / "dates"
    fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(directory)))
    return directory


def test_translate_with_stdin_closed_is_one_line(tiny_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", None)
    code, out, err = heedful(monkeypatch, capsys, "translate", str(tiny_run))
    assert (code, out, err) == (2, "", "heedful: error: stdin is closed: give the lines to translate on stdin\n")


def test_predict_input_prints_json_lines_with_json(tiny_run, monkeypatch, capsys, tmp_path):
    import json

    table = tmp_path / "in.csv"
    table.write_text("text\n5. März 2021\n2021年3月5日\n")
    args = ["predict", str(tiny_run), "--input", str(table), "--text-column", "text", "--json"]
    code, out, _ = heedful(monkeypatch, capsys, *args)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in records] == ["5. März 2021", "2021年3月5日"]
    assert all(set(r) >= {"input", "output", "score"} for r in records)


def test_predict_json_keeps_stdout_to_json_lines_with_show_attention(tiny_run, monkeypatch, capsys, tmp_path):
    import json
    from pathlib import Path

    args = ["predict", str(tiny_run), "5. März 2021", "1. Mai 2020", "--json", "--show-attention"]
    code, out, err = heedful(monkeypatch, capsys, *args, "--out-dir", str(tmp_path / "maps"), "--device", "cpu")
    assert code == 0, err
    assert [json.loads(line)["input"] for line in out.splitlines()] == ["5. März 2021", "1. Mai 2020"]
    shown = [line.removeprefix("attention heatmap: ") for line in err.splitlines() if "attention heatmap: " in line]
    assert len(shown) == 2 and all(Path(p).parent == tmp_path / "maps" and Path(p).is_file() for p in shown)
    plain = [*args[:-2], "--show-attention", "--out-dir", str(tmp_path / "maps"), "--device", "cpu"]
    code, out, _ = heedful(monkeypatch, capsys, *plain)
    assert code == 0 and out.count("attention heatmap: ") == 2  # without --json the paths stay with the output


def test_predict_json_keeps_stdout_to_json_lines_with_explain(tiny_run, monkeypatch, capsys, tmp_path):
    import json

    args = ["predict", str(tiny_run), "5. März 2021", "--json", "--explain", "--html", str(tmp_path / "why.html")]
    code, out, err = heedful(monkeypatch, capsys, *args, "--device", "cpu")
    assert code == 0, err
    assert [json.loads(line)["input"] for line in out.splitlines()] == ["5. März 2021"]  # the weights: on stderr
    assert f"explanation page: {tmp_path / 'why.html'}" in err and (tmp_path / "why.html").is_file()


@pytest.mark.parametrize("flags", [["--explain"], ["--explain", "--html", "why.html"], ["--show-attention"]])
def test_predict_of_a_file_refuses_to_explain_rather_than_ignore_it(tiny_run, monkeypatch, capsys, tmp_path, flags):
    """`predict --input r.csv --explain --html why.html` exited 0 and wrote no page."""
    rows = tmp_path / "in.txt"
    rows.write_text("5. März 2021\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = heedful(monkeypatch, capsys, "predict", str(tiny_run), "--input", str(rows), *flags)
    assert code == 2 and out == "" and not (tmp_path / "why.html").exists()
    named = " and ".join(f for f in flags if f in ("--explain", "--show-attention"))
    assert err == f"heedful: error: {named}: explain texts given on the command line, not the rows of --input\n"


def test_align_threshold_must_be_a_weight(tiny_run, monkeypatch, capsys, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("5. März 2021\n")
    for bad in ["2", "nan", "-1"]:
        args = ["align", str(tiny_run), "--src", str(lines), "--tgt", str(lines), "--extract", "threshold"]
        code, _, err = heedful(monkeypatch, capsys, *args, "--threshold", bad)
        assert code == 2 and f"--threshold {float(bad)}: an attention weight in (0, 1]" in err, err


@pytest.mark.parametrize("override", ["model.n_heads=8", "model={}", "task=classify"])
def test_a_trained_runs_model_and_task_cannot_be_set(tiny_run, override):
    """They would change nothing (model/config.json is what loads) or load the run as another task."""
    from heedful.config import ConfigError
    from heedful.runs import load_run

    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^--set {re.escape(override)}: {key} is fixed when a run is trained; "):
        load_run(tiny_run, "cpu", ["decode.beam_size=1", override])
    assert load_run(tiny_run, "cpu", ["decode.beam_size=1", "train.progress=false"]).cfg.decode.beam_size == 1


@pytest.mark.parametrize("override", ["data.sample_rate=16000", "data.mode=strings"])
def test_what_a_task_fixes_at_training_cannot_be_set_either(tmp_path, override):
    """transcribe --set data.sample_rate=16000 made other features than the model learnt from, exit 0."""
    from heedful.config import ConfigError, to_yaml
    from heedful.errors import CheckpointError
    from heedful.runs import load_config, load_run
    from tests.conftest import ROOT

    run = tmp_path / "speech"
    (run / "model").mkdir(parents=True)  # the check comes before the model is read
    (run / "config.yaml").write_text(to_yaml(load_config(ROOT / "configs" / "speech_digits.yaml")))
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^--set {override}: {key} is fixed when a speech run is trained; "):
        load_run(run, "cpu", [override])
    with pytest.raises(CheckpointError):  # what it may change passes on to reading the (absent) model
        load_run(run, "cpu", ["data.trim_db=-40", "decode.beam_size=2"])


def test_a_run_given_twice_to_an_ensemble_on_the_command_line_is_refused(tiny_run, monkeypatch, capsys):
    monkeypatch.chdir(tiny_run.parent)  # one folder, named two ways
    code, out, err = heedful(monkeypatch, capsys, "predict", str(tiny_run), "5 May 2020", "--ensemble", tiny_run.name)
    assert code == 2 and out == ""
    assert (
        err
        == f"heedful: error: --ensemble {tiny_run.name}: is {tiny_run}, already in the ensemble; give each run once\n"
    )


def test_a_run_without_a_model_says_whether_a_resume_can_finish_it(tiny_run, tmp_path):
    """It said "train or --resume it" where no checkpoint was there to resume."""
    import shutil

    from heedful.errors import CheckpointError
    from heedful.runs import load_run

    run = shutil.copytree(tiny_run, tmp_path / "run")
    shutil.rmtree(run / "model")
    latest = sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))[-1].name
    with pytest.raises(CheckpointError, match=rf"run: has no trained model yet \(no model/ folder\); `heedful train "
                                              rf".*run --resume` continues it from {latest}$"):  # fmt: skip
        load_run(run, "cpu")
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(CheckpointError, match=r"no checkpoint either: it stopped before its first; train it again"):
        load_run(run, "cpu")


@pytest.mark.parametrize("verb", [["evaluate"], ["predict", "5 May 2020"], ["report"]])
def test_under_torchrun_only_train_runs(tiny_run, monkeypatch, capsys, verb):
    """`torchrun --nproc-per-node 2 -m heedful evaluate RUN` scored the split twice, both processes
    writing eval-test.json at once."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    before = sorted(tiny_run.rglob("*"))
    code, out, err = heedful(monkeypatch, capsys, verb[0], str(tiny_run), *verb[1:])
    assert code == 2 and out == "" and sorted(tiny_run.rglob("*")) == before
    assert err == f"heedful: error: heedful {verb[0]} runs in one process; torchrun is for `heedful train` " \
                  "(this is one of 2 processes)\n"  # fmt: skip


def test_evaluate_lists_its_files_in_the_runs_manifest_before_writing_them(tiny_run, tmp_path, monkeypatch):
    """So a kill between the two still leaves them to --overwrite (the trainer's order)."""
    import shutil

    import heedful.runs as runs

    run = shutil.copytree(tiny_run, tmp_path / "run")

    listed_before_written = []
    plain = runs.record_written

    def checking(run_dir, *paths):
        listed_before_written.extend(not Path(p).exists() for p in paths if Path(p).suffix != ".png")
        plain(run_dir, *paths)

    monkeypatch.setattr(runs, "record_written", checking)
    for stale in [*run.glob("eval-*.json"), *run.glob("hyps-*.txt")]:
        stale.unlink()
    runs.load_run(run, "cpu").evaluate("test")
    assert listed_before_written and all(listed_before_written)


def test_one_text_alone_is_refused_not_read_character_by_character(tiny_run):
    from heedful.errors import UserError
    from heedful.runs import load_ensemble, load_run

    run = load_run(tiny_run, "cpu")
    for call, name in [(run.predict, "predict"), (run.translate, "translate"), (run.explain, "explain"),
                       (load_ensemble([tiny_run, tiny_run], "cpu").predict, "predict")]:  # fmt: skip
        with pytest.raises(UserError, match=rf"^{name} takes a list of inputs, not one str: {name}\(\['5. März"):
            call("5. März 2021")
    with pytest.raises(UserError, match=r"^align takes a list of inputs, not one str"):
        list(run.align("5. März 2021", ["2021-03-05"]))
    assert len(run.predict(("5. März 2021",))) == len(run.translate(iter(["a", "b"]))) - 1 == 1  # any iterable


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda run: run.predict(None), r"^predict takes a list of inputs, not None$"),
        (lambda run: run.explain(5), r"^explain takes a list of inputs, not 5$"),
        # bytes were read as unknown characters and translated to 1900-01-01
        (
            lambda run: run.predict([b"5. Marz 2021"]),
            r"^translate: input 1 is b'5. Marz 2021' \(bytes\); expected a text",
        ),
        (lambda run: run.predict(["ok", 5]), r"^translate: input 2 is 5 \(int\); expected a text \(str\)$"),
        (lambda run: run.explain([None]), r"^explain: input 1 is None \(NoneType\)"),
        (lambda run: run.translate(["x"], beam=0), r"^beam=0: a whole number, at least 1$"),  # was: the config's beam
        (lambda run: run.translate(["x"], beam=2.5), r"^beam=2.5: a whole number"),
        (lambda run: run.translate(["x"], beam="5"), r"^beam='5': a whole number"),
        (lambda run: run.translate(["x"], batch_tokens=0), r"^batch_tokens=0: a whole number"),
        (lambda run: run.translate(["x"], beam=3, n_best=0), r"^n_best=0: a whole number, at least 1$"),
        (lambda run: list(run.align([5], ["x"])), r"^sources line 1: int 5; expected a text \(str\)$"),
        # a None target was taken for the end of the targets: "ends at pair 0, the other side goes on"
        (lambda run: list(run.align(["a b"], [None])), r"^targets line 1: NoneType None; expected a text \(str\)$"),
        (lambda run: list(run.align(["a b", "c"], ["x"])), r"^targets: ends at pair 1, the other side goes on"),
        (lambda run: list(run.align(["a"], ["x"], method="union")), r"^align: method='union' is not an AlignMethod"),
        (lambda run: run.evaluate(["test"]), r"^evaluate: split=\['test'\]: the name of one split"),
        (lambda run: run.report(path=run.run_dir / "config.yaml"), r"^path .*config.yaml: would overwrite .*own files"),
        (lambda run: run.show_attention(["x"], out_dir=run.run_dir / "config.yaml"), r"^out_dir .*: is a file"),
        (lambda run: run.generate(3), r": is a 'translate' run; generate needs an imagegen run$"),
    ],
)
def test_the_python_api_refuses_wrong_arguments_in_one_line(tiny_run, call, message):
    """Each of these raised a bare TypeError/AttributeError from deep inside, or did something else."""
    from heedful.errors import UserError
    from heedful.runs import load_run

    run = load_run(tiny_run, "cpu")
    config = (tiny_run / "config.yaml").read_bytes()
    with pytest.raises(UserError, match=message):
        call(run)
    assert (tiny_run / "config.yaml").read_bytes() == config  # report(path=config.yaml) wrote over it


def test_load_functions_refuse_wrong_arguments_in_one_line(tiny_run):
    from heedful.errors import ConfigError, UserError
    from heedful.runs import load_ensemble, load_run

    cases = [
        (lambda: load_run(None), r"^load_run: run_dir=None: a run directory \(str or Path\)$"),
        (lambda: load_run(tiny_run, "cpu", "decode.beam_size=1"), r"^overrides takes a list of 'key=value' strings"),
        (lambda: load_run(tiny_run, "cpu", [5]), r"^overrides: 5 is not a 'key=value' string$"),
        (lambda: load_run(tiny_run, "cpu", ["device=cuda"]), r"^--set device=cuda: give the device as --device"),
        # the run is the folder it is loaded from: run.cfg.run_dir pointing elsewhere would mislead
        (lambda: load_run(tiny_run, "cpu", ["run_dir=/x"]), r"^--set run_dir=/x: the run is the folder given"),
        (lambda: load_config(None), r"^load_config: path=None: a YAML config file or a run directory"),
        (lambda: load_config(ROOT / "configs/dates.yaml", "train.epochs=3"), r"^overrides takes a list"),
        (lambda: load_ensemble(str(tiny_run)), r"^load_ensemble takes a list of inputs, not one str"),
        (lambda: fit("configs/dates.yaml"), r"^fit takes a config, e.g. fit\(load_config\('configs/dates.yaml'\)\)"),
    ]
    for call, message in cases:
        with pytest.raises((UserError, ConfigError), match=message):
            call()


def test_run_methods_read_like_the_task_methods_they_are(tiny_run):
    import inspect

    from heedful.errors import UserError
    from heedful.runs import load_ensemble, load_run
    from heedful.tasks.translate import TranslateTask

    run = load_run(tiny_run, "cpu")
    assert run.translate.__doc__ == TranslateTask.translate.__doc__ and run.translate.__name__ == "translate"
    assert list(inspect.signature(run.translate).parameters)[:2] == ["inputs", "beam"]  # model is given
    assert repr(run) == f"Run({str(tiny_run)!r}, task='translate', model=TransformerEncoderDecoder)"
    result = run.evaluate("test")
    assert len(repr(result)) < 2000 and "outputs=" not in repr(result)  # 2,000 outputs were in it
    assert len(repr(run.explain(["5. März 2021"])[0])) < 1000  # the tensors were
    ensemble = load_ensemble([tiny_run, tiny_run], "cpu")
    assert ensemble.translate(["5. März 2021"])[0].output == run.translate(["5. März 2021"])[0].output
    with pytest.raises(UserError, match=r"^an ensemble of translate runs; generate needs an imagegen run$"):
        ensemble.generate(3)


def test_fit_leaves_torch_as_it_found_it(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = load_config(ROOT / "configs/dates.yaml", tiny_dates_overrides(tmp_path / "run", **{"train.epochs": 1}))
        cfg.train.num_threads, cfg.train.deterministic = 1, True
        fit(cfg)
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"5. M\xe4rz 2021\n", "<stdin> line 1: not valid UTF-8 (byte 0xe4)"),
        (b"5. Mai 2021\nab\x00c\n", "<stdin> line 2: a NUL byte (a binary file, or UTF-16 text?)"),
    ],
)
def test_stdin_that_is_not_text_is_one_line(tiny_run, monkeypatch, capsys, tmp_path, data, message):
    given = tmp_path / "stdin"
    given.write_bytes(data)
    with given.open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        code, _, err = heedful(monkeypatch, capsys, "translate", str(tiny_run))
    assert (code, err) == (2, f"heedful: error: {message}\n")


def test_a_source_longer_than_the_model_takes_is_said_to_be_cut(tiny_run, monkeypatch, capsys, tmp_path):
    from heedful.runs import load_run

    run = load_run(tiny_run, "cpu")
    limit = run.cfg.model.max_len
    long = "5. März 2021 " * limit  # more characters than the model's positions
    assert [t.source_cut for t in run.translate([long, "5. März 2021", ""])] == [len(long) - limit, 0, 0]
    given = tmp_path / "stdin"
    given.write_text(f"5. März 2021\n{long}\n\n{long}\n", encoding="utf-8")
    with given.open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        code, out, err = heedful(monkeypatch, capsys, "translate", str(tiny_run))
    assert code == 0 and out.count("\n") == 4  # still one translation per line
    assert err == f"heedful: note: sources longer than the model's {limit} tokens were cut to them before " \
                  "translating: lines 2, 4\n"  # fmt: skip


def test_a_blank_line_gets_an_empty_translation_and_no_score(tiny_run, monkeypatch, capsys, tmp_path):
    """A blank line is not decoded: its score was 0.0, the log-probability of a certain output."""
    from heedful.runs import load_run

    run = load_run(tiny_run, "cpu")
    out = run.translate(["5. März 2021", "   ", ""])
    assert [t.output for t in out][1:] == ["", ""]
    assert isinstance(out[0].score, float) and out[1].score is None and out[2].score is None
    assert run.predict([" "])[0].record() == {"input": " ", "output": "", "score": None}
    assert run.translate([" "], beam=2, n_best=2)[0].alternatives == [("", None)]
    given = tmp_path / "stdin"
    given.write_text("5. März 2021\n \n", encoding="utf-8")
    with given.open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        code, stdout, err = heedful(monkeypatch, capsys, "translate", str(tiny_run), "--beam", "2", "--n-best", "2")
    assert code == 0, err
    assert stdout.splitlines()[-1] == "1 |||  ||| "  # the score field empty, not 0.0000
    code, stdout, err = heedful(monkeypatch, capsys, "predict", str(tiny_run), " ", "--json")
    assert (code, json.loads(stdout)) == (0, {"input": " ", "output": "", "score": None}), err
    # Explaining it is refused before anything is printed (the other input's translation was shown first).
    for flags in (["--explain"], ["--show-attention", "--out-dir", str(tmp_path / "maps")]):
        code, stdout, err = heedful(monkeypatch, capsys, "predict", str(tiny_run), "5. März 2021", " ", *flags)
        assert (code, stdout, err) == (2, "", "heedful: error: input 2 is empty: nothing to attend to\n")
    assert not (tmp_path / "maps").exists() or not list((tmp_path / "maps").iterdir())


def test_ctrl_c_in_training_says_how_to_continue(tiny_run, monkeypatch, capsys):
    import heedful.train.trainer as trainer

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "fit", interrupted)
    code, _, err = heedful(monkeypatch, capsys, "train", str(tiny_run), "--resume")
    latest = sorted((tiny_run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))[-1].name
    assert code == 130
    assert err == f"heedful: interrupted; `heedful train {tiny_run} --resume` continues from {latest}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["optimize", "nowhere", "--bogus"],
            "No such option: --bogus (Possible options: --out, --rounds) (try 'heedful optimize --help')",
        ),
        (["optimize"], "Missing argument 'run_dir' (try 'heedful optimize --help')"),
        # click gives this one no context: the verb is found from the arguments
        (["report", "nowhere", "--out"], "Option '--out' requires an argument (try 'heedful report --help')"),
        (["align", "nowhere", "--threshold", "high"], "Invalid value for '--threshold'"),
        # typer suggested only from the verbs defined in cli.py: 'traslate' got 'evaluate'
        (
            ["traslate", "nowhere"],
            "No such command 'traslate'. Did you mean 'translate' or 'evaluate'? (try 'heedful --help')",
        ),
        (["trian", "configs/dates.yaml"], "Did you mean 'train'?"),
        (["transcibe"], "Did you mean 'transcribe' or 'translate'?"),
    ],
)
def test_usage_mistakes_are_one_line_naming_the_help_to_read(monkeypatch, capsys, args, message):
    code, out, err = heedful(monkeypatch, capsys, *args)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("heedful: error: ") and message in err, err


def test_help_and_version_still_exit_0(monkeypatch, capsys):
    code, out, err = heedful(monkeypatch, capsys, "optimize", "--help")
    assert code == 0 and "--method" in out and err == ""
    code, out, err = heedful(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith("heedful ") and err == ""


def test_predict_input_keeps_one_output_row_per_input_line(tiny_run, monkeypatch, capsys, tmp_path):
    """Blank lines were skipped, so the `row` column counted texts and row N was no longer line N."""
    import csv
    import json

    lines = tmp_path / "in.txt"
    lines.write_text("\n5. März 2021\n\n1. Mai 2020\n\n")  # lines 1, 3 and 5 blank
    out = tmp_path / "p.csv"
    code, said, err = heedful(monkeypatch, capsys, "predict", str(tiny_run), "--input", str(lines), "--output",
                              str(out), "--device", "cpu")  # fmt: skip
    assert code == 0, err
    rows = list(csv.reader(out.open()))
    assert [(r[0], r[1], bool(r[3])) for r in rows[1:]] == [  # r[3]: the score
        ("1", "", False), ("2", "5. März 2021", True), ("3", "", False), ("4", "1. Mai 2020", True), ("5", "", False),
    ]  # fmt: skip
    assert all(len(r) == len(rows[0]) for r in rows) and said.startswith("2 predictions written (and 3 empty")
    # On stdout too, one line per input line; a JSONL file's blank line is a row of its own as well.
    code, said, _ = heedful(monkeypatch, capsys, "predict", str(tiny_run), "--input", str(lines), "--device", "cpu")
    assert code == 0 and [bool(s) for s in said.split("\n")] == [False, True, False, True, False, False]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "5. März 2021", "id": 1}\n\n{"text": "1. Mai 2020", "id": 2}\n')
    args = ["predict", str(tiny_run), "--input", str(jsonl), "--text-column", "text", "--device", "cpu"]
    code, said, _ = heedful(monkeypatch, capsys, *args, "--json")
    assert code == 0
    assert [json.loads(s)["input"] for s in said.splitlines()] == ["5. März 2021", "", "1. Mai 2020"]
    code, _, err = heedful(monkeypatch, capsys, *args, "--output", str(out))
    assert code == 0, err
    assert [(r[0], r[1], r[-1]) for r in csv.reader(out.open())][1:] == [
        ("1", "5. März 2021", "1"), ("2", "", ""), ("3", "1. Mai 2020", "2"),
    ]  # fmt: skip


def test_predict_output_names_the_text_column_as_the_input_does(tiny_run, monkeypatch, capsys, tmp_path):
    """The text column was written as `text`, whatever the input called it."""
    import csv

    table, out = tmp_path / "in.csv", tmp_path / "p.csv"
    for column, header in (("review_text", "review_text"), ("score", "score (input)")):  # one of ours: marked
        table.write_text(f"id,{column}\n7,5. März 2021\n")
        args = ["predict", str(tiny_run), "--input", str(table), "--text-column", column, "--output", str(out)]
        code, _, err = heedful(monkeypatch, capsys, *args, "--device", "cpu")
        assert code == 0, err
        written = list(csv.reader(out.open()))
        assert written[0][:2] == ["row", header] and written[0][-1] == "id"
        assert (written[1][:2], written[1][-1]) == (["1", "5. März 2021"], "7")


@pytest.mark.parametrize(
    ("args", "read"),
    [
        (["evaluate", "nowhere"], "train.eval_batch_size, train.progress"),
        (["predict", "nowhere", "x"], "train.eval_batch_size, train.progress"),
        (["transcribe", "nowhere", "x.wav"], "train.eval_batch_size, train.progress"),
        (["translate", "nowhere"], "train.eval_batch_size, train.progress"),
        (["align", "nowhere", "--src", "a", "--tgt", "b"], "train.eval_batch_size, train.progress"),
        (["report", "nowhere"], "train.eval_batch_size, train.progress, train.monitor"),
    ],
)
def test_training_settings_that_a_trained_run_ignores_are_refused(monkeypatch, capsys, args, read):
    """evaluate --set train.batch_size=8 changed nothing and said nothing (exit 0)."""
    code, out, err = heedful(monkeypatch, capsys, *args, "--set", "decode.beam_size=1", "--set", "train.batch_size=8")
    assert (code, out) == (2, "")
    verb = args[0]
    assert err == (f"heedful: error: --set train.batch_size=8: {verb} does not read train.batch_size, which only "
                   f"shapes training; of train.*, --set here changes only {read}\n")  # fmt: skip


def test_training_settings_a_trained_run_reads_are_kept(tiny_run, monkeypatch, capsys):
    code, out, err = heedful(monkeypatch, capsys, "predict", str(tiny_run), "5. März 2021",
                             "--set", "train.eval_batch_size=2", "--set", "train.progress=false")  # fmt: skip
    assert code == 0 and out.startswith("5. März 2021"), (code, out, err)


def test_load_run_reads_the_runs_config_once(tiny_run, monkeypatch):
    """With overrides it read and parsed config.yaml twice: once for the checks, once for the config."""
    from heedful.runs import load_run

    real, reads = Path.read_text, []

    def counting(self, *args, **kwargs):
        if self.name == "config.yaml":
            reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    run = load_run(tiny_run, "cpu", ["decode.beam_size=1", "train.progress=false"])
    assert reads == [tiny_run / "config.yaml"]
    assert (run.cfg.decode.beam_size, run.cfg.train.progress, run.cfg.task) == (1, False, "translate")


@pytest.mark.parametrize(("rank", "local_rank", "said"), [("0", "0", ""), ("1", "1", None), ("2", "0", "rank 2: ")])
def test_under_torchrun_one_process_per_machine_says_an_error_every_rank_meets(monkeypatch, capsys, rank, local_rank,
                                                                                said):  # fmt: skip
    """A config error printed once per process: twice with `--nproc-per-node 2`. The first process of
    each machine says it (rank 2 on a second machine of two processes each), the others are silent."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    code, out, err = heedful(
        monkeypatch, capsys, "train", str(ROOT / "configs" / "dates.yaml"), "--set", "train.epoch=3"
    )
    assert code == 2 and out == ""
    if said is None:
        assert err == ""
    else:
        assert err.startswith(f"heedful: error: {said}") and "train.epoch" in err and err.count("\n") == 1
    code, out, err = heedful(monkeypatch, capsys, "train", str(ROOT / "configs" / "dates.yaml"), "--no-such-flag")
    assert code == 2
    assert err.startswith(f"heedful: error: {said}No such option") if said is not None else err == ""


def test_under_torchrun_an_error_of_one_process_is_said_by_it_with_its_rank(monkeypatch, capsys, tmp_path):
    from heedful.train.distributed import Dist
    from heedful.train.trainer import Trainer

    def lose_the_peer(self, *_):  # rank 1's training, whose collective call finds rank 0 gone
        raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:24483: Connection reset by peer")

    monkeypatch.setattr(Dist, "start", classmethod(lambda cls, device: cls(rank=1)))  # no process group here
    monkeypatch.setattr(Trainer, "_fit", lose_the_peer)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = heedful(
        monkeypatch, capsys, "train", str(ROOT / "configs" / "dates.yaml"), "--run-dir", str(tmp_path / "run")
    )
    assert code == 2 and out == ""
    assert err == (
        "heedful: error: rank 1: another process of this torchrun job stopped (rank 0?), so this one cannot go on "
        "(Read error [127.0.0.1]:24483: Connection reset by peer); no checkpoint was written yet: start the "
        "training again\n"
    )
