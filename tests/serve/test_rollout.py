"""``"explain": "rollout"``: the API's rollout is ``attention_rollout`` of the encoder
self-attention that ``explain.capture`` sees on the same model and input; a model with no
encoder self-attention (an RNN) is a JSON 422."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from heedful.explain import capture
from heedful.explain.rollout import attention_rollout
from heedful.runs import load_config, load_run
from heedful.serve import create_app
from heedful.train import fit
from tests.conftest import tiny_dates_overrides


def tiny_run(tmp_path_factory, name: str, rnn: bool = False, **extra: object):
    run_dir = tmp_path_factory.mktemp("rollout") / name
    overrides = tiny_dates_overrides(run_dir, name=name, **{"train.epochs": 1, **extra})
    config = Path("configs/dates.yaml")
    if rnn:  # the Transformer's model keys are not the RNN's: a copy of the config with an RNN
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
        data["model"] = {"arch": "rnn", "embed_dim": 16, "hidden_size": 32}
        config = run_dir.parent / "dates-rnn.yaml"
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        overrides = [o for o in overrides if not o.startswith("model.")]
    fit(load_config(config, overrides))
    return load_run(run_dir, "cpu")


@pytest.fixture(scope="module")
def two_layer_run(tmp_path_factory):  # two encoder layers: the rollout multiplies them
    return tiny_run(tmp_path_factory, "dates2", **{"model.n_encoder_layers": 2})


@pytest.fixture(scope="module")
def rnn_run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "dates-rnn", rnn=True)


def test_rollout_equals_attention_rollout_of_the_captured_encoder_self_attention(two_layer_run):
    texts = ["5. März 2021", "July 4, 1999"]
    with TestClient(create_app([two_layer_run])) as client:
        r = client.post("/v1/models/dates2/predict", json={"texts": texts, "explain": "rollout"})
        assert r.status_code == 200, r.text
        client.app.state.served["dates2"].response.model_validate(r.json())
        body = r.json()
        assert body["attention"] is None  # not asked for
        both = client.post("/v1/models/dates2/predict", json={"texts": texts, "explain": "rollout", "attention": True})
        assert both.json()["rollout"] == body["rollout"] and len(both.json()["attention"]) == 2
    task, model = two_layer_run.task, two_layer_run.model
    for text, got in zip(texts, body["rollout"], strict=True):
        ids = task.src_tok.encode(text)
        with torch.no_grad(), capture(model) as seen:  # the encoder alone, one sentence, no padding
            model.encode(torch.tensor([ids]))
        names = ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
        assert got["layers"] == names and got["tokens"] == task.src_tok.pieces(text)
        want = attention_rollout([seen[n][0] for n in names])  # (S, S)
        weights = torch.tensor(got["weights"])
        assert weights.shape == (len(ids), len(ids))
        torch.testing.assert_close(weights, want.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(len(ids)))  # rows stay distributions


def test_rollout_of_a_model_without_encoder_self_attention_is_a_json_422(rnn_run):
    with TestClient(create_app([rnn_run])) as client:
        r = client.post("/v1/models/dates-rnn/predict", json={"texts": ["5. März 2021"], "explain": "rollout"})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "cannot explain" and "no encoder self-attention" in r.json()["detail"]
        bad = client.post("/v1/models/dates-rnn/predict", json={"texts": ["5. März 2021"], "explain": "flow"})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid request"
        assert client.post("/v1/models/dates-rnn/predict", json={"texts": ["5. März 2021"]}).status_code == 200
