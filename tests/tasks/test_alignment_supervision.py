"""alignment_supervision (Garg et al. 2019): a head of the translate model trained toward word
links. A synthetic corpus whose links are known by construction (phrase to phrase), the tiny
config of test_translate_parallel.py."""

import gzip
import random
from pathlib import Path

import pytest
import torch
from torch import Tensor

import heedful.tasks.alignment_supervision as supervision
from heedful.errors import DataError
from heedful.explain.alignment import gold_attention, piece_words
from heedful.nn.losses import smoothed_cross_entropy
from heedful.tasks import get_task
from heedful.train import fit
from tests.tasks.test_translate_parallel import PLACES, SUBJECTS, VERBS, config


def linked_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(en, de, links): each word linked to every word of its phrase's translation."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrases = [p for p in (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(PLACES)) if p[0]]
        links, s0, t0 = [], 0, 0
        for en, de in phrases:
            ns, nt = len(en.split()), len(de.split())
            links += [f"{s0 + i}-{t0 + j}" for i in range(ns) for j in range(nt)]
            s0, t0 = s0 + ns, t0 + nt
        en = " ".join(p[0] for p in phrases) + "."
        de = " ".join(p[1] for p in phrases) + "."
        out.append((en[0].upper() + en[1:], de[0].upper() + de[1:], " ".join(links)))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("linked")
    for split, n, seed in (("train", 160, 0), ("val", 12, 1), ("test", 12, 2)):
        triples = linked_pairs(n, seed)
        if split == "train":  # one long pair, dropped by data.max_tokens below: later lines must keep their links
            triples[7] = (" ".join(["the dog"] * 30) + ".", " ".join(["der Hund"] * 30) + ".", "0-0")
        for lang, side in (("en", 0), ("de", 1)):
            (root / f"{split}.{lang}.gz").write_bytes(gzip.compress("".join(t[side] + "\n" for t in triples).encode()))
        if split == "train":
            (root / "train.links").write_text("".join(t[2] + "\n" for t in triples))
    return root


def supervised(corpus: Path, run_dir: Path, **extra):
    sup = {"alignment_supervision.path": str(corpus / "train.links"), "alignment_supervision.weight": 0.5}
    return config(corpus, run_dir, **{"data.max_tokens": 40, **sup, **extra})


def built(cfg):
    torch.manual_seed(0)
    task = get_task("translate")(cfg)
    data = task.build_data(cfg)
    model = task.build_model(cfg, data)
    return task, data, model


def test_each_batch_carries_its_own_pairs_links_through_filtering_and_shuffling(corpus, tmp_path, capsys):
    task, data, _ = built(supervised(corpus, tmp_path / "run"))
    data.train.steps_per_epoch()  # reads and filters the pairs
    (said,) = [line for line in capsys.readouterr().err.splitlines() if "left out" in line]
    assert said.startswith("heedful: note: ") and "left out 1 of 160" in said  # the long pair is gone: indices shift
    by_text = {(en, de): links for en, de, links in linked_pairs(160, 0)}
    for batch in data.train.batches(epoch=1):
        for row in range(batch["src"].shape[0]):
            src = [int(i) for i in batch["src"][row] if i != task.src_tok.pad_id]
            tgt = [int(i) for i in batch["tgt_out"][row] if i != task.tgt_tok.pad_id][:-1]  # without <eos>
            links = by_text[(task.src_tok.decode(src), task.tgt_tok.decode(tgt))]
            pairs = {tuple(map(int, link.split("-"))) for link in links.split()}
            src_words = piece_words([task.src_tok.id_to_piece(i) for i in src])
            tgt_words = piece_words([task.tgt_tok.id_to_piece(i) for i in tgt])
            want = gold_attention(pairs, tgt_words, src_words)  # (T, S)
            gold = batch["alignment"][row]
            torch.testing.assert_close(gold[: len(tgt), : len(src)], want)
            assert float(gold.sum()) == pytest.approx(float(want.sum()))  # nothing on padding or <eos>


def test_a_few_steps_lower_the_alignment_loss_and_move_the_head_to_the_links(corpus, tmp_path):
    task, data, model = built(supervised(corpus, tmp_path / "run"))
    batch = next(iter(data.train.batches(epoch=1)))
    gold = batch["alignment"]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    name = model.cross_attention_name(-1)

    def on_links() -> float:  # the head's mean attention on gold pieces, over the linked rows
        from heedful.explain.capture import capture

        model.eval()
        with torch.no_grad(), capture(model, only=[name]) as seen:
            model(batch["src"], batch["tgt_in"])
        model.train()
        head = seen[name][:, 0]  # (B, T, S)
        rows = gold.sum(-1) > 0
        return float(((head * (gold > 0)).sum(-1))[rows].mean())

    before_mass = on_links()
    losses = []
    model.train()
    for _ in range(50):
        loss, stats = task.loss(model, batch)
        losses.append(stats["alignment_loss"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rows = gold.sum(-1) > 0
    floor = float(-(gold * gold.clamp_min(1e-12).log()).sum() / rows.sum())  # the gold's own entropy: the minimum
    assert losses[-1] - floor < 0.5 * (losses[0] - floor)
    assert on_links() > before_mass + 0.3


def test_without_supervision_the_loss_and_the_batches_are_as_before(corpus, tmp_path, monkeypatch):
    cfg_off = config(corpus, tmp_path / "off", **{"data.max_tokens": 40})
    task_off, data_off, model = built(cfg_off)
    task_on, data_on, _ = built(supervised(corpus, tmp_path / "on"))
    batch_off = next(iter(data_off.train.batches(epoch=0)))
    batch_on = next(iter(data_on.train.batches(epoch=0)))
    assert "alignment" not in batch_off and set(batch_on) == {*batch_off, "alignment"}
    for key in batch_off:
        assert torch.equal(batch_off[key], batch_on[key])
    model.eval()  # no dropout: the two losses see the same network
    real = batch_off["tgt_out"] != task_off.tgt_tok.pad_id
    logits = model(batch_off["src"], batch_off["tgt_in"], keep=real)
    want, _ = smoothed_cross_entropy(logits, batch_off["tgt_out"][real], cfg_off.train.label_smoothing)

    monkeypatch.setattr(supervision, "capture", lambda *a, **k: pytest.fail("no capture without supervision"))
    loss, stats = task_off.loss(model, batch_off)
    assert torch.equal(loss, want) and "alignment_loss" not in stats
    monkeypatch.undo()
    loss_on, stats_on = task_on.loss(model, batch_on)  # the supervised module ran the math path
    torch.testing.assert_close(loss_on - 0.5 * stats_on["alignment_loss"], want, rtol=1e-5, atol=1e-5)
    assert stats_on["loss"] == pytest.approx(stats["loss"], rel=1e-5)


def test_an_alignment_file_of_the_wrong_length_or_with_foreign_links_is_one_line(corpus, tmp_path):
    short = tmp_path / "short.links"
    short.write_text("".join(line + "\n" for line in (corpus / "train.links").read_text().splitlines()[:-1]))
    run_dir = tmp_path / "run"
    with pytest.raises(DataError) as error:
        fit(supervised(corpus, run_dir, **{"alignment_supervision.path": str(short)}))
    assert str(error.value).startswith(f"{short}: 159 lines of alignments, but ")
    assert "\n" not in str(error.value) and not run_dir.exists()

    foreign = tmp_path / "foreign.links"
    lines = (corpus / "train.links").read_text().splitlines()
    lines[2] = "0-0 9-1"  # the third pair has fewer than ten English words
    foreign.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError, match=rf"^{foreign} line 3: link 9-1, but the pair has \d source"):
        fit(supervised(corpus, run_dir, **{"alignment_supervision.path": str(foreign)}))
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def subword_tok():
    from heedful.data.tokenizers import SentencePieceTokenizer

    lines = ["the cat sat on the mat", "a dog ran in the park", "der Hund lief im Park", "die Katze saß"] * 20
    return SentencePieceTokenizer.train(lines, vocab_size=300)


def gold_of(subword_tok, source: str, target: str, links: str, tmp_path: Path) -> tuple[Tensor, list[int]]:
    """The gold attention (T, S) that training gives the pair, and its source ids."""
    from heedful.data.parallel import Pair
    from heedful.tasks.translate_config import AlignmentSupervision

    cfg = AlignmentSupervision(path=tmp_path / "train.links")
    supervisor = supervision.AlignmentSupervisor(cfg, [links])
    encoded = [(subword_tok.encode(source), subword_tok.encode(target))]  # the training ids, as training_batches makes
    (pair,) = supervisor.pair_links([Pair(source, target, 1)], encoded, subword_tok, subword_tok)
    batch = {"src": torch.tensor([encoded[0][0]]), "tgt_out": torch.tensor([[*encoded[0][1], 2]])}  # <eos> at the end
    return supervisor.gold(batch, [pair])[0, :-1], encoded[0][0]


@pytest.mark.parametrize("dropped", ["\x07", "\ufeff", "▁", "\u200b"])
@pytest.mark.parametrize("links", ["0-0 3-3", "0-0 1-1 3-3 4-2"])  # the first was silently shifted, the second refused
def test_a_word_the_tokenizer_drops_moves_no_later_link(subword_tok, dropped, links, tmp_path, capsys):
    """Words are counted as heedful align counts them (line.split()): a word with no pieces keeps
    its number, so the links after it land on the pieces of the same words as with a real word
    (links to "sat"/"saß" and "mat"/"im", after the third word of both sides)."""
    plain, plain_src = gold_of(subword_tok, "the cat dog sat mat", "die Katze Hund saß im", links, tmp_path)
    gold, src = gold_of(subword_tok, f"the cat {dropped} sat mat", f"die Katze {dropped} saß im", links, tmp_path)
    dog = len(subword_tok.encode("the cat dog")) - len(subword_tok.encode("the cat"))
    hund = len(subword_tok.encode("die Katze Hund")) - len(subword_tok.encode("die Katze"))
    start_s, start_t = len(subword_tok.encode("the cat")), len(subword_tok.encode("die Katze"))
    assert src == plain_src[:start_s] + plain_src[start_s + dog :]  # the training ids: the dropped word has none
    keep_t = [j for j in range(plain.shape[0]) if not start_t <= j < start_t + hund]
    keep_s = [s for s in range(plain.shape[1]) if not start_s <= s < start_s + dog]
    torch.testing.assert_close(gold, plain[keep_t][:, keep_s])  # the same pieces of the same words
    assert gold.sum() > 0 and "warning" not in capsys.readouterr().err


def test_a_pair_whose_ids_differ_word_by_word_trains_without_links_and_says_so(subword_tok, tmp_path, capsys):
    from heedful.data.parallel import Pair
    from heedful.tasks.translate_config import AlignmentSupervision

    cfg = AlignmentSupervision(path=tmp_path / "train.links")
    supervisor = supervision.AlignmentSupervisor(cfg, ["0-0 1-1", "0-0 1-1"])
    pairs = [Pair("the cat", "die Katze", 1), Pair("the cat", "die Katze", 2)]
    ids = (subword_tok.encode("the cat"), subword_tok.encode("die Katze"))
    odd = (ids[0][::-1], ids[1])  # as if the whole line were segmented otherwise than its words
    kept, skipped = supervisor.pair_links(pairs, [ids, odd], subword_tok, subword_tok)
    assert kept.links == {(0, 0), (1, 1)} and skipped.links == frozenset()
    assert skipped.source_words == [None] * len(odd[0]) and skipped.target_words == [None] * len(odd[1])
    err = capsys.readouterr().err
    assert err == (
        f"heedful: warning: {cfg.path}: 1 training pair left unsupervised (line 2): the tokenizer encodes the text "
        "differently word by word than whole, so the links cannot be placed on its pieces\n"
    )


def test_the_unsupervised_pairs_warning_is_said_once_per_machine_under_torchrun(subword_tok, tmp_path, capsys,
                                                                                monkeypatch):  # fmt: skip
    """Every process reads the same pairs: the second process of a machine stays silent, as errors.warn has it."""
    from heedful.data.parallel import Pair
    from heedful.tasks.translate_config import AlignmentSupervision

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = AlignmentSupervision(path=tmp_path / "train.links")
    supervisor = supervision.AlignmentSupervisor(cfg, ["0-0 1-1"])
    ids = (subword_tok.encode("the cat")[::-1], subword_tok.encode("die Katze"))
    (skipped,) = supervisor.pair_links([Pair("the cat", "die Katze", 1)], [ids], subword_tok, subword_tok)
    assert skipped.links == frozenset() and capsys.readouterr().err == ""
