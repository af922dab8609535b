"""Tokenizers: sentencepiece trained on a tiny corpus, characters, and their shared interface."""

import pytest
import torch

from heedful.data.tokenizers import (
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    content_ids,
    load_tokenizers,
    pad_ids,
    save_tokenizers,
)
from heedful.data.vocab import CharVocab
from heedful.errors import CheckpointError, ConfigError

CORPUS = [
    "A man in a blue shirt is riding a bike.",
    "Two dogs are playing in the snow.",
    "A little girl climbs into a wooden playhouse.",
    "Ein Mann in einem blauen Hemd fährt Fahrrad.",
    "Zwei Hunde spielen im Schnee.",
    "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
] * 4


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def spm(request):
    return SentencePieceTokenizer.train(CORPUS, vocab_size=400, model_type=request.param)


def test_specials_have_the_char_vocab_ids(spm):
    for name in ("pad_id", "bos_id", "eos_id", "unk_id"):
        assert getattr(spm, name) == getattr(CharVocab, name)
    assert [spm.id_to_piece(i) for i in range(4)] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert isinstance(spm, Tokenizer) and isinstance(CharTokenizer("ab"), Tokenizer)


@pytest.mark.parametrize(
    "text",
    [
        "A man is riding a bike.",
        "Ein Mädchen spielt im Schnee.",
        "Unseen: øÅ ß 北京 🚲 — “quotes” ¿",  # never in training: spelled as UTF-8 bytes
    ],
)
def test_round_trip_without_unknowns(spm, text):
    ids = spm.encode(text)
    assert spm.unk_id not in ids
    assert spm.decode(ids) == text
    assert len(spm.pieces(text)) == len(ids)


def test_normalization_is_configurable():
    nfkc = SentencePieceTokenizer.train(CORPUS, vocab_size=300)
    identity = SentencePieceTokenizer.train(CORPUS, vocab_size=300, normalization="identity")
    assert nfkc.decode(nfkc.encode("½ ﬁne")) == "1⁄2 fine"  # NFKC folds compatibility characters
    assert identity.decode(identity.encode("½ ﬁne")) == "½ ﬁne"


def test_encode_frames_and_decode_stops_at_eos(spm):
    ids = spm.encode("Two dogs.", bos=True, eos=True)
    assert ids[0] == spm.bos_id and ids[-1] == spm.eos_id
    assert spm.decode([*ids, *spm.encode("ignored")]) == "Two dogs."
    batch = spm.batch(["Two dogs.", "A man in a blue shirt."], eos=True)
    assert batch.dtype == torch.long and batch.shape[0] == 2
    assert (batch[0] == spm.pad_id).any() or (batch[1] == spm.pad_id).any()


def test_vocab_size_is_an_upper_bound_and_too_small_is_a_config_error():
    small = SentencePieceTokenizer.train(CORPUS, vocab_size=8000)
    assert 4 + 256 < len(small) < 8000  # what this corpus supports: specials, bytes and a few pieces
    with pytest.raises(ConfigError, match=r"data\.tokenizer.*vocab"):
        SentencePieceTokenizer.train(CORPUS, vocab_size=50)


def test_training_is_deterministic():
    a = SentencePieceTokenizer.train(CORPUS, vocab_size=300)
    b = SentencePieceTokenizer.train(CORPUS, vocab_size=300)
    assert a.proto == b.proto


@pytest.mark.parametrize("joint", [True, False])
def test_save_and_load_give_identical_ids(spm, tmp_path, joint):
    tgt = spm if joint else SentencePieceTokenizer.train(CORPUS[3:6] * 4, vocab_size=300)
    save_tokenizers(tmp_path, spm, tgt)
    src2, tgt2 = load_tokenizers(tmp_path)
    assert (src2 is tgt2) == joint
    for text in [*CORPUS[:6], "øÅ 北京"]:
        assert src2.encode(text) == spm.encode(text)
        assert tgt2.encode(text) == tgt.encode(text)
    expected = {"tokenizers.json", "spm.model"} if joint else {"tokenizers.json", "src.model", "tgt.model"}
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_char_tokenizer_speaks_the_same_interface(tmp_path):
    tok = CharTokenizer.train(["ab", "ba c"])
    assert len(tok) == 4 + 4  # specials, then ' ', a, b, c (sorted)
    assert tok.decode(tok.encode("cab", bos=True, eos=True)) == "cab"
    assert tok.encode("z") == [tok.unk_id]
    assert tok.pieces("ab") == ["a", "b"] and tok.id_to_piece(tok.encode("c")[0]) == "c"
    save_tokenizers(tmp_path, tok, tok)
    again, _ = load_tokenizers(tmp_path)
    assert isinstance(again, CharTokenizer) and again.itos == tok.itos


def test_folders_from_before_tokenizers_json_load_as_characters(tmp_path):
    CharVocab("abc").save(tmp_path / "src_vocab.json")
    CharVocab("xyz").save(tmp_path / "tgt_vocab.json")
    src, tgt = load_tokenizers(tmp_path)
    assert src.decode(src.encode("cab")) == "cab" and tgt.kind == "char"


def test_a_broken_model_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="bad.model"):
        SentencePieceTokenizer.load(tmp_path / "bad.model")
    with pytest.raises(CheckpointError, match="missing"):
        SentencePieceTokenizer.load(tmp_path / "none.model")


def test_helpers():
    assert pad_ids([[5, 6, 7], [8]]).tolist() == [[5, 6, 7], [8, 0, 0]]
    assert pad_ids([[]]).shape == (1, 1)
    assert content_ids([1, 5, 3, 6, 2, 7]) == [5, 6]
