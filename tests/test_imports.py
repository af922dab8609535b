"""What imports what: the dates path on a bare install, and the layers of docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_dates_overrides

SRC = ROOT / "src" / "heedful"

# Every optional extra's packages (pyproject.toml: speech, classify, pretrained, bench, serve, test).
BLOCKED = ["soundfile", "soxr", "jiwer", "sklearn", "scipy", "tokenizers", "transformers", "librosa", "fastapi",
           "uvicorn", "multipart"]  # fmt: skip

BLOCKER = '''
import importlib.machinery
import sys

BLOCKED = set({blocked!r})


class Blocker:
    """Makes the optional extras' packages unimportable, as on an install without them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:  # found, but it fails to load like a missing module
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, Blocker())
'''


def run_without(tmp_path: Path, blocked: list[str], *args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root with ``blocked`` packages unimportable."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked))
    paths = [str(site), str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, encoding="utf-8", cwd=ROOT, env=env, timeout=300
    )


def test_the_blocker_blocks(tmp_path):
    result = run_without(tmp_path, BLOCKED, "-c", "import soundfile")
    assert result.returncode == 1 and "ModuleNotFoundError: No module named 'soundfile'" in result.stderr


@pytest.mark.slow
def test_dates_train_and_predict_without_any_extra(tmp_path):
    run = tmp_path / "run"
    imports = (
        "import sys, heedful, heedful.runs, heedful.cli, heedful.tasks.translate, heedful.train; "
        f"loaded = sorted(m for m in {BLOCKED!r} if m in sys.modules); print('loaded', loaded)"
    )
    imported = run_without(tmp_path, BLOCKED, "-c", imports)
    assert imported.returncode == 0, imported.stderr
    assert "loaded []" in imported.stdout

    helped = run_without(tmp_path, BLOCKED, "-m", "heedful.cli", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "transcribe" in helped.stdout  # the speech task's verb is listed without its extra

    sets = [a for o in tiny_dates_overrides(run, **{"train.epochs": 1}) for a in ("--set", o)]
    trained = run_without(tmp_path, BLOCKED, "-m", "heedful.cli", "train", "configs/dates.yaml", *sets)
    assert trained.returncode == 0, trained.stderr
    assert (run / "model" / "model.safetensors").is_file()

    predicted = run_without(tmp_path, BLOCKED, "-m", "heedful.cli", "predict", str(run), "5. März 2021", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert '"input": "5. März 2021"' in predicted.stdout

    evaluated = run_without(tmp_path, BLOCKED, "-m", "heedful.cli", "evaluate", str(run))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test exact_match:" in evaluated.stdout


@pytest.mark.slow
def test_importing_the_api_and_the_cli_imports_no_task(tmp_path):
    code = (
        "import sys, heedful, heedful.runs, heedful.cli, heedful.train, heedful.tasks\n"
        "from heedful.tasks import get_task\n"
        "def tasks(): return sorted(m for m in sys.modules if m.startswith('heedful.tasks.') and "
        "m.split('.')[2] not in ('base', 'registry', 'verbs'))\n"
        "print(tasks())\n"
        "get_task('translate')\n"
        "print(tasks())\n"
    )
    result = run_without(tmp_path, [], "-c", code)
    assert result.returncode == 0, result.stderr
    modules = ("alignment_supervision", "translate", "translate_config", "translate_data")
    translate = [f"heedful.tasks.{m}" for m in modules]
    assert result.stdout.splitlines() == ["[]", str(translate)]


@pytest.mark.slow
def test_a_task_without_its_extra_is_one_line_naming_the_extra(tmp_path):
    result = run_without(tmp_path, ["soundfile"], "-m", "heedful.cli", "train", "configs/speech_digits.yaml")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "heedful: error: the speech task needs soundfile: pip install 'heedful[speech]'"

    result = run_without(tmp_path, ["sklearn"], "-m", "heedful.cli", "train", "configs/reviews/amazon.yaml")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "heedful: error: the classify task needs sklearn: pip install 'heedful[classify]'"


@pytest.mark.slow
def test_serve_without_its_extra_is_one_line_naming_the_extra(tmp_path):
    result = run_without(tmp_path, ["fastapi", "uvicorn"], "-m", "heedful.cli", "serve", "runs/anything")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "heedful: error: heedful serve needs uvicorn: pip install 'heedful[serve]'"


@pytest.mark.slow
def test_a_missing_extra_at_the_point_of_use_is_one_line(tmp_path):
    code = (
        "from heedful.errors import UserError\n"
        "from heedful.data.audio import read_audio\n"
        "try:\n    read_audio('configs/dates.yaml', 8000)\n"
        "except UserError as exc:\n    print(exc)\n"
    )
    result = run_without(tmp_path, ["soundfile"], "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reading audio needs soundfile: pip install 'heedful[speech]'"


# --------------------------------------------------------------------------------------------
# Layers: docs/ARCHITECTURE.md's table, and every import under src/heedful checked against it


def read_layers() -> tuple[dict[str, int], dict[str, str]]:
    """From ARCHITECTURE.md's table: package -> layer, and package -> its 'may be imported by' cell."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+?) \|$", text, flags=re.MULTILINE)
    assert rows, "docs/ARCHITECTURE.md: no layer table"
    return {pkg: int(layer) for layer, pkg, _ in rows}, {pkg: cell for _, pkg, cell in rows}


def stated_importers(cell: str, package: str, layers: dict[str, int]) -> set[str]:
    if names := re.findall(r"`(\w+)`", cell.split("(")[0]):
        return set(names)
    if cell == "—":
        return set()
    if match := re.fullmatch(r"every package of layers (\d+)–(\d+)", cell):
        low, high = map(int, match.groups())
        return {p for p, n in layers.items() if low <= n <= high}
    if cell.startswith("every other package"):
        return set(layers) - {package}
    raise AssertionError(f"docs/ARCHITECTURE.md: cannot read the cell {cell!r} of {package}")


def package_of(path: Path) -> str:
    """``src/heedful/tasks/speech.py`` -> ``tasks``; ``src/heedful/cli.py`` -> ``cli``; the root
    ``__init__.py`` re-exports ``errors`` and counts as it; ``__main__.py`` (``python -m heedful``)
    only calls the command line and counts as ``cli``."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return {("__init__",): "errors", ("__main__",): "cli"}.get(parts, parts[0])


def heedful_imports(path: Path) -> list[tuple[int, str]]:
    """(line, package) of every ``heedful`` import in a file, also inside functions; not those
    under ``if TYPE_CHECKING:`` (type hints only, never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                base = ".".join(("heedful", *path.relative_to(SRC).parts[: -node.level]))
                names = [f"{base}.{node.module}" if node.module else base]
            elif node.module == "heedful":  # from heedful import tasks
                names = [f"heedful.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "heedful":
                continue
            target = parts[1] if len(parts) > 1 else "errors"
            if len(parts) > 1 and not ((SRC / target).is_dir() or (SRC / f"{target}.py").is_file()):
                target = "errors"  # from heedful import UserError: the root re-exports errors
            found.append((node.lineno, target))
    return found


def upward_imports(layers: dict[str, int]) -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        own = package_of(path)
        if own not in layers:
            problems.append(f"{path.relative_to(ROOT)}: package {own!r} has no row in ARCHITECTURE.md's layer table")
            continue
        for line, target in heedful_imports(path):
            if target not in layers:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {target!r}, which has no row")
            elif target != own and layers[target] >= layers[own]:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {own} (layer {layers[own]}) imports "
                    f"{target} (layer {layers[target]})"
                )
    return problems


def test_the_layer_table_says_who_may_import_each_package():
    layers, cells = read_layers()
    for package, layer in layers.items():
        above = {p for p, n in layers.items() if n > layer}
        assert stated_importers(cells[package], package, layers) == above, package


def test_no_module_imports_from_a_layer_above_it():
    layers, _ = read_layers()
    assert upward_imports(layers) == []


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    layers, _ = read_layers()
    fake = tmp_path / "heedful"
    (fake / "attention").mkdir(parents=True)
    (fake / "tasks").mkdir()
    (fake / "attention" / "bad.py").write_text("def f():\n    from heedful.tasks.base import Task\n")
    (fake / "attention" / "fine.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from heedful.tasks.base import Task\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert upward_imports(layers) == ["heedful/attention/bad.py:2: attention (layer 2) imports tasks (layer 6)"]
