"""Typed configs: YAML in, validated pydantic models out, every field settable from the CLI.

    cfg = load_config("configs/dates.yaml", overrides=["model.n_heads=8", "train.epochs=3"])

A config names its task (``task: translate``); the task's config class (a :class:`RunConfig`
subclass) defines and validates the rest. Unknown keys and wrongly-typed values raise
:class:`~heedful.errors.ConfigError` with a one-line message that names the key.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Tag, ValidationError, ValidationInfo, field_validator

from heedful.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and no
    number is infinite or NaN (``decode.alpha=inf`` would divide by zero deep in a search)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_true_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for a number: ``--set decode.beam_size=true`` decoded greedily.
        if isinstance(value, bool) and info.field_name:
            allowed = _types_in(cls.model_fields[info.field_name].annotation)
            if bool not in allowed and allowed & {int, float}:
                raise ValueError("expected a number")
        return value


def _types_in(annotation: Any) -> set[Any]:
    """The plain types a field's annotation admits: ``int | None`` -> {int, NoneType}."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _types_in(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_types_in(arg) for arg in typing.get_args(annotation)))
    return {annotation}


class TrainConfig(Section):
    """How the shared trainer runs — the same fields for every task."""

    epochs: int = Field(10, ge=1, description="passes over the training data (or of steps_per_epoch steps)")
    steps_per_epoch: int | None = Field(None, ge=1, description="for data generated on the fly")
    batch_size: int = Field(64, ge=1, description="examples per batch (a task that batches by tokens says so)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate of AdamW, reached after warmup_steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW's decoupled weight decay (by default on matrices only)")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW's (β1, β2)")
    schedule: Literal["inverse_sqrt", "cosine", "constant"] = Field(
        "inverse_sqrt", description="learning rate after warm-up: lr·√(warmup/step), a cosine to min_lr_ratio, or flat"
    )
    warmup_steps: int = Field(200, ge=0, description="steps of linear warm-up from 0 to lr")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: final lr as a fraction of lr")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="ε of label-smoothed cross-entropy: mass spread uniformly over the classes"
    )
    clip_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the gradients' global norm to this; null: no clipping"
    )
    max_nonfinite_steps: int = Field(
        5, ge=1, description="steps skipped for a NaN/Inf loss or gradient in a row before training stops"
    )
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="validate and save an exponential moving average of the weights (e.g. 0.999)"
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: train under bfloat16 autocast")
    compile: bool = Field(False, description="torch.compile the model (falls back, saying why, where it cannot)")
    deterministic: bool = Field(
        True, description="torch's deterministic algorithms where it has them (a warning where not)"
    )
    monitor: str = Field("val_loss", description="metric for best checkpoint and early stopping")
    monitor_mode: Literal["min", "max"] = Field("min", description="whether a lower or a higher monitor is better")
    early_stopping_patience: int | None = Field(None, ge=1, description="epochs without improvement")
    max_minutes: float | None = Field(
        None, gt=0, description="stop after this much training time (the run's: a resume counts what it spent)"
    )
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps (0: epoch ends only)")
    keep_checkpoints: int = Field(
        2, ge=1, description="newest checkpoints kept in checkpoints/ (the best model is kept apart)"
    )
    log_every: int = Field(50, ge=1, description="log the training loss and lr every N steps")
    eval_batch_size: int = Field(256, ge=1, description="examples per batch when validating and evaluating")
    tensorboard: bool = Field(True, description="write TensorBoard logs to the run's tb/")
    wandb: bool = Field(False, description="log to Weights & Biases too (pip install 'heedful[wandb]')")
    progress: bool = Field(True, description="progress bars on stderr")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    init_from: Path | None = Field(
        None,
        description="fine-tune: start from this run directory's saved model (its model/ folder, weights and "
        "vocabulary) instead of a fresh one; the model config must give the same shapes",
    )


class RunConfig(Section):
    """Fields every run has. Tasks subclass this and add their ``data`` and ``model`` sections."""

    task: str = Field(description="which task reads the rest of the config (translate, classify, …)")
    name: str = Field("run", description="the run's name; its directory is runs/<name> unless run_dir says")
    run_dir: Path | None = Field(None, description="default: runs/<name>")
    seed: int = Field(
        0, description="seeds the weights, dropout and the data order (held-out splits have their own seeds)"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    train: TrainConfig = TrainConfig()

    def resolved_run_dir(self) -> Path:
        """``run_dir`` as given, or ``runs/<name>``: a name stays inside ``runs/``."""
        if self.run_dir is not None:
            return self.run_dir
        name = Path(self.name)
        if not self.name.strip() or name.is_absolute() or ".." in name.parts or not name.parts:
            raise ConfigError(
                f"config key 'name': {self.name!r} would put the run outside runs/; give a plain name, "
                "or say where the run goes with --run-dir"
            )
        return Path("runs") / name


# ------------------------------------------------------------------------------------------ loading
def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML config file") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


_NULLS = ("null", "Null", "NULL", "~", "")


def override_value(key: str, raw: str) -> Any:
    """A ``--set`` value: parsed as YAML (``3``, ``1e-3``, ``[1, 2]``, ``true``, ``null``), except
    that text YAML reads as a string is kept exactly as typed (``runs/exp #2`` keeps its ``#…``),
    and ``run_dir`` is always a path, never YAML."""
    text = raw.strip()
    if key == "run_dir":
        return None if text in _NULLS else text
    try:
        value = yaml.safe_load(raw) if text else raw
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and not text.startswith(("'", '"')):
        return text
    return value


def override_list(overrides: Any) -> list[str]:
    """``overrides`` as a list of strings, else a one-line ``ConfigError`` (one string alone
    would be read character by character)."""
    if overrides is None:
        return []
    if isinstance(overrides, str) or not isinstance(overrides, list | tuple):
        raise ConfigError(f"overrides takes a list of 'key=value' strings, e.g. ['train.lr=3e-4'], not {overrides!r}")
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(f"overrides: {item!r} is not a 'key=value' string")
    return list(overrides)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings; values as :func:`override_value` reads them."""
    for item in override_list(overrides):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=3e-4")
        value = override_value(key, raw)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def validate(config_class: type[RunConfig], data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return config_class.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_error(config_class, exc)}") from None


def describe_error(config_class: type[BaseModel], exc: ValidationError) -> str:
    """The first validation problem as one line naming the key."""
    err = exc.errors()[0]
    parts, model = _walk(config_class, err["loc"])
    key = ".".join(parts)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(parts[-1], list(model.model_fields), n=1) if model else []
        hint = ".".join([*parts[:-1], close[0]]) if close else None
        return f"unknown config key '{key}'" + (f" (did you mean '{hint}'?)" if hint else "")
    if err["type"] == "missing" and parts and str(parts[-1]).isdigit():  # a list or pair given too few values
        return f"config key '{'.'.join(parts[:-1])}': too few values (nothing at position {int(parts[-1]) + 1})"
    if err["type"] == "missing":
        return f"missing config key '{key}'"
    if err["type"] == "union_tag_invalid":  # the key that picks the section, e.g. model.arch
        ctx = err.get("ctx", {})
        return f"config key '{key}.arch': {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    message = err["msg"].removeprefix("Value error, ")  # a validator's own sentence, as written
    if not parts:  # a check across sections: its sentence names the keys
        return message
    got = repr(err.get("input"))
    shown = "" if isinstance(err.get("input"), dict) or len(got) > 60 else f" (got {got})"  # not a whole section
    return f"config key '{key}': {message}{shown}"


def _walk(config_class: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], Any]:
    """The error location as config keys — without the tags pydantic adds inside a tagged union
    (``model.rnn.d_model`` is the key ``model.d_model``) — and the section holding the last key
    (None when the path leaves the typed sections)."""
    parts: list[str] = []
    model: Any = config_class
    pending = list(loc)
    while pending:
        part = str(pending.pop(0))
        parts.append(part)
        if not pending:
            break
        field = model.model_fields.get(part) if model is not None else None
        members = _tagged_members(field.annotation) if field is not None else {}
        if members and pending and str(pending[0]) in members:
            model = members[str(pending.pop(0))]
        elif field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model = field.annotation
        else:
            model = None
    return parts, model


def _tagged_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """Tag -> section class for a field typed as a tagged union of sections."""
    found: dict[str, type[BaseModel]] = {}
    for arg in typing.get_args(annotation):
        inner = typing.get_args(arg)
        if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            tags = [m.tag for m in inner[1:] if isinstance(m, Tag)]
            found |= {tag: inner[0] for tag in tags}
        elif typing.get_args(arg):
            found |= _tagged_members(arg)
    return found


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------ describing
@dataclass(frozen=True)
class FieldDoc:
    """One settable key of a config: ``key`` as ``--set`` names it, its value in this config, its
    default (``REQUIRED`` where it has none), what it may be (``kind``) and what it does."""

    key: str
    value: Any
    default: Any
    kind: str
    description: str


REQUIRED = object()


def describe_fields(cfg: BaseModel, prefix: str = "") -> list[FieldDoc]:
    """Every key of ``cfg`` that ``--set`` can change, depth first in the config's own order.

    A section is walked through its value, so for a field that picks its section (``model.arch``)
    the chosen section's keys are listed, and the pick's row names every choice. A section left
    out (null) is one row naming its keys."""
    rows: list[FieldDoc] = []
    for name, field in type(cfg).model_fields.items():
        key, value = f"{prefix}{name}", getattr(cfg, name)
        if isinstance(value, BaseModel):
            choices = _tagged_members(field.annotation)  # tag -> section, where this field picks one
            picked = [tag for tag, section in choices.items() if section is type(value)]
            for row in describe_fields(value, f"{key}."):
                if picked and row.key == f"{key}.{_picking_field(type(value), picked[0])}":
                    row = FieldDoc(
                        row.key, row.value, row.default, "|".join(choices), row.description or "picks the section"
                    )
                rows.append(row)
            continue
        default = REQUIRED if field.is_required() else field.get_default(call_default_factory=True)
        description = field.description or ""
        section = _section_in(field.annotation)
        if section is not None:  # a field that may hold a section but holds null or text here: name its keys
            keys = ", ".join(section.model_fields)
            first = re.match(r"(.+?)\.(\s+[A-Z]|$)", " ".join((section.__doc__ or "").split()))
            description = description or (first.group(1) if first else "")
            description = f"{description} (a section: {keys})".lstrip()
        rows.append(FieldDoc(key, _plain(value), _plain(default), _kind(field.annotation, field.metadata), description))
    return rows


def _picking_field(section: type[BaseModel], tag: str) -> str | None:
    """The field of ``section`` that names it by ``tag`` (``arch: Literal["rnn"]``)."""
    for name, field in section.model_fields.items():
        if typing.get_origin(field.annotation) is Literal and typing.get_args(field.annotation) == (tag,):
            return name
    return None


def _section_in(annotation: Any) -> type[BaseModel] | None:
    for kind in _types_in(annotation):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


def _plain(value: Any) -> Any:
    """A value as YAML writes it (paths as text, tuples as lists)."""
    if value is REQUIRED:
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_KIND_NAMES = {int: "int", float: "number", str: "text", bool: "true|false", Path: "path", type(None): "null"}
_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _kind(annotation: Any, metadata: list[Any] = ()) -> str:
    """What a field may be, in a few words: ``int ≥ 1``, ``fp32|bf16``, ``number > 0, or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _kind(args[0], [*args[1:], *metadata])
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [_kind(a, metadata) for a in args if a is not type(None)]
        return " or ".join(named) + (", or null" if type(None) in args else "")
    bounds = " ".join(
        f"{_BOUNDS[name]} {getattr(m, name)}"
        for m in metadata
        for name in _BOUNDS
        if getattr(m, name, None) is not None
    )
    if origin is tuple:
        text = "[" + ", ".join("…" if a is Ellipsis else _kind(a) for a in args) + "]"
    elif origin is list:
        text = f"list of {_kind(args[0])}" if args else "list"
    elif origin is dict:
        text = "mapping"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = "section"
    else:
        text = _KIND_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return f"{text} {bounds}" if bounds else text
