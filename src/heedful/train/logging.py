"""Where training metrics go: TensorBoard (``run_dir/tb``), Weights & Biases when installed and
asked for, and the console."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from heedful.errors import ConfigError


class RunLogger:
    """``resumed_from``: the step of the checkpoint a resumed run continues from. What the stopped
    run logged after it (steps ``resumed_from + 1`` on) is logged again, so TensorBoard is told to
    hide those events (``purge_step``); without it every such step shows twice."""

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool,
        wandb: bool,
        config: dict[str, Any],
        name: str,
        resumed_from: int | None = None,
    ):
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Not the checkpoint's own step: what was logged at it (the epoch's validation, when the
            # checkpoint ended an epoch) came before the checkpoint and is not logged again.
            purge_step = resumed_from + 1 if resumed_from is not None else None
            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ConfigError(
                    "train.wandb is true but wandb is not installed: pip install 'heedful[wandb]'"
                ) from None
            self._wandb = wandb_module.init(dir=str(run_dir), config=config, name=name, resume="allow")

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{prefix}{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
