"""train.init_from: a run starts from another run's saved model and vocabulary (fine-tuning)."""

import pytest
import torch

from heedful.errors import CheckpointError
from heedful.nn.weights import load_weights
from heedful.tasks import get_task
from heedful.train import fit
from heedful.train.trainer import Trainer
from tests.tasks.test_translate_parallel import config, write_corpus


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    run_dir = tmp_path_factory.mktemp("runs") / "first"
    fit(config(corpus, run_dir, **{"decode.beam_size": 1}))
    return corpus, run_dir


def started(cfg, monkeypatch) -> Trainer:
    """A trainer that sets up (data, model, init_from) and trains no step."""
    monkeypatch.setattr(Trainer, "_loop", lambda self, *args: None)
    trainer = Trainer(get_task(cfg.task)(cfg), cfg)
    trainer.fit()
    return trainer


@pytest.mark.slow
def test_a_fine_tuning_run_starts_from_the_saved_weights_and_vocabulary(first_run, tmp_path, monkeypatch):
    corpus, first = first_run
    cfg = config(corpus, tmp_path / "second", **{"train.init_from": str(first), "data.tokenizer.vocab_size": 300})
    trainer = started(cfg, monkeypatch)
    want = type(trainer.model)(trainer.model.config)
    load_weights(want, first / "model" / "model.safetensors")
    for (name, got), (_, expected) in zip(trainer.model.state_dict().items(), want.state_dict().items(), strict=True):
        assert torch.equal(got, expected), name
    # the vocabulary is the first run's (320 pieces), not one trained anew at data.tokenizer.vocab_size
    assert trainer.task.src_tok.proto == (first / "model" / "spm.model").read_bytes()

    fresh = started(config(corpus, tmp_path / "fresh"), monkeypatch)  # without init_from: other weights
    assert not torch.equal(fresh.model.state_dict()["decoder.layers.0.cross_attn.q_proj.weight"],
                           want.state_dict()["decoder.layers.0.cross_attn.q_proj.weight"])  # fmt: skip


@pytest.mark.slow
def test_a_model_of_another_shape_or_a_missing_run_is_refused_in_one_line(first_run, tmp_path, monkeypatch):
    corpus, first = first_run
    cfg = config(corpus, tmp_path / "wide", **{"train.init_from": str(first), "model.d_ff": 96})
    with pytest.raises(CheckpointError, match=r"^train.init_from: .*model.safetensors: does not fit .*size mismatch"):
        started(cfg, monkeypatch)
    assert not (tmp_path / "wide").exists()
    cfg = config(corpus, tmp_path / "none", **{"train.init_from": str(tmp_path / "nowhere")})
    with pytest.raises(CheckpointError, match=r"^train.init_from: .*nowhere: not a run directory"):
        started(cfg, monkeypatch)
