"""`heedful report RUN`: one self-contained HTML file holding the figures and tables."""

import base64
import html
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from heedful.runs import load_run

CHROMIUM = Path("/usr/bin/chromium")
SAMPLES = ["5. März 2021", "2021年3月5日"]


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.captions: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_caption = tag == "caption"

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data)
            self._in_caption = False


@pytest.fixture(scope="module")
def report(dates_run):
    run = load_run(dates_run, device="cpu")
    run.evaluate("test")
    return run.report(inputs=SAMPLES)


def test_the_report_is_self_contained_and_holds_the_figures_and_tables(report, dates_run):
    assert report == dates_run / "report.html"
    text = report.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    tags = [tag for tag, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags  # nothing to fetch or run
    for _, attrs in page.tags:
        for key in ("src", "href", "srcset", "data"):
            assert not attrs.get(key, "").lower().startswith(("http:", "https:", "//", "file:")), attrs
    assert "url(" not in text  # no style sheet pulls anything in either
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    # training curves, then per sample its cross-attention, its encoder rollout, its decision path
    assert len(images) == 1 + 3 * len(SAMPLES)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(attrs.get("alt") for tag, attrs in page.tags if tag == "img")
    assert "per epoch" in page.captions and any(c.startswith("test") for c in page.captions)
    for sample in SAMPLES:
        assert sample in text
    assert text.count("<figcaption>decision path: per decoder layer") == len(SAMPLES)
    assert "exact_match" in text and "configs/dates.yaml" not in text and "task: translate" in text
    assert "<th>val exact_match</th>" in text  # the per-epoch table holds the metric the run is judged by
    assert "(val_exact_match judges the run)" in text


@pytest.mark.slow  # about a second: out of the fast subset
def test_a_report_draws_its_figures_outside_the_run(dates_run, tmp_path, monkeypatch):
    """A run folder may be read-only (someone else's, a mounted share): the report's scratch
    images go to a temporary folder of their own, never into the run."""
    from heedful.explain import plots, report

    drawn: list[Path] = []

    def recording(draw):
        def wrapper(*args, **kwargs):
            drawn.append(Path(next(a for a in args if isinstance(a, Path))))
            return draw(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(report, "plot_history", recording(plots.plot_history))
    monkeypatch.setattr(plots, "attention_heatmap", recording(plots.attention_heatmap))
    run = load_run(dates_run, device="cpu")
    monkeypatch.setattr(run.task, "plot_explanation", recording(run.task.plot_explanation))
    before = sorted(dates_run.rglob("*"))
    run.report(tmp_path / "elsewhere.html", inputs=SAMPLES[:1])
    assert len(drawn) >= 4  # the curves, then the sample's attention, rollout and decision path
    assert not [p for p in drawn if dates_run.resolve() in p.resolve().parents], drawn
    assert sorted(dates_run.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian: apt-get install chromium)")
def test_the_report_renders_offline_in_headless_chromium(report, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    copy = tmp_path / "moved" / "report.html"  # opened from anywhere: nothing is relative to the run
    copy.parent.mkdir()
    shutil.copy(report, copy)
    requested = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        page = browser.new_page()
        page.on("request", lambda r: requested.append(r.url))
        page.goto(copy.as_uri())
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.rows.length)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(widths) == 1 + 3 * len(SAMPLES) and all(w > 100 for w in widths)
    assert len(tables) >= 2 and all(rows >= 2 for rows in tables)
    assert [u for u in requested if not u.startswith(("file:", "data:"))] == []


def test_the_decision_path_reads_the_last_layer_as_the_model_does(dates_run):
    from types import SimpleNamespace

    from heedful.explain.report import decision_path

    run = load_run(dates_run, device="cpu")
    ids = [5, 9, 6, 12, 7]  # any output, not only the model's own: each step's chosen token differs
    explanation = SimpleNamespace(prediction=SimpleNamespace(output_ids=ids), query_tokens=[*"abcde", "<eos>"])
    probs, rows, columns, _ = decision_path(run, explanation, SAMPLES[0])
    assert rows == ["layer 0"] and columns == explanation.query_tokens  # the tiny run has one decoder layer
    # the last layer's read-out is the model's own distribution at each step
    src = torch.tensor([run.task.src_tok.encode(SAMPLES[0])])
    with torch.no_grad():
        own = run.model(src, torch.tensor([[run.task.tgt_tok.bos_id, *ids]]))[0].softmax(-1)  # (T + 1, V)
    chosen = torch.tensor([*ids, run.task.tgt_tok.eos_id])
    torch.testing.assert_close(probs[-1], own[torch.arange(len(chosen)), chosen])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("history.json", "{", r"history.json line 1: not valid JSON \(Expecting"),
        ("eval-test.json", "[1, 2]", r"eval-test.json: not a JSON record heedful wrote \(a list, not an object\)"),
        ("eval-val.json", b"\xff{}", r"eval-val.json: not UTF-8 text"),
        # Hand-edited: valid JSON, not what heedful writes.
        ("history.json", '{"epochs": 5}', r'history.json: "epochs" is an int, not a list of per-epoch records; remove'),
        ("history.json", '{"epochs": [5]}', r"history.json: epoch 1 is an int, not a record of its metrics; remove"),
        ("history.json", '{"epochs": [{"epoch": 1, "val_loss": "low"}]}',
         r'history.json: epoch 1: "val_loss" is a string, not a number; remove it or write it again'),
        ("eval-test.json", '{"exact_match": 0.5, "baselines": [1]}',
         r'eval-test.json: "baselines" is a list, not the metrics of each baseline by name; remove'),
        ("eval-test.json", '{"exact_match": 0.5, "baselines": {"majority": 1}}',
         r'eval-test.json: baseline "majority" is an int, not a record of its metrics; remove'),
        ("eval-test.json", '{"exact_match": 0.5, "baselines": {"majority": {"exact_match": "high"}}}',
         r'eval-test.json: baseline "majority": "exact_match" is a string, not a number; remove'),
    ],
)  # fmt: skip
def test_a_damaged_record_in_the_run_is_one_line(dates_run, tmp_path, name, content, message):
    from heedful.errors import UserError

    copy = tmp_path / "run"
    shutil.copytree(dates_run, copy)
    target = copy / name
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = (copy / "report.html").read_bytes() if (copy / "report.html").exists() else None
    with pytest.raises(UserError, match=message):
        load_run(copy, device="cpu").report(inputs=SAMPLES[:1])
    assert ((copy / "report.html").read_bytes() if (copy / "report.html").exists() else None) == before


def test_the_command_a_report_suggests_is_quoted_for_the_shell(tmp_path):
    import html
    import re
    import shlex

    from heedful.explain.report import _metrics

    run_dir = tmp_path / "runs" / "exp #2"
    run_dir.mkdir(parents=True)
    (command,) = re.findall(r"<code>(.*?)</code>", _metrics(run_dir, task=None))
    assert shlex.split(html.unescape(command)) == ["heedful", "evaluate", str(run_dir)]


def test_an_epoch_without_a_metric_leaves_a_gap_in_its_curve(dates_run, tmp_path):
    """A history.json whose epochs do not all hold the same metrics (edited, or another version's)."""
    copy = tmp_path / "run"
    shutil.copytree(dates_run, copy)
    history = json.loads((copy / "history.json").read_text())
    first = history["epochs"][0]
    history["epochs"].append({k: v for k, v in first.items() if k != "val_loss"} | {"epoch": 2})
    (copy / "history.json").write_text(json.dumps(history))
    page = load_run(copy, device="cpu").report(tmp_path / "report.html", inputs=SAMPLES[:1]).read_text()
    assert "<figcaption>per epoch, train and validation" in page and "<td>nan</td>" in page


def test_an_ensembles_scores_are_named_as_the_ensemble_of_its_runs(dates_run, tmp_path):
    import json

    run_dir = shutil.copytree(dates_run, tmp_path / "run")
    members = [str(run_dir), "runs/other"]
    (run_dir / "eval-test-ensemble.json").write_text(json.dumps({"members": members, "exact_match": 0.5}))
    text = load_run(run_dir, device="cpu").report(tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"<caption>test-ensemble (the ensemble of {run_dir}, runs/other)</caption>" in text
    assert "<td>the ensemble</td><td>0.5000</td>" in text  # not "this model"


def test_a_score_of_an_older_model_is_marked_after_the_run_trained_on(dates_run, tmp_path):
    """eval-test.json carried no step, so after a resume the report showed it as the new model's."""
    import json

    run_dir = shutil.copytree(dates_run, tmp_path / "run")
    load_run(run_dir, device="cpu").evaluate("test")
    history = json.loads((run_dir / "history.json").read_text())
    step = history["epochs"][history["best_epoch"] - 1]["step"]
    assert json.loads((run_dir / "eval-test.json").read_text())["model"] == {"step": step}
    text = load_run(run_dir, device="cpu").report(tmp_path / "now.html").read_text(encoding="utf-8")
    assert "evaluate again" not in text  # scored on the model the run holds
    history["epochs"][history["best_epoch"] - 1]["step"] = step + 7  # as if a resume saved a newer best
    (run_dir / "history.json").write_text(json.dumps(history))
    text = load_run(run_dir, device="cpu").report(tmp_path / "later.html").read_text(encoding="utf-8")
    expected = f"scored on the model of step {step}; the run's model is now step {step + 7}: evaluate again"
    assert expected in html.unescape(text)


def test_an_undefined_metric_written_as_null_is_shown_as_a_blank(dates_run, tmp_path):
    """eval-SPLIT.json writes NaN as null (a group correlation over one group); the report refused
    such a baseline as "not a number" and would have turned float(None) into a TypeError."""
    import json

    run_dir = shutil.copytree(dates_run, tmp_path / "run")
    record = {"accuracy": 0.9, "group_spearman": None,
              "baselines": {"majority": {"accuracy": 0.5, "group_spearman": None}}}  # fmt: skip
    (run_dir / "eval-test.json").write_text(json.dumps(record))
    text = load_run(run_dir, device="cpu").report(tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<tr><td>majority</td><td>0.5000</td></tr>" in text  # its null metric is no column of this model's
