"""One trainer for every task."""

from heedful.train.history import History
from heedful.train.trainer import Trainer, fit

__all__ = ["History", "Trainer", "fit"]
