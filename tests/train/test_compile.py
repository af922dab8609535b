"""``train.compile``: the model compiled in place where torch.compile can run (same training),
one warning line and an uncompiled run where it cannot."""

from __future__ import annotations

import pytest
import torch

from heedful.train import Trainer
from heedful.train import compile as compile_module
from heedful.train.compile import why_not_compiled
from tests.conftest import assert_same_weights, latest_checkpoint_weights
from tests.train.test_guards import toy, toy_config  # noqa: F401 - the fixture


def train(toy, run_dir, **train_fields):  # noqa: F811
    cfg = toy_config(toy, run_dir, epochs=1, **train_fields)
    trainer = Trainer(toy.ToyTask(cfg), cfg)
    trainer.fit()
    return trainer.model


@pytest.mark.slow
def test_a_compiled_model_trains_as_the_uncompiled_one(toy, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(compile_module, "BACKEND", "eager")  # graph capture without code generation: fast
    compiled = train(toy, tmp_path / "compiled", compile=True)
    plain = train(toy, tmp_path / "plain")
    assert compiled._compiled_call_impl is not None and plain._compiled_call_impl is None
    assert_same_weights(latest_checkpoint_weights(tmp_path / "compiled"), latest_checkpoint_weights(tmp_path / "plain"))


def test_where_compile_cannot_run_training_goes_on_and_says_why(toy, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(compile_module, "why_not_compiled", lambda device: "no compiler in this test")
    model = train(toy, tmp_path / "run", compile=True)
    assert model._compiled_call_impl is None
    assert "heedful: warning: train.compile: training uncompiled: no compiler in this test\n" in capsys.readouterr().err
    assert latest_checkpoint_weights(tmp_path / "run")


def test_reasons(monkeypatch):
    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)
    assert "C++ compiler" in why_not_compiled(torch.device("cpu"))
    monkeypatch.setattr(compile_module.importlib.util, "find_spec", lambda name: None)
    assert "triton" in why_not_compiled(torch.device("cuda"))


@pytest.mark.slow
def test_the_transformer_traces_in_one_graph_per_stack_with_dropout_on():
    """Dynamo traces a training-mode Transformer without breaking at the CPU dropout's in-place
    ``random_`` or at the capture hook (each break was one graph per module call, and the
    capture's module-id guard hit the recompile limit, leaving every module uncompiled)."""
    from heedful.models import TransformerEncoderDecoder
    from tests.models.test_transformer import small_config

    torch.manual_seed(0)
    model = TransformerEncoderDecoder(small_config(dropout=0.1)).train()
    src, tgt = torch.randint(3, 40, (2, 7)), torch.randint(3, 30, (2, 5))
    explanation = torch._dynamo.explain(model)(src, tgt)
    assert explanation.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    # and dropout still drops under compile: two traced training calls differ, eval calls agree
    compiled = torch.compile(model, backend="eager")
    assert not torch.equal(compiled(src, tgt), compiled(src, tgt))
    model.eval()
    assert torch.equal(compiled(src, tgt), model(src, tgt))


@pytest.mark.slow
def test_a_capture_still_sees_a_compiled_model():
    """Captures (explain, the supervised alignment head) keep working on a compiled model."""
    from heedful.explain.capture import capture
    from heedful.models import TransformerEncoderDecoder
    from tests.models.test_transformer import small_config

    model = TransformerEncoderDecoder(small_config()).eval()
    src, tgt = torch.randint(3, 40, (2, 7)), torch.randint(3, 30, (2, 5))
    compiled = torch.compile(model, backend="eager")
    compiled(src, tgt)  # traced once with no capture open
    with capture(model) as eager_maps:
        model(src, tgt)
    with capture(model) as compiled_maps:
        compiled(src, tgt)
    assert len(compiled_maps) == len(eager_maps) > 0
