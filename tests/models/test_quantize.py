"""Dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic``) of the models heedful
builds: every Linear, GRU and LSTM becomes its int8 counterpart, the model still predicts, and it
predicts what the float32 model does.

The models are small and briefly trained on the built-in dates task (a few seconds each), so that
their predictions mean something: an untrained model's near-uniform logits would make agreement
either trivial or noise. Each is checked on TEST_N = 400 dates drawn as the translate task draws
its test set (``fixed_dates`` with its held-out seed + 1; the task also leaves out its validation
dates, so this is nearly, not exactly, the first 400 of its test set), never trained on:

* seq2seq (Transformer, GRU with Bahdanau attention): with the gold target prefix, the int8
  model's next character equals float32's at ≥ 98 % of the target positions; greedy outputs, the
  whole ISO date string, are identical for ≥ 90 % of the sources (one flipped character anywhere
  makes a string differ, and greedy decoding carries it on);
* classifier (the month of the date, from its source text; Transformer encoder and BiGRU):
  identical predicted class for ≥ 95 % of the sources, and no class probability more than 0.25
  away from float32's.

Measured when the test was written (2026-12-04, torch 2.13, 1 thread, on the 400 sources):
next-character agreement 99.6 % (Transformer) and 99.9 % (GRU); greedy strings identical for
93.8 % and 98.3 %; classifier classes identical for 99.5 % (both encoders), the largest
probability gap 0.09 (Transformer) and 0.12 (BiGRU), on examples the model is unsure of. int8
moves the logits by a few hundredths, which changes an argmax only where a model this briefly
trained is undecided (the float Transformer gets 32 % of the dates exactly right, the GRU 73 %:
the better trained, the higher the agreement). The bounds leave room for that, not for a broken
quantization (the tests fail, e.g., when attention reads its projection weights instead of
calling the modules).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized import dynamic as qdynamic
from torch.ao.quantization import quantize_dynamic

from heedful.data.builtin import date_charset, fixed_dates, random_dates
from heedful.data.tokenizers import CharTokenizer
from heedful.decode import greedy_decode
from heedful.models import RNNConfig, RNNEncoderDecoder, TransformerConfig, TransformerEncoderDecoder
from heedful.models.encoder_classifier import ClassifierConfig, EncoderClassifier

TEST_N = 400  # of the dates test set
HELDOUT_SEED = 20211105  # the translate task's default data.heldout_seed: its test set is seed + 1
MIN_AGREEMENT = 0.95  # classifier: identical classes
MIN_NEXT_CHAR_AGREEMENT = 0.98  # seq2seq, teacher-forced
MIN_STRING_AGREEMENT = 0.90  # seq2seq, greedy outputs
MAX_PROBABILITY_GAP = 0.25  # classifier, any class of any example
MAX_LEN = 12  # an ISO date is 10 characters, plus <eos>


def quantize(model: nn.Module) -> nn.Module:
    return quantize_dynamic(model, {nn.Linear, nn.GRU, nn.LSTM}, dtype=torch.qint8)


@pytest.fixture(scope="module")
def dates():
    """The tokenizer, a fresh training stream (it never yields a test source) and the test examples.
    Each test draws its own stream, so what it trains on does not depend on which tests ran before."""
    tok = CharTokenizer.train([date_charset()])
    test = fixed_dates(TEST_N, HELDOUT_SEED + 1)
    held_out = frozenset(e.source for e in test)
    return tok, lambda: random_dates(0, exclude=held_out), test


def train(model: nn.Module, loss_of, batches, *, steps: int, lr: float = 3e-3) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for batch in itertools.islice(batches, steps):
        loss = loss_of(model, *batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def seq2seq_batches(tok, stream, size: int = 64):
    while True:
        examples = list(itertools.islice(stream, size))
        yield tok.batch([e.source for e in examples]), tok.batch([e.target for e in examples], bos=True, eos=True)


def seq2seq_loss(model, src, tgt):
    logits = model(src, tgt[:, :-1])  # (B, T, V)
    return F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=0)


def greedy_strings(model, tok, src) -> list[str]:
    tokens, _ = greedy_decode(model, src, bos_id=tok.bos_id, eos_id=tok.eos_id, max_len=MAX_LEN)
    return [tok.decode(row) for row in tokens.tolist()]


def assert_quantized(model: nn.Module) -> None:
    """Every Linear/GRU/LSTM was swapped for its dynamic int8 module: none is left in float."""
    float_left = [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.GRU, nn.LSTM)]
    assert not float_left, float_left
    assert any(isinstance(m, qdynamic.Linear) for m in model.modules())


def transformer(tok) -> TransformerEncoderDecoder:
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=len(tok), tgt_vocab_size=len(tok), d_model=64, n_heads=4, n_encoder_layers=2,
                            n_decoder_layers=1, d_ff=128, dropout=0.0, max_len=64)  # fmt: skip
    return TransformerEncoderDecoder(cfg)


def rnn(tok) -> RNNEncoderDecoder:
    torch.manual_seed(0)
    cfg = RNNConfig(src_vocab_size=len(tok), tgt_vocab_size=len(tok), cell="gru", attention="bahdanau", embed_dim=32,
                    hidden_size=64, dropout=0.0)  # fmt: skip
    return RNNEncoderDecoder(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "steps", "lr"), [(transformer, 250, 3e-3), (rnn, 300, 6e-3)], ids=["transformer", "rnn"]
)
def test_quantized_seq2seq_models_decode_what_float32_decodes(dates, build, steps, lr):
    tok, stream, test = dates
    model = train(build(tok), seq2seq_loss, seq2seq_batches(tok, stream()), steps=steps, lr=lr)
    src = tok.batch([e.source for e in test])
    tgt = tok.batch([e.target for e in test], bos=True, eos=True)  # (N, 12): <bos> date <eos>
    with torch.no_grad():
        quantized = quantize(model)
        assert_quantized(quantized)
        expected, got = greedy_strings(model, tok, src), greedy_strings(quantized, tok, src)
        next_fp32 = model(src, tgt[:, :-1]).argmax(-1)  # (N, 11) with the gold prefix
        next_int8 = quantized(src, tgt[:, :-1]).argmax(-1)
    # The float model learned something, so agreement is not that of two constant outputs.
    accuracy = sum(e == x.target for e, x in zip(expected, test, strict=True)) / len(test)
    assert accuracy >= 0.2, accuracy
    next_char = (next_int8 == next_fp32).float().mean()
    assert next_char >= MIN_NEXT_CHAR_AGREEMENT, next_char
    strings = sum(g == e for g, e in zip(got, expected, strict=True)) / len(test)
    differing = [(g, e) for g, e in zip(got, expected, strict=True) if g != e]
    assert strings >= MIN_STRING_AGREEMENT, (strings, differing[:5])


def month_batches(tok, stream, size: int = 64):
    while True:
        examples = list(itertools.islice(stream, size))
        yield tok.batch([e.source for e in examples]), torch.tensor([int(e.target[5:7]) - 1 for e in examples])


@pytest.mark.slow
@pytest.mark.parametrize("encoder_type", ["transformer", "bigru"])
def test_a_quantized_classifier_predicts_what_float32_predicts(dates, encoder_type):
    """The month of a date (12 classes) from its source text, by our Transformer encoder with
    attention pooling, or the BiGRU."""
    tok, stream, test = dates
    torch.manual_seed(0)
    cfg = ClassifierConfig(n_classes=12, vocab_size=len(tok), encoder_type=encoder_type, pooling="attention",
                           embed_dim=32, hidden_size=64, dropout=0.0,
                           encoder={"n_encoder_layers": 2, "n_decoder_layers": 0, "d_model": 64, "n_heads": 4,
                                    "d_ff": 128, "dropout": 0.0, "max_len": 64})  # fmt: skip
    batches = month_batches(tok, stream())
    model = train(EncoderClassifier(cfg), lambda m, x, y: F.cross_entropy(m(x), y), batches, steps=150)
    tokens = tok.batch([e.source for e in test])
    labels = torch.tensor([int(e.target[5:7]) - 1 for e in test])
    with torch.no_grad():
        expected = model(tokens).softmax(-1)  # (N, 12)
        quantized = quantize(model)
        assert_quantized(quantized)
        got = quantized(tokens).softmax(-1)
    assert (expected.argmax(-1) == labels).float().mean() >= 0.5  # it learned the month
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agreement >= MIN_AGREEMENT, agreement
    assert (got - expected).abs().max() <= MAX_PROBABILITY_GAP


@pytest.mark.parametrize("packed", [False, True])
def test_quantized_linears_are_the_ones_attention_runs(packed):
    """The attention module's projections are modules it calls, not weights it reads: swapping
    them for int8 ones changes its output (a module that sliced ``q_proj.weight`` would fail on
    the quantized module, whose ``weight`` is a method, or ignore the swap)."""
    from heedful.attention import MultiHeadAttention

    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2, packed=packed).eval()
    x = torch.randn(2, 5, 16)
    quantized = quantize(attn)
    projections = [quantized.qkv_proj] if packed else [quantized.q_proj, quantized.k_proj, quantized.v_proj]
    assert all(isinstance(p, qdynamic.Linear) for p in [*projections, quantized.out_proj])
    with torch.no_grad():
        fp32, int8 = attn(x).output, quantized(x).output
    assert not torch.equal(fp32, int8)  # the int8 projections did run
    torch.testing.assert_close(int8, fp32, atol=0.05, rtol=0)


def test_int8_stores_a_shared_and_tied_embedding_once_as_int8(tmp_path):
    """One table as source embedding, target embedding and output projection (share_embeddings,
    tie_embeddings, as the joint-vocabulary Multi30k model): no float copy of it in the file,
    and the reloaded model computes bit for bit what the quantized one did."""
    from heedful.nn.int8 import load_int8, quantize_int8, save_int8

    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=300, tgt_vocab_size=300, d_model=32, n_heads=2, d_ff=64,
                            n_encoder_layers=1, n_decoder_layers=1, share_embeddings=True)  # fmt: skip
    float32 = TransformerEncoderDecoder(cfg).eval()
    quantized = quantize_int8(float32)
    save_int8(quantized, tmp_path / "w.safetensors")
    stored = safetensors.torch.load_file(str(tmp_path / "w.safetensors"))
    assert not [n for n, t in stored.items() if t.is_floating_point() and t.numel() >= 300 * 32], sorted(stored)
    reloaded = quantize_int8(TransformerEncoderDecoder(cfg).eval())
    missing, unexpected = load_int8(reloaded, tmp_path / "w.safetensors")
    assert not missing and not unexpected
    src, tgt = torch.randint(4, 300, (3, 7)), torch.randint(4, 300, (3, 5))
    with torch.no_grad():
        assert torch.equal(reloaded(src, tgt), quantized(src, tgt))
        assert not torch.equal(quantized(src, tgt), float32(src, tgt))


def test_int8_linear_computes_what_torchs_dynamic_linear_does():
    """quantize_int8 swaps Linears for Int8Linear, whose forward calls the int8 kernel directly:
    it must compute exactly what torch's dynamic Linear computes from the same packed weights."""
    from torch.ao.nn.quantized import dynamic as qdynamic

    from heedful.nn.int8 import int8_linear_class, quantize_int8

    torch.manual_seed(0)
    float32 = nn.Sequential(nn.Linear(48, 80), nn.ReLU(), nn.Linear(80, 16, bias=False)).eval()
    ours = quantize_int8(copy.deepcopy(float32))
    torchs = quantize(copy.deepcopy(float32))
    assert [type(m) for m in ours if not isinstance(m, nn.ReLU)] == [int8_linear_class()] * 2
    assert type(torchs[0]) is qdynamic.Linear and isinstance(ours[0], qdynamic.Linear)
    x = torch.randn(7, 3, 48) * 3
    with torch.no_grad():
        assert torch.equal(ours(x), torchs(x))
        assert not torch.equal(ours(x), float32(x))


@pytest.mark.slow
def test_packing_for_an_engine_holds_it_against_other_threads():
    """torch's quantized engine is process-wide: while one thread packs weights for its engine,
    another thread packing for a different one waits instead of switching it underneath."""
    import threading
    import time

    from heedful.nn.int8 import _packing_for

    supported = torch.backends.quantized.supported_engines
    first, second = [e for e in ("fbgemm", "onednn", "x86", "qnnpack") if e in supported][:2]
    default = torch.backends.quantized.engine
    seen: dict[str, list[str]] = {first: [], second: []}
    inside = threading.Event()

    def pack(engine: str, hold: float) -> None:
        with _packing_for(engine):
            inside.set()
            seen[engine].append(torch.backends.quantized.engine)
            time.sleep(hold)
            seen[engine].append(torch.backends.quantized.engine)

    holder = threading.Thread(target=pack, args=(first, 0.3))
    holder.start()
    inside.wait()
    other = threading.Thread(target=pack, args=(second, 0.6))  # would still hold it when the first looks again
    other.start()
    holder.join()
    other.join()
    assert seen == {first: [first, first], second: [second, second]}
    assert torch.backends.quantized.engine == default
