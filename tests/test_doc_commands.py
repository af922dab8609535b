"""Every ``heedful`` command line shown in README.md and docs/ names a verb and options that exist.

The shell lines of the docs' code blocks and their inline ``heedful …`` code spans are split as a
shell would, and each option is looked up among its verb's own (``train`` with every task's flags):
a renamed or removed option fails here, not in a reader's terminal. A line the docs show failing
(followed by its ``heedful: error:``) is left out.
"""

from __future__ import annotations

import itertools
import re
import shlex

import click
import pytest
import typer

from heedful.cli import app
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("", "bash", "sh", "console")
# A command at the start of a line: after environment settings, `time`, a path or `python -m`/`torchrun … -m`.
COMMAND = re.compile(
    r"^(?:\w+=\S*\s+)*(?:(?:/usr/bin/)?time(?:\s+-\S+)*\s+)?(?:\S*/)?"
    r"(?:heedful|python3?\s+-m\s+heedful|torchrun\s.*?-m\s+heedful)\s+(.*)"
)


def shell_lines(text: str) -> list[str]:
    """The lines of the shell code blocks (continuations joined) and the inline ``heedful …`` spans,
    less those the docs show failing."""
    lines: list[str] = []
    block: list[str] | None = None
    lang = ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            if block is None:
                block, lang = [], raw[3:].strip()
                continue
            if lang in SHELL:
                joined = "\n".join(block).replace("\\\n", " ").splitlines()
                lines += [line for i, line in enumerate(joined)
                          if not (i + 1 < len(joined) and joined[i + 1].startswith("heedful: error:"))]  # fmt: skip
            block = None
        elif block is not None:
            block.append(raw)
    lines += re.findall(r"`(heedful [^`]+)`", text)
    return lines


def commands(line: str) -> list[list[str]]:
    """The words after ``heedful`` of each command on a shell line (pipes and && split it)."""
    found = []
    for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line.strip().removeprefix("$ ")):
        match = COMMAND.match(part)
        if match is None:
            continue
        try:
            words = shlex.split(match.group(1), comments=True)
        except ValueError:  # an unfinished quote: prose, not a command
            continue
        if words:
            found.append(words)
    return found


def test_the_docs_show_commands():
    shown = [c for doc in DOCS for line in shell_lines(doc.read_text(encoding="utf-8")) for c in commands(line)]
    assert len(shown) > 150
    assert ["train", "configs/dates.yaml", "--set", "train.epochs=3"] in shown


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_docs_names_options_its_verb_has(doc):
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    wrong = []
    for line in shell_lines(doc.read_text(encoding="utf-8")):
        for words in commands(line):
            verb = words[0]
            if verb.startswith("-"):  # heedful --help, --version
                assert verb in ("--help", "--version"), line
                continue
            if verb.isupper():  # a placeholder: heedful COMMAND --help
                continue
            if "/" in verb:  # prose naming alternatives: `heedful evaluate/translate/report`
                wrong += [f"{v}: no such verb: {line}" for v in verb.split("/") if group.get_command(ctx, v) is None]
                continue
            command = group.get_command(ctx, verb)
            if command is None:
                wrong.append(f"{verb}: no such verb: {line}")
                continue
            options = {o for p in command.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
            for word in words[1:]:
                if word.startswith("-") and not re.fullmatch(r"-\d[\d.e-]*", word):  # -1 is a value
                    flag = word.split("=")[0]
                    if flag not in options and flag != "-":
                        wrong.append(f"{verb} {flag}: not an option of {verb}: {line}")
    assert wrong == []


def test_every_train_line_in_the_docs_sets_keys_its_config_has():
    """`heedful train configs/X.yaml --set key=value` as the docs show it reads as a valid config."""
    from heedful.runs import load_config

    checked, wrong = 0, []
    for doc in DOCS:
        for line in shell_lines(doc.read_text(encoding="utf-8")):
            for words in commands(line):
                if words[0] != "train" or len(words) < 2 or not words[1].startswith("configs/"):
                    continue
                sets = [value for flag, value in itertools.pairwise(words) if flag in ("--set", "-s")]
                if any("…" in value for value in sets):  # a placeholder
                    continue
                checked += 1
                try:
                    load_config(ROOT / words[1], sets)
                except Exception as exc:  # every failure is reported, with its line
                    wrong.append(f"{doc.name}: {line.strip()}: {exc}")
    assert checked > 30 and wrong == []
