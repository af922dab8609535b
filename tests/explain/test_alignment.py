"""Alignments from attention: extraction, symmetrisation, word merging, scoring, file checks."""

import gzip

import pytest
import torch

from heedful.data.builtin import render_date
from heedful.errors import DataError
from heedful.explain.alignment import (
    AlignMethod,
    align_maps,
    alignment_scores,
    date_fields,
    directional_links,
    grow_diag_final,
    merge_pieces,
    parallel_lines,
    parse_links,
    pharaoh,
    piece_words,
    read_gold,
    symmetrize,
)


def test_aer_of_gold_against_itself_is_zero_and_of_a_disjoint_alignment_is_one():
    sure, possible = {(0, 0), (1, 2)}, {(0, 0), (1, 2), (2, 1)}
    assert alignment_scores([(sure, sure, possible)]) == {"aer": 0.0, "precision": 1.0, "recall": 1.0}
    disjoint = {(3, 3), (0, 1)}
    assert alignment_scores([(disjoint, sure, possible)]) == {"aer": 1.0, "precision": 0.0, "recall": 0.0}


def test_a_score_with_nothing_to_divide_by_is_undefined_not_perfect():
    import math

    assert all(math.isnan(v) for v in alignment_scores([]).values())  # was AER 0.0: perfect, on no data
    nothing_predicted = alignment_scores([(set(), {(0, 0)}, {(0, 0)})])
    assert math.isnan(nothing_predicted["precision"]) and nothing_predicted["recall"] == 0.0
    assert nothing_predicted["aer"] == 1.0
    no_sure_gold = alignment_scores([({(0, 0)}, set(), {(0, 0)})])
    assert math.isnan(no_sure_gold["recall"]) and no_sure_gold["precision"] == 1.0


def test_aer_follows_och_and_ney_over_a_corpus():
    # sentence 1: A = {00, 11, 22}, S = {00, 11}, P = S + {22}; sentence 2: A = {01}, S = {00}, P = S
    items = [({(0, 0), (1, 1), (2, 2)}, {(0, 0), (1, 1)}, {(2, 2)}), ({(0, 1)}, {(0, 0)}, set())]
    scores = alignment_scores(items)
    # |A| = 4, |S| = 3, |A∩S| = 2, |A∩P| = 3 (P includes S)
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["aer"] == pytest.approx(1 - (2 + 3) / (4 + 3))


def test_extraction_from_a_hand_built_attention_matrix_gives_the_known_pairs():
    # rows: 3 target words, columns: 4 source words
    weights = torch.tensor(
        [
            [0.70, 0.10, 0.10, 0.10],  # t0 -> s0
            [0.05, 0.05, 0.45, 0.45],  # t1 -> s2 and s3 share it (argmax takes the first)
            [0.10, 0.80, 0.05, 0.05],  # t2 -> s1
        ]
    )
    assert directional_links(weights, "target") == {(0, 0), (2, 1), (1, 2)}
    assert directional_links(weights, "target", "threshold", 0.4) == {(0, 0), (2, 1), (3, 1), (1, 2)}
    # columns: s0 -> t0, s1 -> t2, s2 -> t1, s3 -> t1
    assert directional_links(weights, "source") == {(0, 0), (1, 2), (2, 1), (3, 1)}
    assert align_maps(weights, [0, 1, 2], [0, 1, 2, 3], AlignMethod(direction="intersection")) == {
        (0, 0),
        (1, 2),
        (2, 1),
    }


def test_grow_diag_final_on_a_hand_made_case():
    # source -> target: each source word's choice; target -> source: each target word's choice
    s2t = {(0, 0), (1, 1), (2, 1), (3, 3)}
    t2s = {(0, 0), (1, 1), (2, 2), (0, 3)}
    # intersection {00, 11}; grow: (2,1) beside (1,1) (source 2 unaligned), then (2,2) diagonal
    # to (1,1) (target 2 unaligned), then (3,3) diagonal to (2,2); final: (0,3) has both ends
    # aligned by then, so it stays out.
    assert grow_diag_final(s2t, t2s) == {(0, 0), (1, 1), (2, 1), (2, 2), (3, 3)}
    assert symmetrize(s2t, t2s, "intersection") == {(0, 0), (1, 1)}
    assert symmetrize(s2t, t2s, "union") == s2t | t2s
    # final: a link far from the others joins when one of its words is unaligned
    assert grow_diag_final({(0, 0)}, {(0, 0), (5, 4)}) == {(0, 0), (5, 4)}
    assert grow_diag_final({(0, 0)}, {(0, 0), (0, 4)}) == {(0, 0), (0, 4)}  # target 4 unaligned is enough


def test_pieces_merge_into_words():
    assert piece_words(["▁The", "▁cat", "s", "▁", "!"]) == [0, 1, 1, None, 2]
    assert piece_words(list("ab c")) == [0, 0, None, 1]
    # target pieces [0, 0, 1], source pieces [0, 1, 1]: sum over source pieces, mean over target ones
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [1.0, 0.0, 0.0]])
    merged = merge_pieces(weights, [0, 0, 1], [0, 1, 1])
    torch.testing.assert_close(merged, torch.tensor([[0.4, 0.6], [1.0, 0.0]]))


def test_pharaoh_and_gold_parsing():
    assert pharaoh({(2, 1), (0, 0)}) == "0-0 2-1"
    sure, possible = parse_links("1-1 2p3 4?4", one_based=True)
    assert sure == {(0, 0)} and possible == {(0, 0), (1, 2), (3, 3)}
    with pytest.raises(DataError, match=r"gold line 3: 'x-1' is not a link"):
        parse_links("1-1 x-1", where="gold line 3")


def test_date_fields_give_each_iso_field_its_source_span():
    example = render_date(__import__("datetime").date(2021, 3, 5), "de_DE", "d. MMMM y")
    assert example.source == "5. März 2021"
    target, source, gold = date_fields(example)
    assert target == [0, 0, 0, 0, None, 1, 1, None, 2, 2]
    assert source == [2, None, None, 1, 1, 1, 1, None, 0, 0, 0, 0]
    assert gold == {(0, 0), (1, 1), (2, 2)}


def test_parallel_lines_refuse_mismatched_or_empty_lines(tmp_path):
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("a b\nc\n", encoding="utf-8")
    tgt.write_text("x\ny z\n", encoding="utf-8")
    assert list(parallel_lines(src, tgt)) == [("a b", "x"), ("c", "y z")]
    tgt.write_text("x\ny z\nw\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"tgt.txt line 3: .*src.txt has only 2 lines"):
        list(parallel_lines(src, tgt))
    tgt.write_text("x\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"tgt.txt line 2: empty line"):
        list(parallel_lines(src, tgt))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"/folder: is a folder; expected a text file"):  # it said "no such file"
        list(parallel_lines(src, tmp_path / "folder"))
    with pytest.raises(DataError, match=r"missing.txt: no such file"):
        list(parallel_lines(tmp_path / "missing.txt", tgt))


def test_parallel_lines_read_gzip_as_plain_text_and_refuse_a_broken_one(tmp_path):
    src, tgt = tmp_path / "src.txt.gz", tmp_path / "tgt.txt"
    src.write_bytes(gzip.compress("a b\nc ü\n".encode()))
    tgt.write_text("x\ny z\n", encoding="utf-8")
    assert list(parallel_lines(src, tgt)) == [("a b", "x"), ("c ü", "y z")]
    src.write_bytes(gzip.compress(b"a b\nc\nd\n")[:-12])  # cut: the end of the stream is missing
    with pytest.raises(DataError, match=r"src.txt.gz: not a readable gzip file"):
        list(parallel_lines(src, tgt))
    src.write_bytes(gzip.compress(b"a b\n\xff\n"))
    with pytest.raises(DataError, match=r"src.txt.gz line 2: not valid UTF-8"):
        list(parallel_lines(src, tgt))


def test_gold_pairs_from_the_awesome_align_layout(tmp_path):
    text, gold = tmp_path / "enfr.src-tgt", tmp_path / "enfr.gold"
    text.write_text("oh , oh !   ||| oh , oh !  \nthe cat ||| le  chat\n", encoding="utf-8")
    gold.write_text("1-1 2p2 4-4\n2-2 1p1 1p2\n", encoding="utf-8")
    first, second = read_gold(text, gold)
    assert (first.source, first.target) == ("oh , oh !", "oh , oh !")
    assert first.sure == {(0, 0), (3, 3)} and first.possible == {(0, 0), (1, 1), (3, 3)}
    assert (second.source, second.target) == ("the cat", "le chat")
    assert second.sure == {(1, 1)} and second.possible == {(1, 1), (0, 0), (0, 1)}


@pytest.mark.parametrize(
    ("text", "gold", "message"),
    [
        ("a b ||| x\n", "1-1\n3-1\n", r"enfr.gold line 2: .*enfr.src-tgt has only 1 line;"),
        ("a b ||| x\nc\n", "1-1\n1-1\n", r"enfr.src-tgt line 2: expected 'source words \|\|\| target words'"),
        ("a b ||| x\n", "3-1\n", r"enfr.gold line 1: link 3-1 outside the sentence \(2 source words, 1 target"),
        ("a b ||| x\n", "1-1 2x1\n", r"enfr.gold line 1: '2x1' is not a link"),
    ],
)
def test_gold_refuses_what_does_not_fit(tmp_path, text, gold, message):
    with pytest.raises(DataError, match=r"enfr.src-tgt: no such file"):
        read_gold(tmp_path / "enfr.src-tgt", tmp_path / "enfr.gold")
    (tmp_path / "enfr.src-tgt").write_text(text, encoding="utf-8")
    (tmp_path / "enfr.gold").write_text(gold, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_gold(tmp_path / "enfr.src-tgt", tmp_path / "enfr.gold")


def test_date_field_links_from_a_hand_built_attention_map():
    from heedful.explain.alignment import AlignmentCounts, add_date_field_links

    example = render_date(__import__("datetime").date(2021, 3, 5), "de_DE", "d. MMMM y")  # "5. März 2021"
    weights = torch.zeros(1, 2, 11, 12)  # (B, H, T + 1, S): row j predicts target character j
    weights[0, :, 0, 8] = 1.0  # the year's first digit looks at "2021"
    weights[0, :, 5, 3] = 1.0  # the month's at "März"
    weights[0, :, 8, 0] = 1.0  # the day's at "5"
    counts = AlignmentCounts()
    add_date_field_links(weights, [example], counts)
    assert counts.scores()["aer"] == 0.0
    weights[0, :, 8] = 0.0
    weights[0, :, 8, 9] = 1.0  # the day's first digit looks at the year: one wrong link of three
    counts = AlignmentCounts()
    add_date_field_links(weights, [example], counts)
    assert counts.scores()["aer"] == pytest.approx(1 - (2 + 2) / (3 + 3))


def test_gold_attention_spreads_each_linked_target_piece_over_its_source_words_pieces():
    from heedful.explain.alignment import gold_attention, piece_words

    source = piece_words(["▁the", "▁do", "g", "▁runs", "."])  # words 0, 1, 1, 2, 2
    target = piece_words(["▁der", "▁Hu", "nd", "▁ren", "nt", "▁", "."])  # 0, 1, 1, 2, 2, None, 3
    links = {(0, 0), (1, 1), (0, 1), (2, 2)}  # "Hund" links to "the" and "dog"; "." (word 3) to nothing
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # der -> the
            [1 / 3, 1 / 3, 1 / 3, 0, 0],  # Hu -> the, do, g
            [1 / 3, 1 / 3, 1 / 3, 0, 0],  # nd -> the, do, g
            [0, 0, 0, 1 / 2, 1 / 2],  # ren -> runs, .
            [0, 0, 0, 1 / 2, 1 / 2],  # nt
            [0, 0, 0, 0, 0],  # a bare ▁: no word
            [0, 0, 0, 0, 0],  # . : a word without links
        ]
    )
    torch.testing.assert_close(gold_attention(links, target, source), want)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layers": 10}, r"^AlignMethod layers=10: a tuple of numbers, e\.g\. \(0, 2\), or None for all$"),
        ({"heads": ()}, r"^AlignMethod heads=\(\): a tuple of numbers"),
        ({"heads": ("1",)}, r"^AlignMethod heads=\('1',\): a tuple of numbers"),
        ({"extract": "bogus"}, r"^AlignMethod extract='bogus': one of argmax, threshold$"),
        ({"direction": "bogus"}, r"^AlignMethod direction='bogus': one of grow-diag-final, intersection, union,"),
        ({"threshold": 0}, r"^AlignMethod threshold=0: an attention weight in \(0, 1\]$"),
        ({"threshold": float("nan")}, r"^AlignMethod threshold=nan"),
    ],
)
def test_an_align_method_is_checked_when_built(fields, message):
    """Each was accepted, then failed with a bare TypeError or ValueError inside the first alignment."""
    from heedful.errors import UserError

    with pytest.raises(UserError, match=message):
        AlignMethod(**fields)
    assert AlignMethod(layers=[0, -1], heads=(1,)).layers == (0, -1)  # a list is kept as a tuple


@pytest.fixture(scope="module")
def subword_tok():
    from heedful.data.tokenizers import SentencePieceTokenizer

    lines = ["the cat sat on the mat", "a dog ran in the park", "der Hund lief im Park", "die Katze saß"] * 20
    return SentencePieceTokenizer.train(lines, vocab_size=300)


@pytest.mark.parametrize("dropped", ["\x07", "\ufeff", "▁", "\u200b"])
def test_a_word_the_tokenizer_drops_keeps_its_number_and_so_do_the_words_after_it(subword_tok, dropped):
    from heedful.explain.alignment import encode_words

    ids, words = encode_words(subword_tok, f"the cat {dropped} sat")
    plain_ids, plain_words = encode_words(subword_tok, "the cat sat")
    assert ids == plain_ids == subword_tok.encode("the cat sat")  # the model reads what it reads anyway
    assert words == [w + (w >= 2) if w is not None else None for w in plain_words]
    assert 3 in words and 2 not in words
    # a character tokenizer: a literal ▁ inside a word is no word boundary
    from heedful.data.tokenizers import CharTokenizer

    chars = CharTokenizer.train(["a▁b c"])
    assert encode_words(chars, "a▁b c") == (chars.encode("a▁b c"), [0, None, 0, None, 1])


def test_forced_alignment_counts_a_dropped_word_on_either_side(subword_tok):
    """The same ids reach the model with and without the dropped word, so the links must be the
    same but for the word numbers after it."""
    from heedful.explain.alignment import forced_alignments
    from heedful.models.transformer import TransformerConfig, TransformerEncoderDecoder

    torch.manual_seed(0)
    size = len(subword_tok)
    config = TransformerConfig(src_vocab_size=size, tgt_vocab_size=size, d_model=16, n_heads=2, d_ff=32,
                               n_encoder_layers=1, n_decoder_layers=1, dropout=0.0, max_len=64)  # fmt: skip
    model = TransformerEncoderDecoder(config)
    pairs = [
        ("the cat sat on the mat", "die Katze saß"),
        ("the cat \x07 sat on the mat", "die \ufeff Katze saß"),
    ]
    # grow-diag-final is left out: it grows along neighbouring positions, which the gap moves
    for direction in ("union", "intersection", "target", "source"):
        plain, dropped = forced_alignments(model, subword_tok, subword_tok, pairs, AlignMethod(direction=direction))
        assert plain and dropped == {(s + (s >= 2), t + (t >= 1)) for s, t in plain}, direction
    _, dropped = forced_alignments(model, subword_tok, subword_tok, pairs, AlignMethod())
    assert {s for s, _ in dropped} <= {0, 1, 3, 4, 5, 6} and {t for _, t in dropped} <= {0, 2, 3}


def test_a_head_named_twice_counts_once_as_a_layer_does():
    from heedful.explain.alignment import method_map

    torch.manual_seed(0)
    maps = {"decoder.layers.0.cross_attn": torch.rand(2, 4, 3)}  # (H, T + 1, S)
    names = ["decoder.layers.0.cross_attn"]
    once = method_map(maps, names, AlignMethod(heads=(0, 1)))
    for heads in ((0, 0, 1), (0, 1, -1), (1, 0)):
        torch.testing.assert_close(method_map(maps, names, AlignMethod(heads=heads)), once)
    torch.testing.assert_close(once, maps[names[0]].mean(0)[:-1])
