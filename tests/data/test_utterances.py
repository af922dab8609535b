"""Training utterances of the speech task (data/utterances.py); the augmentation as a whole is
tested through the task (tests/tasks/test_speech.py)."""

import numpy as np
import torch

from heedful.data.utterances import crop_edges


def test_edge_crop_cuts_within_its_bounds_at_both_ends():
    wave = np.arange(1000, dtype=np.float32)
    generator = torch.Generator().manual_seed(0)
    starts, ends, pairs = set(), set(), set()
    for _ in range(400):
        cut = crop_edges(wave, 40, generator)
        start, end = int(cut[0]), 1000 - int(cut[-1]) - 1
        assert np.array_equal(cut, wave[start : 1000 - end])  # one contiguous piece of the clip
        starts.add(start)
        ends.add(end)
        pairs.add((start, end))
    assert starts == ends == set(range(41))  # every cut from 0 to 40 samples at each end…
    assert len(pairs) > 300  # …drawn apart: not one cut used twice
    assert len(crop_edges(np.zeros(100, np.float32), 40, generator)) >= 50  # at most a quarter per end
    a, b = (crop_edges(wave, 40, torch.Generator().manual_seed(3)) for _ in range(2))
    assert np.array_equal(a, b)
