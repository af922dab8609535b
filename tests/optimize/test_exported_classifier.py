"""A classifier's ONNX export on its own: `heedful predict DIR`, `heedful evaluate DIR` and
`heedful serve DIR` answer as the run does, without the run beside it; what an export cannot do
(attention, ensembles, a GPU) is one line. Skipped where the export extra is absent."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from heedful.errors import UserError
from heedful.runs import load_run
from heedful.train import fit
from tests.conftest import run_cli
from tests.tasks.test_classify import config

pytest.importorskip("onnx", reason="ONNX export needs the export extra: pip install 'heedful[export]'")
pytest.importorskip("onnxruntime", reason="running an export needs the export extra: pip install 'heedful[export]'")

from heedful.optimize.export import OnnxTextClassifier, export_onnx, open_export

TEXTS = ["excellent phone, excellent battery", "the charger broke after a week", "screen case price"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The run (tiny, two epochs) and a copy of its ONNX export elsewhere, nothing pointing back."""
    tmp = tmp_path_factory.mktemp("exported-classifier")
    fit(config(tmp, **{"train.epochs": 2}))
    run = load_run(tmp / "run", "cpu")
    folder = tmp / "shipped"
    shutil.copytree(export_onnx(run, tmp / "onnx"), folder)
    return run, folder


def _same_predictions(got, expected) -> None:
    assert [p.output for p in got] == [p.output for p in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.input == e.input
        assert g.probabilities.keys() == e.probabilities.keys()
        assert all(abs(g.probabilities[k] - e.probabilities[k]) <= 1e-4 for k in e.probabilities)


def test_an_exported_classifier_predicts_what_its_run_does(shipped):
    run, folder = shipped
    exported = open_export(folder)
    assert isinstance(exported, OnnxTextClassifier) and exported.run_dir == folder
    _same_predictions(exported.predict(TEXTS), run.predict(TEXTS))
    with pytest.raises(UserError, match="keeps no attention to explain"):
        exported.explain(TEXTS)


@pytest.mark.slow
def test_heedful_predict_reads_an_export_folder(shipped, tmp_path):
    run, folder = shipped
    expected = run_cli("predict", str(run.run_dir), *TEXTS)
    got = run_cli("predict", str(folder), *TEXTS)
    assert got.returncode == 0, got.stderr
    assert got.stdout == expected.stdout  # probabilities printed to two places: equal
    rows = tmp_path / "rows.csv"
    rows.write_text("Reviews,id\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(TEXTS)))
    written = run_cli("predict", str(folder), "--input", str(rows), "--output", str(tmp_path / "out.csv"))
    assert written.returncode == 0, written.stderr
    table = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["prediction"] for r in table] == [p.output for p in run.predict(TEXTS)]
    assert [r["id"] for r in table] == ["0", "1", "2"]


@pytest.mark.slow
def test_heedful_evaluate_scores_an_export_as_its_run_and_writes_nothing(shipped):
    run, folder = shipped
    expected = run.evaluate("test")
    scored = open_export(folder).evaluate("test")
    assert scored.keys() == expected.keys() and "accuracy" in scored
    for key in expected:  # the graph's probabilities equal the model's to 1e-4: the same metrics
        assert scored[key] == pytest.approx(expected[key], abs=1e-3), key
    assert json.dumps(scored.baselines, sort_keys=True) == json.dumps(expected.baselines, sort_keys=True)  # NaNs too
    before = sorted(folder.rglob("*"))
    result = run_cli("evaluate", str(folder))
    assert result.returncode == 0, result.stderr
    assert f"test accuracy: {expected['accuracy']:.4f}" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "(an export, scored from its onnxruntime predictions: nothing written)"
    assert sorted(folder.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--explain"], "--explain: {folder} is an export, which keeps no attention; give the run it came from"),
        (["--show-attention"], "--show-attention: {folder} is an export, which keeps no attention;"),
        (["--ensemble", "{run}"], "--ensemble needs run directories (an export is one model)"),
        (["--device", "cuda"], "device='cuda' (--device): an export computes on the CPU (onnxruntime or CTranslate2)"),
    ],
)
def test_what_an_export_cannot_predict_is_one_line(shipped, args, message):
    run, folder = shipped
    result = run_cli("predict", str(folder), TEXTS[0], *(a.format(run=run.run_dir) for a in args))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heedful: error: " + message.format(folder=folder)), result.stderr


@pytest.mark.slow
def test_translate_refuses_a_classifier_export(shipped):
    _, folder = shipped
    result = run_cli("translate", str(folder), stdin="hello\n")
    assert result.returncode == 2
    assert "is an export of a 'classify' run; translate needs a translate run" in result.stderr


def test_heedful_serve_answers_from_an_export(shipped):
    pytest.importorskip("fastapi", reason="heedful[serve] is not installed")
    pytest.importorskip("httpx", reason="the serve tests need httpx (heedful[test])")
    from fastapi.testclient import TestClient

    from heedful.serve import create_app
    from heedful.serve.app import open_served

    run, folder = shipped
    with pytest.raises(UserError, match="an export computes on the CPU"):
        open_served(folder, "cuda")
    exported = open_served(folder)
    assert isinstance(exported, OnnxTextClassifier)
    with TestClient(create_app([exported])) as client:
        name = f"{run.cfg.name}-onnx"  # an export is named after its run and format
        assert client.get("/v1/models").json()["models"] == [
            {"name": name, "task": "classify", "inputs": "text", "predict": f"/v1/models/{name}/predict",
             "runtime": "onnxruntime", "attention": False}
        ]  # fmt: skip
        answer = client.post(f"/v1/models/{name}/predict", json={"texts": TEXTS})
        assert answer.status_code == 200, answer.text
        got = answer.json()["predictions"]
        expected = run.predict(TEXTS)
        assert [p["output"] for p in got] == [p.output for p in expected]
        assert all(
            abs(p["probabilities"][k] - e.probabilities[k]) <= 1e-4
            for p, e in zip(got, expected, strict=True)
            for k in e.probabilities
        )
        refused = client.post(f"/v1/models/{name}/predict", json={"texts": TEXTS, "attention": True})
        assert refused.status_code == 422
        assert "keeps no attention to explain" in refused.json()["detail"]
