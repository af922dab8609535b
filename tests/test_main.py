"""``python -m heedful`` is the ``heedful`` script: the same function, the same output."""

import ast
import os
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT


def run(argv_prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [*argv_prefix, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False
    )


# What the installed ``heedful`` script runs: pip writes exactly this wrapper for [project.scripts].
SCRIPT = "import sys; from heedful.cli import main; sys.argv[0] = 'heedful'; sys.exit(main())"


def test_main_module_calls_the_scripts_function():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["heedful"].partition(":")
    tree = ast.parse((ROOT / "src" / "heedful" / "__main__.py").read_text())
    imports = [(n.module, alias.name) for n in tree.body if isinstance(n, ast.ImportFrom) for alias in n.names]
    assert imports == [(module, function)]


@pytest.mark.slow
def test_python_m_heedful_behaves_as_the_script():
    # A usage error: the usage line names the program, and the exit code is 2.
    args = ["train", "configs/dates.yaml", "--no-such-flag"]
    as_module = run([sys.executable, "-m", "heedful"], *args)
    as_script = run([sys.executable, "-c", SCRIPT], *args)
    assert (as_module.returncode, as_module.stdout, as_module.stderr) == (
        as_script.returncode,
        as_script.stdout,
        as_script.stderr,
    )
    assert as_module.returncode == 2 and "(try 'heedful train --help')" in as_module.stderr
