"""``save_pretrained(dir)`` / ``from_pretrained(dir)``: a folder with ``config.json`` and
``model.safetensors``. Loading reads tensors with safetensors and never unpickles anything.

An optimized model (``heedful optimize``) is the same folder: config.json also lists the steps
that changed its structure, under ``"optimized"``, in the order they were made —
``{"method": "prune_heads", "heads": {module: [kept head indices]}}``, ``{"method": "low_rank",
"ranks": {linear: rank}}``, ``{"method": "int8"}`` (others, e.g. checkpoint averaging, only
record what was done). Loading builds the model from its config, makes the same changes to it
(``apply_structure``), then reads the weights — int8 ones through :mod:`heedful.nn.int8`.

config.json also records the sha256 of ``model.safetensors`` (``"sha256": {"model.safetensors":
hex}``), written after the weights; loading checks it before a tensor is read, since bytes changed
inside the tensor data (a bad disk sector, a faulty copy) still parse and would load into wrong
outputs. A folder saved before heedful kept the sum loads unchecked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import safetensors
from pydantic import BaseModel, ValidationError
from torch import nn

from heedful.config import describe_error
from heedful.errors import CheckpointError
from heedful.nn.weights import load_weights, save_weights, sha256

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SUMS_KEY = "sha256"  # config.json's record of the weights' sum: {"model.safetensors": hex}
MODEL_TYPES: dict[str, type[PretrainedModel]] = {}


class ChangedWeights(CheckpointError):
    """A model folder's weights file whose sha256 is not the one its config.json recorded."""

    def __init__(self, weights: Path, recorded: str, how_to_restore: str = "", recorded_in: str = CONFIG_NAME):
        super().__init__(
            f"{weights}: changed since it was written (its sha256 is not the one {recorded_in} recorded beside it)"
            + (f"; {how_to_restore}" if how_to_restore else "")
        )
        self.weights, self.recorded, self.recorded_in = weights, recorded, recorded_in


def verify_weights(
    directory: Path, config: dict[str, Any], name: str = WEIGHTS_NAME, recorded_in: str = CONFIG_NAME
) -> None:
    """``ChangedWeights`` when ``directory/name`` (model.safetensors) is not the file whose sum
    ``config`` (the folder's ``recorded_in``, config.json) recorded under ``"sha256"``; a folder that
    recorded none (saved before heedful kept the sums) passes unchecked. A task's own weights file
    beside the model's (imagegen's feature classifier) is checked the same way, from its own record."""
    recorded = recorded_sum(config, name)
    if recorded is None:
        return
    weights = directory / name
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing")
    if sha256(weights) != recorded:
        raise ChangedWeights(weights, recorded, recorded_in=recorded_in)


def recorded_sum(config: dict[str, Any], name: str = WEIGHTS_NAME) -> str | None:
    """The sha256 ``config`` (a folder's config.json) recorded for its file ``name``; None for a
    folder saved before heedful kept the sums."""
    recorded = config.get(SUMS_KEY)
    return recorded.get(name) if isinstance(recorded, dict) else None


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
        self.optimized: list[dict[str, Any]] = []  # what ``heedful optimize`` did to it, in order

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``directory/model.safetensors``, then ``config.json`` with the weights' sha256
        (``"sha256": {"model.safetensors": hex}``), which loading checks."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if is_int8(self):
            from heedful.nn.int8 import save_int8

            save_int8(self, directory / WEIGHTS_NAME)
        else:
            save_weights(self, directory / WEIGHTS_NAME)
        payload: dict[str, Any] = {"model_type": self.model_type, **self.config.model_dump(mode="json")}
        if self.optimized:
            payload["optimized"] = self.optimized
        # The sum of the bytes as read back (from the page cache, just written): what a load will read.
        payload[SUMS_KEY] = {WEIGHTS_NAME: sha256(directory / WEIGHTS_NAME)}
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> Self:
        directory = Path(directory)
        config = read_model_config(directory)
        model_type = config.pop("model_type", None)
        steps = config.pop("optimized", [])
        sums = {SUMS_KEY: config.pop(SUMS_KEY, None)}
        if model_type != cls.model_type:
            raise CheckpointError(f"{directory / CONFIG_NAME}: holds a {model_type!r} model, not {cls.model_type!r}")
        try:
            model = cls(cls.config_class.model_validate(config))
        except ValidationError as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {describe_error(cls.config_class, exc)}") from None
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: weights file missing")
        verify_weights(directory, sums)  # before a byte is loaded: the model would run on whatever it held
        try:
            model = apply_structure(model, steps)
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise CheckpointError(
                f"{directory / CONFIG_NAME}: its 'optimized' steps do not fit the model ({exc})"
            ) from None
        if is_int8(model):
            from heedful.nn.int8 import load_int8

            load_weights_checked(model, weights, f"{directory / CONFIG_NAME} (a {model_type!r} model)", load_int8)
        else:
            load_weights_checked(model, weights, f"{directory / CONFIG_NAME} (a {model_type!r} model)")
        if is_int8(model) and device != "cpu":
            return model  # int8 dynamic modules run on the CPU only
        return model.to(device)


STRUCTURAL = ("prune_heads", "low_rank", "int8")


def is_int8(model: nn.Module) -> bool:
    return any(step.get("method") == "int8" for step in getattr(model, "optimized", []))


def structural_steps(model: nn.Module) -> list[dict[str, Any]]:
    """The steps of ``model.optimized`` that changed its modules (heads removed, Linears
    factorized, int8); averaging checkpoints changes only the weights."""
    return [step for step in getattr(model, "optimized", []) if step.get("method") != "average"]


def apply_structure(model: PretrainedModel, steps: list[dict[str, Any]]) -> PretrainedModel:
    """Make the structural changes ``steps`` record, in order, to a freshly built model, so that
    the optimized weights fit it: heads removed, Linears factorized, int8 modules swapped in."""
    from heedful.nn.lowrank import LowRankLinear, replace_module

    for step in steps:
        method = step["method"]
        if method == "prune_heads":
            for name, keep in step["heads"].items():
                model.get_submodule(name).prune_heads(list(keep))
        elif method == "low_rank":
            for name, rank in step["ranks"].items():
                old = model.get_submodule(name)
                new = LowRankLinear(old.in_features, int(rank), old.out_features, bias=old.bias is not None)
                replace_module(model, name, new)
        elif method == "int8":
            from heedful.nn.int8 import quantize_int8

            steps_before = model.optimized
            model = quantize_int8(model, step.get("engine"), step.get("layer_engines"))  # the kernels it was saved with
            model.optimized = steps_before
    model.optimized = [dict(step) for step in steps]
    return model


def load_weights_checked(
    model: nn.Module, weights: Path, fits: str, load: Callable[..., tuple[list[str], list[str]]] | None = None
) -> None:
    """Fill ``model`` from the safetensors file ``weights`` (``load``: ``load_weights`` non-strict,
    or another loader returning (missing, unexpected)); a tensor of another shape, a name one side
    lacks or an unreadable file is a one-line ``CheckpointError``: "WEIGHTS: does not fit FITS (…)"."""
    try:
        missing, unexpected = load(model, weights) if load else load_weights(model, weights, strict=False)
    except RuntimeError as exc:  # tensor shapes that do not match the config
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise CheckpointError(f"{weights}: does not fit {fits}: {first}") from None
    except safetensors.SafetensorError as exc:
        raise CheckpointError(f"{weights}: unreadable weights file ({exc})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: does not fit {fits}: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )


def read_model_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found — is {directory} a saved heedful model folder?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None
    if not isinstance(config, dict):
        names = {list: "a list", str: "a string", bool: "true or false", type(None): "null"}
        found = names.get(type(config), "a number")
        raise CheckpointError(f"{path}: expected a JSON object of model settings, found {found}")
    if "model_type" not in config:  # a file written by hand, or by another program
        raise CheckpointError(f"{path}: has no model_type; it was not written by heedful")
    return config


def load_pretrained(directory: str | Path, device: str = "cpu") -> PretrainedModel:
    """Load any heedful model folder, dispatching on the ``model_type`` in its config.json."""
    directory = Path(directory)
    model_type = read_model_config(directory).get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{directory / CONFIG_NAME}: unknown model_type {model_type!r}")
    return MODEL_TYPES[model_type].from_pretrained(directory, device)
