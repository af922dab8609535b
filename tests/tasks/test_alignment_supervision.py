"""alignment_supervision (Garg et al. 2019): a head of the translate model trained toward word
links. A synthetic corpus whose links are known by construction (phrase to phrase), the tiny
config of test_translate_parallel.py."""

import gzip
import random
from pathlib import Path

import pytest
import torch

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
    assert "left out 1 of 160" in capsys.readouterr().err  # the long pair is gone: indices shift after it
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
