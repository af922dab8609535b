"""``data.pad_to_multiple``: batch lengths rounded up so that shapes repeat on a GPU; padding is
masked, so the loss and its gradients do not change."""

import pytest
import torch

from heedful.data.tokenizers import padded_width
from heedful.runs import load_config
from heedful.tasks import get_task
from tests.conftest import ROOT, tiny_dates_overrides


def test_padded_width_rounds_up_but_not_past_the_limit():
    assert [padded_width(n, 8) for n in (0, 1, 8, 9, 17)] == [0, 8, 8, 16, 24]
    assert padded_width(13, 8, limit=14) == 14  # 16 would not fit the position table
    assert padded_width(15, 8, limit=12) == 15  # already past the limit: as it is
    assert padded_width(13, 1) == 13


def task_and_batches(multiple: int, arch: str):
    overrides = tiny_dates_overrides(ROOT / "runs" / "unused", **{"data.pad_to_multiple": multiple})
    if arch == "rnn":  # a bidirectional GRU encoder, packed by length, and Bahdanau attention
        overrides = [o for o in overrides if not o.startswith("model.")]
        overrides += ["model={arch: rnn, cell: gru, attention: bahdanau, embed_dim: 16, hidden_size: 32}"]
    cfg = load_config(ROOT / "configs" / "dates.yaml", overrides)
    task = get_task("translate")(cfg)
    data = task.build_data(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data).eval()  # eval: no dropout, so both see the same function
    return task, model, list(data.train.batches(0))[:3]


@pytest.mark.parametrize("arch", ["transformer", "rnn"])
def test_padding_to_a_multiple_of_8_changes_shapes_not_the_loss_or_gradients(arch):
    plain_task, model, plain = task_and_batches(1, arch)
    padded_task, _, padded = task_and_batches(8, arch)
    assert type(model).__name__ == {"rnn": "RNNEncoderDecoder", "transformer": "TransformerEncoderDecoder"}[arch]
    for a, b in zip(plain, padded, strict=True):
        assert b["src"].shape[1] % 8 == 0 and b["tgt_in"].shape[1] % 8 == 0 and b["tgt_out"].shape[1] % 8 == 0
        assert a["src"].shape[1] % 8 or a["tgt_in"].shape[1] % 8  # the plain batch was not already padded
        # The same examples, more <pad> on the right.
        assert torch.equal(b["src"][:, : a["src"].shape[1]], a["src"]) and (b["src"][:, a["src"].shape[1] :] == 0).all()
        assert torch.equal(b["tgt_out"][:, : a["tgt_out"].shape[1]], a["tgt_out"])
        losses, grads = [], []
        for task, batch in ((plain_task, a), (padded_task, b)):
            model.zero_grad()
            loss, stats = task.loss(model, batch)
            loss.backward()
            losses.append((float(loss.detach()), stats["weight"]))
            grads.append([p.grad.clone() for p in model.parameters()])
        assert losses[0][1] == losses[1][1]  # the same target tokens count
        assert losses[1][0] == pytest.approx(losses[0][0], abs=1e-6)
        for g_plain, g_padded in zip(*grads, strict=True):
            torch.testing.assert_close(g_padded, g_plain, rtol=1e-5, atol=1e-6)


def test_the_transformer_loss_applies_the_vocabulary_projection_itself_with_the_same_result(monkeypatch):
    """translate's loss hands the decoder's final states to projected_cross_entropy; a model whose
    projection carries a hook (so vocabulary_weight is None) takes the logits path — both give
    the same loss and gradients, in fp32 and under bf16 autocast."""
    import heedful.tasks.translate as translate

    task, model, batches = task_and_batches(1, "transformer")
    calls = []
    fused = translate.projected_cross_entropy
    monkeypatch.setattr(translate, "projected_cross_entropy", lambda *a: calls.append(1) or fused(*a))
    for precision in (torch.float32, torch.bfloat16):
        results = []
        for hooked in (False, True):
            handle = model.decoder.output.register_forward_hook(lambda *_: None) if hooked else None
            assert (model.vocabulary_weight() is None) == hooked
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
                loss, stats = task.loss(model, batches[0])
            loss.backward()
            results.append((loss.detach(), stats["accuracy"], [p.grad.clone() for p in model.parameters()]))
            if handle is not None:
                handle.remove()
        (fused_loss, fused_acc, fused_grads), (plain_loss, plain_acc, plain_grads) = results
        assert fused_acc == plain_acc
        torch.testing.assert_close(fused_loss, plain_loss, rtol=0, atol=1e-6)
        for a, b in zip(fused_grads, plain_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert len(calls) == 2  # once per precision, never for the hooked model
