"""The trained run every optimize test starts from, trained once for the package."""

from __future__ import annotations

import pytest

from heedful.runs import load_config
from heedful.train.trainer import fit
from tests.conftest import ROOT, tiny_dates_overrides


@pytest.fixture(scope="package")
def run_dir(tmp_path_factory):
    """A tiny dates Transformer (two epochs of four steps), with both its checkpoints kept."""
    directory = tmp_path_factory.mktemp("optimize") / "dates"
    overrides = tiny_dates_overrides(directory, **{"train.epochs": 2, "train.keep_checkpoints": 2})
    fit(load_config(ROOT / "configs" / "dates.yaml", overrides))
    return directory
