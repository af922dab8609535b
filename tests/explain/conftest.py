"""A tiny trained dates run, shared by the explain tests that need a real run directory."""

import pytest

from heedful.runs import load_config
from heedful.train.trainer import fit
from tests.conftest import ROOT, tiny_dates_overrides


@pytest.fixture(scope="session")
def dates_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("explain") / "dates"
    fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(run_dir, **{"train.epochs": 1})))
    return run_dir
