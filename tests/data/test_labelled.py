"""Batches of labelled texts (data/labelled.py); the split is tested through the classify task
(tests/tasks/test_classify.py)."""

import random

from heedful.data.labelled import Example, ExampleBatches


def test_length_buckets_keep_every_example_once_and_cut_the_padding():
    rng = random.Random(0)
    examples = [Example(str(i), 0, None, tuple(range(rng.choice([3, 5, 40, 200])))) for i in range(1000)]

    def epoch(bucket: bool, e: int) -> list[list[str]]:
        source = ExampleBatches(examples, 16, seed=3, collate=lambda b: b, weights=None, bucket=bucket)
        return [[x.text for x in batch] for batch in source.batches(e)]

    def padding(batches) -> int:
        lengths = {x.text: len(x.ids) for x in examples}
        return sum(len(b) * max(lengths[t] for t in b) - sum(lengths[t] for t in b) for b in batches)

    bucketed = epoch(True, 0)
    assert sorted(t for b in bucketed for t in b) == sorted(x.text for x in examples)  # each exactly once
    assert all(len(b) <= 16 for b in bucketed) and bucketed == epoch(True, 0) != epoch(True, 1)
    assert padding(bucketed) < padding(epoch(False, 0)) / 5
