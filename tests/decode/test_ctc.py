import itertools
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from heedful.decode.ctc import ctc_beam_decode, ctc_greedy_decode, digit_error_rate, sentence_accuracy

_ = 0  # blank


def frames(*rows: list[float]) -> torch.Tensor:
    """Per-frame probabilities (rows sum to 1) → log-probabilities (T, V)."""
    probs = torch.tensor(rows, dtype=torch.float64)
    assert torch.allclose(probs.sum(-1), torch.ones(len(rows), dtype=torch.float64))
    return probs.log()


def one_hot_path(path: list[int], vocab: int = 4, confidence: float = 0.9) -> torch.Tensor:
    """A matrix whose best path is ``path``: each frame puts ``confidence`` on its symbol."""
    rest = (1 - confidence) / (vocab - 1)
    return frames(*[[confidence if k == s else rest for k in range(vocab)] for s in path])


def collapse(alignment: tuple[int, ...], blank: int = 0) -> tuple[int, ...]:
    return tuple(k for k, _group in itertools.groupby(alignment) if k != blank)


def brute_force(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Every label sequence's total probability, summed over all V^T alignments (log)."""
    T, V = log_probs.shape
    total: dict[tuple[int, ...], float] = defaultdict(float)
    for alignment in itertools.product(range(V), repeat=T):
        total[collapse(alignment)] += math.exp(sum(float(log_probs[t, k]) for t, k in enumerate(alignment)))
    return {seq: math.log(p) for seq, p in total.items()}


# ---------------------------------------------------------------------------------------------
# Greedy


def test_greedy_collapses_repeats_and_drops_blanks():
    assert ctc_greedy_decode(one_hot_path([1, _, 1])) == [[1, 1]]  # "1 _ 1" → 11
    assert ctc_greedy_decode(one_hot_path([1, 1])) == [[1]]  # "1 1" → 1
    assert ctc_greedy_decode(one_hot_path([_, 3, 3, _, _, 2, 1, 1, _, 1, _])) == [[3, 2, 1, 1]]
    assert ctc_greedy_decode(one_hot_path([_, _, _])) == [[]]


def test_greedy_batches_with_lengths_and_another_blank():
    batch = torch.stack([one_hot_path([1, _, 2, 2]), one_hot_path([3, 3, 1, 2])])  # (2, 4, 4)
    assert ctc_greedy_decode(batch) == [[1, 2], [3, 1, 2]]
    assert ctc_greedy_decode(batch, lengths=torch.tensor([4, 2])) == [[1, 2], [3]]
    assert ctc_greedy_decode(batch, blank=3) == [[1, 0, 2], [1, 2]]  # 0 is a label now
    with pytest.raises(ValueError, match="lengths"):
        ctc_greedy_decode(batch, lengths=torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="blank id 4"):
        ctc_greedy_decode(batch, blank=4)


# ---------------------------------------------------------------------------------------------
# Beam search


def test_beam_finds_the_sequence_greedy_misses():
    # Each frame: blank 0.6, "1" 0.4. The best path is "_ _" → "" (0.36), but "1" has three
    # alignments (1 1, 1 _, _ 1) worth 0.16 + 0.24 + 0.24 = 0.64.
    log_probs = frames([0.6, 0.4], [0.6, 0.4])
    assert ctc_greedy_decode(log_probs) == [[]]
    (best, score), *_rest = ctc_beam_decode(log_probs, beam_size=4)
    assert best == [1] and score == pytest.approx(math.log(0.64))
    assert brute_force(log_probs)[(1,)] == pytest.approx(score)


def test_beam_ranks_by_total_probability_against_brute_force():
    # Three labels, five frames; greedy reads "1 _ 2 _ 2" but "12" wins once alignments add up.
    log_probs = frames(
        [0.30, 0.40, 0.15, 0.15],
        [0.45, 0.35, 0.10, 0.10],
        [0.30, 0.10, 0.35, 0.25],
        [0.40, 0.05, 0.30, 0.25],
        [0.30, 0.05, 0.38, 0.27],
    )
    greedy = ctc_greedy_decode(log_probs)[0]
    exact = brute_force(log_probs)
    best_seq = max(exact, key=exact.get)
    hyps = ctc_beam_decode(log_probs, beam_size=8)
    assert hyps[0][0] == list(best_seq) and greedy != list(best_seq)
    assert exact[best_seq] > exact[tuple(greedy)]
    assert hyps[0][1] == pytest.approx(exact[best_seq], abs=1e-9)
    assert [s for _, s in hyps] == sorted((s for _, s in hyps), reverse=True)


def test_an_unpruned_beam_gives_every_sequence_its_exact_probability():
    torch.manual_seed(0)
    log_probs = torch.randn(6, 3, dtype=torch.float64).log_softmax(-1)  # (T, V)
    exact = brute_force(log_probs)
    hyps = ctc_beam_decode(log_probs, beam_size=1000)  # larger than the 127 possible prefixes
    assert {tuple(seq) for seq, _ in hyps} == set(exact)
    for seq, score in hyps:
        assert score == pytest.approx(exact[tuple(seq)], abs=1e-9)
    # torch's CTC loss is -log P(labels): an independent check of the same sums
    labels, score = hyps[0]
    loss = F.ctc_loss(log_probs[:, None], torch.tensor([labels]), [6], [len(labels)], reduction="none")
    assert -float(loss) == pytest.approx(score, abs=1e-9)


def test_beam_size_one():
    peaky = one_hot_path([_, 2, 2, _, 2, 3, _])
    hyps = ctc_beam_decode(peaky, beam_size=1)
    assert len(hyps) == 1 and hyps[0][0] == ctc_greedy_decode(peaky)[0] == [2, 2, 3]
    log_probs = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)).log_softmax(-1)
    (seq, score), *rest = ctc_beam_decode(log_probs, beam_size=1)
    assert not rest
    # Pruning keeps only some of the sequence's alignments, so the score is a lower bound.
    labels = torch.tensor([seq]) if seq else torch.zeros(1, 0, dtype=torch.long)
    exact = -float(F.ctc_loss(log_probs[:, None], labels, [8], [len(seq)], reduction="none"))
    assert score <= exact + 1e-6


def test_beam_is_stable_for_long_confident_inputs():
    log_probs = one_hot_path([1, 1, _, 2, _, 3] * 200, confidence=0.999).float()  # (1200, 4)
    hyps = ctc_beam_decode(log_probs, beam_size=4)
    assert hyps[0][0] == [1, 2, 3] * 200
    assert all(math.isfinite(s) for _, s in hyps)
    assert ctc_beam_decode(torch.zeros(0, 4)) == [([], 0.0)]
    with pytest.raises(ValueError, match="beam_size"):
        ctc_beam_decode(log_probs, beam_size=0)
    with pytest.raises(ValueError, match=r"\(T, V\)"):
        ctc_beam_decode(log_probs[None])


# ---------------------------------------------------------------------------------------------
# Scores


def test_digit_error_rate_counts_digits_as_words():
    assert digit_error_rate(["4071"], ["4071"]) == 0
    assert digit_error_rate(["123", "45"], ["12", "45"]) == pytest.approx(1 / 5)  # one deletion
    assert digit_error_rate(["123", "45"], ["1293", "55"]) == pytest.approx(2 / 5)  # insertion + substitution
    assert digit_error_rate(["4 0 7 1"], ["4071"]) == 0  # spaces do not matter
    assert digit_error_rate(["12"], [""]) == 1


def test_sentence_accuracy():
    assert sentence_accuracy(["12", "34", "56", "78"], ["12", "34", "5", "87"]) == 0.5
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        sentence_accuracy(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="reference 1 is empty"):
        digit_error_rate(["1", " "], ["1", "2"])
    with pytest.raises(ValueError, match="no references"):
        digit_error_rate([], [])
