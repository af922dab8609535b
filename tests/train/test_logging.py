"""Where training metrics go (train/logging.py): a resumed run's TensorBoard curves show each step once."""

import pytest

from heedful.train.logging import RunLogger


def logged_steps(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))  # as TensorBoard reads the folder
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_resumed_run_replaces_what_the_stopped_run_logged_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    kwargs = {"tensorboard": True, "wandb": False, "config": {}, "name": "run"}
    stopped = RunLogger(tmp_path, **kwargs)
    for step in range(1, 9):  # killed after step 8; its last checkpoint was at step 6
        stopped.scalars(step, {"loss": 1.0}, prefix="train/")
    stopped.scalars(6, {"loss": 0.5}, prefix="epoch/")  # validation at step 6, then the checkpoint
    stopped.close()
    resumed = RunLogger(tmp_path, **kwargs, resumed_from=6)
    for step in range(7, 11):
        resumed.scalars(step, {"loss": 2.0}, prefix="train/")
    resumed.close()
    assert logged_steps(tmp_path, "train/loss") == [(s, 1.0) for s in range(1, 7)] + [(s, 2.0) for s in range(7, 11)]
    assert logged_steps(tmp_path, "epoch/loss") == [(6, 0.5)]  # logged before the checkpoint: kept
