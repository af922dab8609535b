"""The OpenAPI schema, fuzzed by schemathesis against a live server (bounded examples): no 5xx,
every error the JSON shape {"error", "detail"}, every 200 what the schema says."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from heedful.serve import Limits, create_app
from tests.serve.conftest import LiveServer

schemathesis = pytest.importorskip("schemathesis", reason="the schema fuzz test needs schemathesis (heedful[test])")
GenerationMode = schemathesis.GenerationMode


@pytest.mark.slow
def test_no_request_the_schema_allows_or_nearly_allows_is_a_5xx(dates_run):
    app = create_app([dates_run], limits=Limits(max_texts=4, max_text_chars=48))
    seen: dict[str, set[int]] = {}
    with LiveServer(app) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} == {"/healthz", "/readyz", "/v1/models", "/v1/models/dates/predict"}
        predict = next(op for op in operations if op.method == "post")
        runs = [(op, GenerationMode.POSITIVE) for op in operations] + [(predict, GenerationMode.NEGATIVE)]
        for operation, mode in runs:  # valid requests to every route, invalid ones to predict
            fuzz(operation, mode, seen)
    assert 200 in seen["/v1/models/dates/predict"], seen  # the fuzzing reached the model


def fuzz(operation, mode, seen: dict[str, set[int]]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case):
        response = case.call(timeout=60)
        seen.setdefault(operation.path, set()).add(response.status_code)
        assert response.status_code < 500, response.text
        body = response.json()
        if mode == GenerationMode.NEGATIVE:
            assert response.status_code >= 400, (case.body, body)
        if response.status_code >= 400:
            assert set(body) == {"error", "detail"}, body
        else:
            case.validate_response(response)  # the answer matches the schema

    check()
