"""Audio uploads (multipart) on a model whose task takes sound files: what the server checks
before any inference, each refusal a JSON 4xx, and the server serving after each."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from torch import nn

from heedful.config import RunConfig
from heedful.data.audio import read_audio
from heedful.runs import Run
from heedful.serve import Limits, create_app
from heedful.tasks.base import Prediction, Task

soundfile = pytest.importorskip("soundfile", reason="audio uploads need heedful[speech]")
RATE = 8_000


class Listen(Task):
    """Takes sound files like the speech task, and says how long each is: enough to see the file
    the server handed over is the one uploaded."""

    name = "listen"
    config_class = RunConfig
    inputs = "audio"

    def predict(self, model: nn.Module, inputs: list[Any]) -> list[Prediction]:
        return [Prediction(path, f"{len(read_audio(path, RATE))} samples", 1.0) for path in inputs]

    build_data = build_model = loss = evaluate = explain = None  # not needed to serve


Listen.__abstractmethods__ = frozenset()


def wav(seconds: float, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(out, (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    cfg = RunConfig(task="listen", name="listen")
    run = Run(Path(tmp_path_factory.mktemp("listen")), cfg, Listen(cfg), nn.Identity())
    limits = Limits(max_body_bytes=12_000_000, max_audio_files=2, max_audio_seconds=5, max_sample_rate=16_000)
    with TestClient(create_app([run], limits=limits)) as c:
        yield c


def upload(c, *files: tuple[str, bytes], **data):
    return c.post("/v1/models/listen/predict", files=[("files", (n, b, "audio/wav")) for n, b in files], data=data)


def assert_serving(c):
    r = upload(c, ("one.wav", wav(1.0)))
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [
        {"input": "one.wav", "output": "8000 samples", "score": 1.0, "probabilities": None}
    ]


def test_an_upload_reaches_the_task_as_that_file(client):
    r = upload(client, ("a.wav", wav(0.5)), ("../../etc/b.wav", wav(0.25)))
    assert r.status_code == 200, r.text
    assert [(p["input"], p["output"]) for p in r.json()["predictions"]] == [
        ("a.wav", "4000 samples"),
        ("../../etc/b.wav", "2000 samples"),  # a name is only echoed back, never a path on the server
    ]
    assert client.get("/openapi.json").json()["paths"]["/v1/models/listen/predict"]["post"]["requestBody"][
        "content"
    ].keys() == {"multipart/form-data"}


ABUSE = [
    ("non-audio upload", lambda c: upload(c, ("notes.wav", b"this is not a sound file" * 10)), 415, "not audio"),
    ("a WAV of 10 minutes", lambda c: upload(c, ("long.wav", wav(600, rate=4_000))), 413, "audio too long"),
    ("too many files", lambda c: upload(c, *[(f"{i}.wav", wav(0.1)) for i in range(3)]), 413, "too many files"),
    ("sample rate too high", lambda c: upload(c, ("hi.wav", wav(0.1, rate=44_100))), 422, "sample rate too high"),
    ("JSON to an audio model", lambda c: c.post("/v1/models/listen/predict", json={"texts": ["a"]}), 415,
     "unsupported content type"),
    ("no files", lambda c: c.post("/v1/models/listen/predict", files={"other": ("x", b"1")}), 422, "invalid request"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "send", "status", "error"), ABUSE, ids=[a[0] for a in ABUSE])
def test_audio_abuse_is_a_json_4xx_and_the_server_keeps_serving(client, what, send, status, error):
    r = send(client)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == error and body["detail"]
    assert_serving(client)


def test_the_limits_are_named_in_the_detail(client):
    assert upload(client, ("long.wav", wav(600, rate=4_000))).json()["detail"] == "long.wav: 600.0 s; at most 5 s"
    assert "notes.wav: not an audio file" in upload(client, ("notes.wav", b"hello" * 20)).json()["detail"]
