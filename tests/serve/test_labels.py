"""A model whose task takes labels and makes an image each (as imagegen does): the request schema,
the images-per-request limit, and a tensor field of the task's Prediction sent as nested lists."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch import Tensor, nn

from heedful.config import RunConfig
from heedful.errors import UserError
from heedful.runs import Run
from heedful.serve import Limits, create_app
from heedful.tasks.base import Prediction, Task


@dataclass
class Picture(Prediction):
    image: Tensor | None = None  # (1, 2, 2)


class Draw(Task):
    """Draws a 2×2 image whose pixels are the label's digit / 10; refuses non-digits."""

    name = "draw"
    config_class = RunConfig
    inputs = "label"
    prediction_class = Picture

    def predict(self, model: nn.Module, inputs: list[Any]) -> list[Prediction]:
        for item in inputs:
            if not item.isdigit():
                raise UserError(f"unknown class {item!r}; this model has 0–9")
        # a "0" scores -inf, which JSON cannot carry: the answer says null
        return [Picture(x, x, -math.inf if x == "0" else 1.0, image=torch.full((1, 2, 2), int(x) / 10)) for x in inputs]

    build_data = build_model = loss = evaluate = explain = None  # not needed to serve


Draw.__abstractmethods__ = frozenset()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    cfg = RunConfig(task="draw", name="draw")
    run = Run(Path(tmp_path_factory.mktemp("draw")), cfg, Draw(cfg), nn.Identity())
    with TestClient(create_app([run], limits=Limits(max_images=3))) as c:
        yield c


def test_labels_in_images_out(client):
    r = client.post("/v1/models/draw/predict", json={"inputs": ["3", "7"]})
    assert r.status_code == 200, r.text
    images = [p["image"] for p in r.json()["predictions"]]
    want = torch.tensor([0.3, 0.7])[:, None, None, None].expand(2, 1, 2, 2)  # (N, 1, 2, 2)
    torch.testing.assert_close(torch.tensor(images), want)
    assert [p["score"] for p in r.json()["predictions"]] == [1.0, 1.0]
    r = client.post("/v1/models/draw/predict", json={"inputs": ["0", "5"]})
    assert r.status_code == 200 and [p["score"] for p in r.json()["predictions"]] == [None, 1.0]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "image" in schema["draw_Prediction"]["properties"] and "inputs" in schema["draw_Request"]["properties"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [({"inputs": ["1"] * 4}, 422, "invalid request"), ({"texts": ["1"]}, 422, "invalid request"),
     ({"inputs": ["cat"]}, 422, "cannot predict")],
)  # fmt: skip
def test_refusals(client, body, status, error):
    r = client.post("/v1/models/draw/predict", json=body)
    assert r.status_code == status and r.json()["error"] == error, r.text
    assert client.post("/v1/models/draw/predict", json={"inputs": ["1"]}).status_code == 200
