"""ERASER erasure: a ranking that knows what the model reads beats random ones."""

import pytest
import torch

from heedful.explain.faithfulness import erasure, faithfulness_table, random_rankings, ranking

KEY = 7  # the one token the toy model reads


def toy_score(batch):
    """p(predicted class) = 0.9 when the key token is in the input, else 0.1."""
    return torch.tensor([0.9 if KEY in tokens else 0.1 for tokens in batch])


def _inputs(n=40, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(n):
        tokens = torch.randint(10, 50, (length,), generator=g).tolist()
        tokens[int(torch.randint(0, length, (1,), generator=g))] = KEY
        inputs.append(tokens)
    return inputs


def test_erasure_with_a_perfect_ranking_beats_random_on_a_model_that_reads_one_token():
    inputs = _inputs()
    perfect = [ranking([1.0 if t == KEY else 0.0 for t in x]) for x in inputs]
    result = erasure(toy_score, inputs, perfect)
    # the key token is removed first at every fraction: every drop is 0.9 − 0.1, and keeping
    # only the top units keeps it, so nothing is lost
    assert result.comprehensiveness == pytest.approx(0.8)
    assert result.sufficiency == pytest.approx(0.0)
    table = faithfulness_table(toy_score, inputs, {"perfect": perfect}, draws=5)
    rnd = table["random"]
    # random removes the key with chance ⌈k·20⌉/20 per bin: 1, 1, 2, 4, 10 of 20 → mean 0.18 of 0.8
    assert rnd["comprehensiveness"] == pytest.approx(0.8 * (1 + 1 + 2 + 4 + 10) / 20 / 5, abs=0.06)
    assert rnd["comprehensiveness_sd"] > 0
    assert rnd["sufficiency"] > 0.5  # keeping random units mostly loses the key
    assert table["perfect"]["comprehensiveness"] > 2 * rnd["comprehensiveness"]
    assert table["perfect"]["comp_vs_random"] == pytest.approx(0.8 / rnd["comprehensiveness"])


def test_the_worst_ranking_is_not_comprehensive_and_random_draws_are_reproducible():
    inputs = _inputs(n=10)
    worst = [ranking([0.0 if t == KEY else 1.0 for t in x]) for x in inputs]
    # the key comes last: only the 50 % bin (10 of 20 units) never reaches it either
    assert erasure(toy_score, inputs, worst).comprehensiveness == pytest.approx(0.0)
    assert random_rankings([5, 3], seed=1) == random_rankings([5, 3], seed=1)
    assert sorted(random_rankings([5], seed=2)[0]) == [0, 1, 2, 3, 4]


def test_ranking_orders_by_weight_then_position():
    assert ranking([0.1, 0.5, 0.5, 0.0]) == [1, 2, 0, 3]


def test_a_ranking_that_is_not_an_order_of_the_units_is_refused():
    with pytest.raises(ValueError, match="ranking 1 is not an order of its input's 3 units"):
        erasure(toy_score, [[1, 2], [KEY, 3, 4]], [[1, 0], []])
