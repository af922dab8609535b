"""Dynamic batching on a live server (127.0.0.1): concurrent requests share model calls, and each
gets what it would get alone."""

from __future__ import annotations

import threading

import httpx
import pytest
import torch

from heedful.serve import Batching, create_app
from tests.serve.conftest import LiveServer

TEXTS = ["5. März 2021", "July 4, 1999", "2001年3月5日", "le 3 mai 1987", "12/11/2010", "4 de abril de 2003",
         "Sunday, May 6, 1990", "30.1.1977"]  # fmt: skip


def fire(url: str, bodies: list[dict]) -> list[dict]:
    """Every body POSTed at once, one thread each; the JSON answers in order."""
    answers: list[dict | None] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait(timeout=30)
            r = client.post(f"{url}/v1/models/dates/predict", json=bodies[i])
            answers[i] = r.json() if r.status_code == 200 else {"status": r.status_code, **r.json()}

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_answered_as_if_alone(dates_run):
    bodies = [{"texts": [t], "attention": i % 2 == 1} for i, t in enumerate(TEXTS)] + [{"texts": TEXTS[:3]}]
    app = create_app([dates_run], batching=Batching(max_wait_ms=200, max_batch_tokens=10_000))
    with LiveServer(app) as server:
        together = fire(server.url, bodies)
        alone = [fire(server.url, [body])[0] for body in bodies]  # one at a time: batches of one
    sizes = app.state.served["dates"].batcher.batch_sizes
    assert max(sizes) > 1, sizes  # some model calls served several requests
    for got, want in zip(together, alone, strict=True):
        assert "error" not in got, got
        assert [p["output"] for p in got["predictions"]] == [p["output"] for p in want["predictions"]]
        assert [p["output_ids"] for p in got["predictions"]] == [p["output_ids"] for p in want["predictions"]]
        for a, b in zip(got["predictions"], want["predictions"], strict=True):
            # padding changes the matmul shapes, hence float rounding, never the result
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert (got["attention"] is None) == (want["attention"] is None)
        for a, b in zip(got["attention"] or [], want["attention"] or [], strict=True):
            assert a["key_tokens"] == b["key_tokens"] and a["query_tokens"] == b["query_tokens"]
            for name in b["layers"]:
                torch.testing.assert_close(
                    torch.tensor(a["layers"][name]), torch.tensor(b["layers"][name]), atol=1e-5, rtol=0
                )


@pytest.mark.slow
def test_one_bad_request_in_a_batch_fails_alone(dates_run):
    bodies = [{"texts": [t], "attention": True} for t in TEXTS[:4]] + [{"texts": ["   "], "attention": True}]
    app = create_app([dates_run], batching=Batching(max_wait_ms=200, max_batch_tokens=10_000))
    with LiveServer(app) as server:
        answers = fire(server.url, bodies)
    assert answers[-1] == {"status": 422, "error": "cannot predict", "detail": "input 1 is empty: nothing to attend to"}
    assert [a["predictions"][0]["input"] for a in answers[:-1]] == TEXTS[:4]


def test_without_batching_every_call_serves_one_request(dates_run):
    app = create_app([dates_run], batching=Batching(enabled=False))
    with LiveServer(app) as server:
        answers = fire(server.url, [{"texts": [t]} for t in TEXTS])
    assert all("predictions" in a for a in answers)
    assert dict(app.state.served["dates"].batcher.batch_sizes) == {1: len(TEXTS)}
