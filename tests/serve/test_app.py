"""The HTTP API on a tiny dates run: typed predictions, attention equal to explain.capture, the
limits and the security rules, each error a JSON 4xx after which the server still answers."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from heedful.data.tokenizers import pad_ids
from heedful.errors import UserError
from heedful.explain import capture
from heedful.serve import Limits, create_app, serve

KEY = "s3cret-key"
LIMITS = Limits(max_body_bytes=4_000, max_texts=4, max_text_chars=64)


@pytest.fixture(scope="module")
def client(dates_run):
    with TestClient(create_app([dates_run], limits=LIMITS)) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(dates_run):
    with TestClient(create_app([dates_run], limits=LIMITS, api_key=KEY)) as c:
        yield c


def assert_serving(c, headers=None):
    r = c.post("/v1/models/dates/predict", json={"texts": ["5. März 2021"]}, headers=headers or {})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["input"] == "5. März 2021"


def test_predictions_are_the_runs_own(client, dates_run):
    texts = ["5. März 2021", "July 4, 1999", "2001年3月5日"]
    r = client.post("/v1/models/dates/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "dates" and body["task"] == "translate" and body["attention"] is None
    client.app.state.served["dates"].response.model_validate(body)  # what the OpenAPI schema says
    want = dates_run.predict(texts)
    for got, p in zip(body["predictions"], want, strict=True):
        assert got["input"] == p.input and got["output"] == p.output and got["output_ids"] == p.output_ids
        assert got["score"] == pytest.approx(p.score, abs=1e-5)


def test_models_health_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": ["dates"]}
    assert client.get("/v1/models").json()["models"] == [
        {"name": "dates", "task": "translate", "inputs": "text", "predict": "/v1/models/dates/predict",
         "runtime": "torch", "attention": True}
    ]  # fmt: skip
    schema = client.get("/openapi.json").json()
    route = schema["paths"]["/v1/models/dates/predict"]["post"]
    assert route["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("dates_Request")
    prediction = schema["components"]["schemas"]["dates_Prediction"]["properties"]
    assert {"input", "output", "score", "output_ids", "alternatives"} <= set(prediction)  # Translation's fields
    texts = schema["components"]["schemas"]["dates_Request"]["properties"]["texts"]
    assert texts["maxItems"] == LIMITS.max_texts and texts["items"]["maxLength"] == LIMITS.max_text_chars
    # The errors as they are sent (not FastAPI's HTTPValidationError, which a generated client would expect)
    for status in ["400", "401", "413", "415", "422", "503"]:
        assert route["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"error", "detail"}
    assert "HTTPValidationError" not in schema["components"]["schemas"] and "security" not in schema


def test_with_a_key_the_schema_says_how_to_send_it(keyed):
    schema = keyed.get("/openapi.json", headers={"X-API-Key": KEY}).json()
    assert schema["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    assert schema["security"] == [{"bearer": []}, {"apiKey": []}]


def test_attention_equals_explain_capture_on_the_same_input(client, dates_run):
    text = "5. März 2021"
    r = client.post("/v1/models/dates/predict", json={"texts": [text], "attention": True})
    assert r.status_code == 200, r.text
    client.app.state.served["dates"].response.model_validate(r.json())
    (prediction,), (attention,) = r.json()["predictions"], r.json()["attention"]
    task, model = dates_run.task, dates_run.model
    src_ids = task.src_tok.encode(text)
    out_ids = prediction["output_ids"]
    with torch.no_grad(), capture(model) as seen:  # teacher-forced over the served output
        model(pad_ids([src_ids], 0), pad_ids([[task.tgt_tok.bos_id, *out_ids]], 0))
    cross = sorted(k for k in seen if "cross_attn" in k)
    assert sorted(attention["layers"]) == cross
    for name in cross:
        want = seen[name][0]  # (H, T_out + 1, S)
        got = torch.tensor(attention["layers"][name])
        assert got.shape == want.shape == (2, len(out_ids) + 1, len(src_ids))
        torch.testing.assert_close(got, want.float(), atol=1e-6, rtol=0)
    assert attention["key_tokens"] == task.src_tok.pieces(text)
    assert attention["query_tokens"][-1] == "<eos>" and len(attention["query_tokens"]) == len(out_ids) + 1


ABUSE = [
    # (what, request kwargs, status, error)
    (
        "malformed JSON",
        {"content": b'{"texts": [', "headers": {"content-type": "application/json"}},
        400,
        "malformed JSON",
    ),
    (
        "wrong content type",
        {"content": b'{"texts": ["a"]}', "headers": {"content-type": "text/plain"}},
        415,
        "unsupported content type",
    ),
    ("oversize body", {"json": {"texts": ["x" * 5_000]}}, 413, "body too large"),
    ("too many texts", {"json": {"texts": ["5 May 2020"] * 5}}, 422, "invalid request"),
    ("over-long text", {"json": {"texts": ["x" * 65]}}, 422, "invalid request"),
    ("wrong types", {"json": {"texts": [5], "attention": "yes"}}, 422, "invalid request"),
    ("no texts", {"json": {"texts": []}}, 422, "invalid request"),
    ("unknown field", {"json": {"texts": ["a"], "beam": 99}}, 422, "invalid request"),
    ("a list body", {"json": ["5 May 2020"]}, 422, "invalid request"),
    (
        "not UTF-8",
        {"content": b'{"texts": ["\xff"]}', "headers": {"content-type": "application/json"}},
        400,
        "malformed JSON",
    ),
]


@pytest.mark.parametrize(("what", "kwargs", "status", "error"), ABUSE, ids=[a[0] for a in ABUSE])
def test_abuse_is_a_json_4xx_and_the_server_keeps_serving(client, what, kwargs, status, error):
    r = client.post("/v1/models/dates/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == error and body["detail"]
    assert "Traceback" not in r.text
    assert_serving(client)


def test_details_say_what_was_wrong(client):
    assert "at most 4 items" in client.post("/v1/models/dates/predict", json={"texts": ["a"] * 5}).json()["detail"]
    assert "body.texts.0" in client.post("/v1/models/dates/predict", json={"texts": [5]}).json()["detail"]
    assert "4000 bytes" in client.post("/v1/models/dates/predict", json={"texts": ["x" * 5000]}).json()["detail"]


@pytest.mark.parametrize(
    "path", ["/v1/models/nope/predict", "/v1/models/../../etc/predict", "/v1/models/..%2F..%2Fetc/predict",
             "/v1/models/%2E%2E/predict", "/etc/passwd"],
)  # fmt: skip
def test_unknown_and_path_like_model_names_are_404(client, path):
    r = client.post(path, json={"texts": ["5 May 2020"]})
    assert r.status_code == 404, r.text
    assert r.json()["error"] in ("unknown model", "not found") and "Traceback" not in r.text
    assert_serving(client)


def test_a_streamed_body_past_the_limit_is_413(client):
    def chunks():  # no content-length: counted as it arrives
        yield b'{"texts": ["'
        for _ in range(50):
            yield b"x" * 100
        yield b'"]}'

    r = client.post("/v1/models/dates/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body too large"
    assert_serving(client)


def test_the_api_key_guards_every_route_but_health(keyed):
    for method, path in [("get", "/v1/models"), ("get", "/openapi.json"), ("get", "/docs"),
                         ("post", "/v1/models/dates/predict"), ("post", "/v1/models/nope/predict")]:  # fmt: skip
        missing = getattr(keyed, method)(path)
        assert missing.status_code == 401 and missing.json()["error"] == "unauthorized", path
        wrong = getattr(keyed, method)(path, headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "the API key is wrong", path
        assert_serving(keyed, headers={"X-API-Key": KEY})
    assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code == 200
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert_serving(keyed, headers={"Authorization": f"Bearer {KEY}"})


def test_no_cors_headers(client):
    r = client.options("/v1/models/dates/predict", headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/v1/models/dates/predict", json={"texts": ["5 May 2020"]}, headers={"Origin": "https://x.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_a_task_refusal_is_422_and_spares_nothing_else(client):
    for blank in ("   ", ""):  # blank: the task answers an empty output ("" was refused by the schema alone)
        r = client.post("/v1/models/dates/predict", json={"texts": [blank]})
        got = r.json()["predictions"][0]
        assert r.status_code == 200 and (got["input"], got["output"], got["score"]) == (blank, "", None)
    r = client.post("/v1/models/dates/predict", json={"texts": ["   "], "attention": True})  # nothing to attend to
    assert r.status_code == 422 and r.json() == {
        "error": "cannot predict",
        "detail": "input 1 is empty: nothing to attend to",
    }
    assert_serving(client)


def test_non_local_bind_needs_a_key_or_insecure(dates_run):
    with pytest.raises(UserError, match=r"--host 0\.0\.0\.0: not a local address; set --api-key"):
        serve([dates_run.run_dir], host="0.0.0.0")


def test_two_runs_with_one_name_are_refused(dates_run):
    with pytest.raises(UserError, match="two runs are named 'dates'"):
        create_app([dates_run, dates_run])


@pytest.mark.slow
def test_cli_refuses_a_non_local_bind_without_a_key_in_one_line(dates_run):
    from tests.conftest import run_cli

    result = run_cli("serve", str(dates_run.run_dir), "--host", "0.0.0.0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "heedful: error: --host 0.0.0.0: not a local address; set --api-key (or HEEDFUL_API_KEY), or pass --insecure"
    )


def test_the_explorer_needs_no_key_and_serves_only_its_own_files(keyed):
    page = keyed.get("/")  # redirected
    assert page.status_code == 200 and "heedful attention explorer" in page.text
    assert keyed.get("/explorer").status_code == 200  # redirected to /explorer/, not refused for a key
    assert keyed.get("/explorer/explorer.js").headers["content-type"].startswith("text/javascript")
    for path in ["/explorer/../app.py", "/explorer/%2e%2e/app.py", "/explorer/..%2Fapp.py", "/explorer/nope.js"]:
        r = keyed.get(path)
        assert r.status_code in (401, 404), path  # outside the folder: the key rule again, or no such file
        assert "create_app" not in r.text, path


def test_runs_whose_names_differ_in_punctuation_get_schemas_of_their_own(dates_run):
    import dataclasses

    other = dataclasses.replace(dates_run, cfg=dates_run.cfg.model_copy(update={"name": "dates.v2"}))
    renamed = dataclasses.replace(dates_run, cfg=dates_run.cfg.model_copy(update={"name": "dates-v2"}))
    with TestClient(create_app([dates_run, other, renamed])) as c:
        schema = c.get("/openapi.json").json()
        requests = {p: v["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    for p, v in schema["paths"].items() if "predict" in p}  # fmt: skip
        assert len(set(requests.values())) == 3, requests
        for name in ("dates", "dates.v2", "dates-v2"):
            r = c.post(f"/v1/models/{name}/predict", json={"texts": ["5 May 2020"]})
            assert r.status_code == 200 and r.json()["model"] == name


@pytest.mark.parametrize("threads", [2, 1])
def test_torch_runs_in_one_thread_when_it_computes_with_several(dates_run, tmp_path, monkeypatch, threads):
    """With several torch threads, loading and every model's batches run in one thread: each thread
    that runs a parallel region keeps an OpenMP team, and teams beyond the cores make libgomp's
    barriers sleep (decoding ~20 % slower). At one thread each model keeps a thread of its own."""
    import shutil
    import threading

    from heedful.serve import app as app_module

    second = tmp_path / "dates-b"
    shutil.copytree(dates_run.run_dir, second)
    config = second / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("name: dates\n", "name: dates-b\n"), encoding="utf-8")
    seen: dict[str, set[int]] = {"load": set(), "dates": set(), "dates-b": set()}
    load_run, infer = app_module.load_run, app_module.Served.infer

    def recording_load(*args, **kwargs):
        seen["load"].add(threading.get_ident())
        return load_run(*args, **kwargs)

    def recording_infer(self, inputs, attention):
        seen[self.name].add(threading.get_ident())
        return infer(self, inputs, attention)

    monkeypatch.setattr(app_module, "load_run", recording_load)
    monkeypatch.setattr(app_module.Served, "infer", recording_infer)
    before, inference = torch.get_num_threads(), None
    try:
        app, inference = app_module.load_app([dates_run.run_dir, second], threads=threads)
        with TestClient(app) as c:
            for name in ("dates", "dates-b", "dates"):
                r = c.post(f"/v1/models/{name}/predict", json={"texts": ["5 May 2020"], "attention": True})
                assert r.status_code == 200 and r.json()["model"] == name
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
        if inference is not None:
            inference.shutdown()
    assert all(len(idents) == 1 for idents in seen.values()), seen
    if threads > 1:
        assert len(seen["load"] | seen["dates"] | seen["dates-b"]) == 1, seen
        assert threading.get_ident() not in seen["load"]
    else:
        assert inference is None and seen["dates"] != seen["dates-b"], seen


def test_a_local_keyless_server_answers_only_local_host_names(dates_run):
    """A page on another site reaches a local server through DNS rebinding: its requests name that
    site as Host, and are refused (``serve`` without a key passes the local names)."""
    from heedful.serve.app import local_hosts

    app = create_app([dates_run], limits=LIMITS, allowed_hosts=local_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert_serving(c)
        for host in ["localhost:8000", "[::1]:8000", "127.0.0.1"]:
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        for host in ["attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", ""]:
            r = c.post("/v1/models/dates/predict", json={"texts": ["5 May 2020"]}, headers={"host": host})
            assert r.status_code == 400 and r.json()["error"] == "host not allowed", (host, r.text)
    assert local_hosts("localhost") == {"localhost", "127.0.0.1", "::1"}


def test_health_answers_head_and_a_405_says_what_is_allowed(client):
    assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 200
    r = client.put("/v1/models/dates/predict", json={"texts": ["a"]})
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"] == "method not allowed"


def test_an_api_key_a_header_cannot_carry_is_refused_at_start(dates_run):
    with pytest.raises(UserError, match="printable ASCII"):
        create_app([dates_run], api_key="kä-key")


def test_a_large_answer_is_written_off_the_event_loop(client, monkeypatch):
    """json.dumps of attention over long texts took ~0.6 s, during which /healthz waited."""
    import threading

    import heedful.serve.app as app_module

    threads, original = [], app_module._answer_json

    def watched(*args):
        threads.append(threading.current_thread())
        return original(*args)

    monkeypatch.setattr(app_module, "_answer_json", watched)
    loop_thread = client.portal.call(threading.current_thread)  # the event loop's own thread
    assert client.post("/v1/models/dates/predict", json={"texts": ["5 May 2020"]}).status_code == 200
    assert threads and threads[-1] is not loop_thread
