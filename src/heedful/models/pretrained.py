"""``save_pretrained(dir)`` / ``from_pretrained(dir)``: a folder with ``config.json`` and
``model.safetensors``. Loading reads tensors with safetensors and never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

import safetensors
from pydantic import BaseModel, ValidationError
from torch import nn

from heedful.errors import CheckpointError
from heedful.nn.weights import load_weights, save_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPES: dict[str, type[PretrainedModel]] = {}


class PretrainedModel(nn.Module):
    """A model built from one typed config, saved as that config plus its tensors."""

    model_type: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__:
            MODEL_TYPES[cls.model_type] = cls

    def __init__(self, config: BaseModel):
        super().__init__()
        self.config = config

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"model_type": self.model_type, **self.config.model_dump(mode="json")}
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
        save_weights(self, directory / WEIGHTS_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> Self:
        directory = Path(directory)
        config = read_model_config(directory)
        model_type = config.pop("model_type", None)
        if model_type != cls.model_type:
            raise CheckpointError(f"{directory / CONFIG_NAME}: holds a {model_type!r} model, not {cls.model_type!r}")
        try:
            model = cls(cls.config_class.model_validate(config))
        except ValidationError as exc:
            raise CheckpointError(
                f"{directory / CONFIG_NAME}: invalid model config ({exc.errors()[0]['msg']})"
            ) from None
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: weights file missing")
        try:
            missing, unexpected = load_weights(model, weights, strict=False)
        except RuntimeError as exc:  # tensor shapes that do not match the config
            first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
            raise CheckpointError(f"{weights}: does not fit {CONFIG_NAME} ({first})") from None
        except safetensors.SafetensorError as exc:
            raise CheckpointError(f"{weights}: unreadable weights file ({exc})") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{weights}: does not fit {directory / CONFIG_NAME} (a {model_type!r} model: "
                f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        return model.to(device)


def read_model_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found — is {directory} a saved heedful model folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None


def load_pretrained(directory: str | Path, device: str = "cpu") -> PretrainedModel:
    """Load any heedful model folder, dispatching on the ``model_type`` in its config.json."""
    directory = Path(directory)
    model_type = read_model_config(directory).get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{directory / CONFIG_NAME}: unknown model_type {model_type!r}")
    return MODEL_TYPES[model_type].from_pretrained(directory, device)
