"""heedful: attention-based prediction with one clean, fast attention core."""

from heedful.errors import CheckpointError, ConfigError, DataError, UserError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "UserError", "__version__"]
