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


@pytest.mark.slow  # about a second: out of the fast subset
def test_the_trainer_tells_tensorboard_where_a_resumed_run_continues(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from heedful.runs import load_config
    from heedful.tasks import get_task
    from heedful.train import fit
    from tests.conftest import ROOT, tiny_dates_overrides

    extra = {"train.epochs": 3, "train.steps_per_epoch": 3, "train.log_every": 1, "train.tensorboard": True}
    cfg = load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(tmp_path / "run", **extra))
    task_class, calls = get_task("translate"), []
    plain_loss = task_class.loss

    def loss(self, model, batch):  # an interrupt inside step 6: steps 4 and 5 logged, checkpoint at 3
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return plain_loss(self, model, batch)

    monkeypatch.setattr(task_class, "loss", loss)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.setattr(task_class, "loss", plain_loss)
    fit(cfg, resume=True)
    assert [step for step, _ in logged_steps(tmp_path / "run", "train/loss")] == list(range(1, 10))
