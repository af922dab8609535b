"""The attention explorer in a real browser (Debian's Chromium, headless, via Playwright): type,
predict, hover an output token and compare the shaded input tokens with the API's own attention,
switch heads and layers, classify a review. Screenshots go to the test's temporary folder."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from heedful.runs import load_run
from heedful.serve import create_app
from tests.serve.conftest import LiveServer
from tests.tasks.test_classify import config as classify_config

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (heedful[test])")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"),
]
KEY = "explorer-key"


@pytest.fixture(scope="module")
def review_run(tmp_path_factory):
    from heedful.train import fit

    tmp = tmp_path_factory.mktemp("reviews")
    fit(classify_config(tmp, **{"train.epochs": 2, "name": "reviews"}))
    return load_run(tmp / "run", "cpu")


@pytest.fixture(scope="module")
def review_export(review_run, tmp_path_factory):
    """The review run's ONNX export, served beside it under its own name: it answers no attention,
    so the explorer must not offer it."""
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from heedful.optimize.export import export_onnx, open_export

    folder = export_onnx(review_run, tmp_path_factory.mktemp("reviews-onnx") / "onnx")
    return open_export(folder)  # named reviews-onnx by the export


@pytest.fixture(scope="module")
def page_and_api(dates_run, review_run, review_export):
    served = [dates_run, review_run, review_export]
    with LiveServer(create_app(served, api_key=KEY)) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server.url}/")  # redirected to /explorer/, which needs no key
        page.fill("#key", KEY)
        page.click("#reload")
        page.wait_for_selector("#model option[value=reviews]", state="attached")

        def api(model: str, text: str, **extra) -> dict:
            body = {"texts": [text], "attention": True, **extra}
            r = httpx.post(f"{server.url}/v1/models/{model}/predict", json=body, headers={"X-API-Key": KEY}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()

        yield page, api, errors
        browser.close()


def ask(page, model: str, text: str) -> None:
    page.select_option("#model", model)
    page.fill("#text", text)
    page.press("#text", "Control+Enter")  # the keyboard path
    page.wait_for_function(
        "document.querySelector('#result').hidden === false && !document.querySelector('#go').disabled"
    )


def shaded(page) -> list[float]:
    return [float(w) for w in page.eval_on_selector_all("#keys .token", "els => els.map(e => e.dataset.weight)")]


def test_translate_hover_a_token_switch_heads(page_and_api, tmp_path):
    page, api, errors = page_and_api
    text = "5. März 2021"
    ask(page, "dates", text)
    answer = api("dates", text)
    prediction, attention = answer["predictions"][0], answer["attention"][0]
    assert page.inner_text("#output") == (prediction["output"] or "(empty)")
    assert page.eval_on_selector_all("#keys .token", "els => els.map(e => e.textContent)") == attention["key_tokens"]
    layer = list(attention["layers"])[-1]  # the page starts on the last layer, mean over heads
    weights = torch.tensor(attention["layers"][layer])  # (H, T_q, T_k)
    assert page.input_value("#layer") == layer and page.input_value("#head") == "mean"

    row = min(2, weights.shape[1] - 1)
    page.hover(f"#queries .token >> nth={row}")
    assert page.get_attribute(f"#queries .token >> nth={row}", "aria-pressed") == "true"
    want = weights[:, row].mean(0)
    torch.testing.assert_close(torch.tensor(shaded(page)), want, atol=1e-6, rtol=0)
    lit = page.eval_on_selector_all("#keys .token", "els => els.map(e => e.classList.contains('strong'))")
    assert lit == (want / want.max() > 0.55).tolist()  # the cells that light up are the API's heaviest
    page.screenshot(path=str(tmp_path / "translation.png"), full_page=True)

    page.select_option("#head", "1")
    page.hover(f"#queries .token >> nth={row}")
    torch.testing.assert_close(torch.tensor(shaded(page)), weights[1, row], atol=1e-6, rtol=0)

    page.focus("#queries .token >> nth=0")  # keyboard focus chooses a token too
    torch.testing.assert_close(torch.tensor(shaded(page)), weights[1, 0], atol=1e-6, rtol=0)

    # The rollout: its rows are the input tokens, its map the API's own.
    (rollout,) = api("dates", text, explain="rollout")["rollout"]
    page.select_option("#layer", "rollout")
    queries = page.eval_on_selector_all("#queries .token", "els => els.map(e => e.textContent)")
    assert queries == rollout["tokens"] == attention["key_tokens"]
    page.hover(f"#queries .token >> nth={row}")
    torch.testing.assert_close(torch.tensor(shaded(page)), torch.tensor(rollout["weights"][row]), atol=1e-6, rtol=0)
    assert errors == []


def test_classify_a_review(page_and_api, tmp_path):
    page, api, errors = page_and_api
    offered = page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    assert offered == ["dates", "reviews"]  # not the export (reviews-onnx): it keeps no attention
    text = "battery sound excellent seller box"
    ask(page, "reviews", text)
    answer = api("reviews", text)
    prediction, attention = answer["predictions"][0], answer["attention"][0]
    assert page.inner_text("#output") == prediction["output"]
    rows = page.eval_on_selector_all("#probabilities tbody tr th", "els => els.map(e => e.textContent)")
    assert rows == list(prediction["probabilities"])
    layers = page.eval_on_selector_all("#layer option", "els => els.map(e => e.value)")
    assert "rollout" not in layers  # the classifier's explanation keeps no encoder self-attention
    page.select_option("#layer", "summary")
    page.hover("#queries .token >> nth=0")
    torch.testing.assert_close(torch.tensor(shaded(page)), torch.tensor(attention["summary"][0]), atol=1e-6, rtol=0)
    page.screenshot(path=str(tmp_path / "classification.png"), full_page=True)
    assert (tmp_path / "classification.png").read_bytes()[:4] == b"\x89PNG"
    assert errors == []


def test_a_wrong_key_is_shown_not_thrown(page_and_api):
    page, _, errors = page_and_api
    page.fill("#key", "wrong")
    page.click("#reload")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == "unauthorized: the API key is wrong"
    page.fill("#key", KEY)
    page.click("#reload")
    page.wait_for_selector("#error", state="hidden")
    assert errors == []
