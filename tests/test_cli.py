"""The command line, run as a user runs it: a subprocess, its output and its exit code."""

import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_dates_overrides
from tests.explain.test_plots import _covered

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "configs/missing.yaml"], "configs/missing.yaml: config file not found"),
        (["train", "configs/dates.yaml", "--set", "model.d_modl=64"], "unknown config key 'model.d_modl'"),
        (["train", "configs/dates.yaml", "--set", "train.lr=fast"], "config key 'train.lr'"),
        (["train", "configs/dates.yaml", "--set", "oops"], "expected key=value"),
        (["evaluate", "runs/does-not-exist"], "runs/does-not-exist: not a run directory"),
        (["predict", "runs/does-not-exist", "5 May 2020"], "not a run directory"),
    ],
)
@pytest.mark.slow
def test_user_mistakes_give_one_line_and_exit_code_2(args, expected):
    assert expected in one_line_error(run_cli(*args))


@pytest.mark.slow
def test_unknown_option_is_a_usage_error_with_exit_code_2():
    result = run_cli("train", "configs/dates.yaml", "--no-such-flag")
    assert result.returncode == 2 and "No such option" in result.stderr


def listed_commands(help_text: str) -> list[str]:
    """The command names in the help's Commands box (one per row that starts a command; a
    description's continuation rows start with spaces). The app's own help sentence names
    train, evaluate and predict too, so searching the whole text would prove nothing."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if "─ Commands ─" in line)
    names = []
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            break
        if match := re.match(r"│ (\S+) ", line):
            names.append(match.group(1))
    return names


@pytest.mark.slow
def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert {"train", "evaluate", "predict"} <= set(listed_commands(result.stdout))


def command_descriptions(help_text: str) -> tuple[dict[str, list[str]], int]:
    """Each command's description rows in the help's Commands box, as printed, and the width
    the box gives a description."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if "─ Commands ─" in line)
    rows: dict[str, list[str]] = {}
    name, room = "", 0
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            break
        body = line[1:-1]  # between the box's borders
        if match := re.match(r" (\S+) +", body):
            name, column = match.group(1), match.end()
            room = len(body) - column - 1  # a space before the right border
        rows.setdefault(name, []).append(body[column:].rstrip())
    return rows, room


@pytest.mark.slow
def test_the_commands_box_wraps_each_summary_as_one_paragraph():
    """A docstring's own line breaks must not reach the box: a row may end early only where its
    next word would not fit (typer's rich mode kept them, which gave ragged half-lines)."""
    result = run_cli("--help")
    assert result.returncode == 0
    descriptions, room = command_descriptions(result.stdout)
    assert {"train", "evaluate", "translate", "optimize"} <= set(descriptions) and room > 40
    for name, rows in descriptions.items():
        for row, following in itertools.pairwise(rows):
            assert len(row) + 1 + len(following.split()[0]) > room, (name, row)
    assert " ".join(descriptions["translate"]).startswith("Translate stdin to stdout, one line for each line")


def test_flags_show_no_type_in_any_help():
    """A flag takes no value, so its help row shows none (typer 0.29 printed ``--overwrite <bool>``
    and ``--help <bool>``); options that take one keep their type."""
    from typer.testing import CliRunner

    from heedful.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}, prog_name="heedful")
    names = re.findall(r"^│ (\w[\w-]*) ", top.stdout.split("Commands")[1], flags=re.MULTILINE)
    assert {"train", "predict", "translate", "optimize", "export", "serve"} <= set(names)
    for args in [[], *([name] for name in names)]:
        shown = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"}, prog_name="heedful")
        assert shown.exit_code == 0 and "--help" in shown.stdout, args
        assert "<bool>" not in shown.stdout, (args, [r for r in shown.stdout.splitlines() if "<bool>" in r])
    assert re.search(r"--beam +<int range>", runner.invoke(app, ["translate", "--help"], env={"COLUMNS": "200"}).stdout)


@pytest.mark.slow  # about a second: out of the fast subset
def test_every_help_text_reaches_help_whole():
    """Each option's help, as written, is in its command's --help: typer's rich mode read
    ``'heedful[export]'`` in translate's --engine help as a markup tag and printed ``'heedful'``."""
    import typer
    from rich.markup import render
    from typer.testing import CliRunner

    from heedful.cli import app

    runner = CliRunner()
    group = typer.main.get_command(app)
    context = group.make_context("heedful", ["--help"], resilient_parsing=True)
    shown = {}
    for width, name in itertools.product(["200", "80"], group.list_commands(context)):  # 80: no word cut with …
        text = runner.invoke(app, [name, "--help"], env={"COLUMNS": width}, prog_name="heedful").stdout
        text = re.sub(r"\[[\d.<=-]*x[\d.<=>-]*\]", " ", text)  # a range (e.g. [x>=1]) wraps beside the help
        shown[name] = " ".join(text.replace("│", " ").split())  # the boxes' borders and wrapping removed
        for param in group.get_command(context, name).params:
            if getattr(param, "help", None):
                assert " ".join(render(param.help).plain.split()) in shown[name], (width, name, param.name)
            if param.param_type_name == "option":  # its name whole too: --max-audio-seconds was cut to …-secon…
                assert set(param.opts + param.secondary_opts) <= set(shown[name].split()), (width, name, param.opts)
            if getattr(param, "is_bool_flag", False) and param.default is False:  # --no-X would say the default
                assert not param.secondary_opts and f"--no-{param.name.replace('_', '-')}" not in shown[name]
    assert "Needs pip install 'heedful[export]'." in shown["translate"]


@pytest.mark.slow
def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and re.fullmatch(r"heedful \d+\.\d+\.\d+\n", result.stdout), result.stdout


@pytest.mark.slow
def test_train_evaluate_predict_end_to_end(tmp_path):
    run = tmp_path / "run"
    args = [a for o in tiny_dates_overrides(run, **{"train.epochs": 1}) for a in ("--set", o)]
    trained = run_cli("train", "configs/dates.yaml", *args)
    assert trained.returncode == 0, trained.stderr
    assert "run directory:" in trained.stdout and (run / "model" / "model.safetensors").is_file()

    again = run_cli("train", "configs/dates.yaml", *args)  # would overwrite: refused
    assert "--resume" in one_line_error(again)

    evaluated = run_cli("evaluate", str(run))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test exact_match:" in evaluated.stdout
    assert "exact_match" in json.loads((run / "eval-test.json").read_text())
    beam = run_cli("evaluate", str(run), "--set", "decode.beam_size=3")  # decoding changed, not the model
    assert beam.returncode == 0, beam.stderr
    assert "test exact_match:" in beam.stdout
    assert "decode.beam_size" in one_line_error(run_cli("evaluate", str(run), "--set", "decode.beam_size=0"))

    predicted = run_cli("predict", str(run), "5. März 2021", "2021年3月5日", "--show-attention", "--json")
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]  # --json: nothing else on stdout
    assert [line["input"] for line in lines] == ["5. März 2021", "2021年3月5日"]
    heatmaps = [
        line.split(": ", 1)[1] for line in predicted.stderr.splitlines() if line.startswith("attention heatmap")
    ]
    assert len(heatmaps) == 2 and all(Path(p).is_file() for p in heatmaps)
    if _covered("年月日"):  # no font or warning noise
        assert [line for line in predicted.stderr.splitlines() if not line.startswith("attention heatmap")] == []
    else:  # no CJK font on this machine: the documented fallback, one warning naming a font to install
        assert predicted.stderr.count("heedful: warning:") == 1, predicted.stderr
        assert "no installed font draws '年'" in predicted.stderr and "apt-get install" in predicted.stderr


def test_plain_attention_weights_show_every_piece_even_a_lone_word_start_mark():
    from heedful.cli import _plain_weights

    assert _plain_weights(["<bos>", "▁love", "▁", "b", "ut"], [0.1, 0.4, 0.2, 0.2, 0.1]) == (
        "<bos>:0.10  love:0.40  ▁:0.20  b:0.20  ut:0.10"
    )
