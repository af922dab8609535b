"""A task that lives in the test suite, not in heedful: is a number positive or negative?

It joins heedful the way a plugin would (``add_task("toy", "tests.toy_task")``) and brings its
own verb (``heedful signs RUN NUMBER…``), its own ``train`` flag (``--margin``) and a run
method (``run.signs_of``), none of which heedful.cli or heedful.runs know by name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
import typer
from pydantic import BaseModel
from torch import Tensor, nn

from heedful.config import RunConfig, Section
from heedful.errors import UserError
from heedful.models.pretrained import PretrainedModel
from heedful.tasks.base import Batch, BatchSource, DataBundle, EvalResult, Explanation, Prediction, Task
from heedful.tasks.registry import register_task
from heedful.tasks.verbs import DeviceOption, TrainOption, run_loader

CLASSES = ["negative", "positive"]


class ToyData(Section):
    n_train: int = 512
    margin: float = 0.0  # training numbers closer than this to 0 are left out


class ToyConfig(RunConfig):
    data: ToyData = ToyData()


class SignConfig(BaseModel):
    classes: int = 2


class SignModel(PretrainedModel):
    model_type = "toy-sign"
    config_class = SignConfig

    def __init__(self, config: SignConfig):
        super().__init__(config)
        self.linear = nn.Linear(1, config.classes)

    def forward(self, x: Tensor) -> Tensor:  # (B,) -> (B, 2)
        return self.linear(x[:, None])


class Numbers(BatchSource):
    def __init__(self, x: Tensor, batch_size: int, seed: int):
        self.x, self.batch_size, self.seed = x, batch_size, seed

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def batches(self, epoch: int):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        for start in range(0, len(order), self.batch_size):
            x = self.x[order[start : start + self.batch_size]]
            yield {"x": x, "y": (x > 0).long()}


def signs(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A toy run directory.")],
    numbers: Annotated[list[float], typer.Argument(help="Numbers to judge.")],
    device: DeviceOption = "cpu",
) -> None:
    """Say whether each number is positive or negative."""
    run = run_loader(ctx).load_run(run_dir, device, task="toy", verb="signs")
    for p in run.predict(numbers):
        typer.echo(f"{p.input:g}: {p.output} ({p.score:.2f})")


@register_task
class ToyTask(Task):
    name = "toy"
    config_class = ToyConfig
    run_methods: ClassVar[dict[str, str]] = {"signs_of": "signs_of"}

    @classmethod
    def commands(cls) -> list:
        return [signs]

    @classmethod
    def train_options(cls) -> list[TrainOption]:
        return [TrainOption("--margin", "data.margin", "leave out numbers this close to 0", "the toy numbers", float)]

    def build_data(self, cfg: ToyConfig) -> DataBundle:
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn(cfg.data.n_train, generator=g) * 3
        x = x[x.abs() >= cfg.data.margin]
        held_out = {split: torch.randn(64, generator=g) * 3 for split in ("val", "test")}
        self.data = DataBundle(Numbers(x, cfg.train.batch_size, cfg.seed), held_out)
        return self.data

    def build_model(self, cfg: ToyConfig, data: DataBundle) -> nn.Module:
        return SignModel(SignConfig())

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits = model(batch["x"])
        loss = F.cross_entropy(logits, batch["y"])
        accuracy = float((logits.argmax(-1) == batch["y"]).float().mean())
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy, "weight": len(batch["x"])}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> EvalResult:
        x = self.data.splits[split]
        logits = model(x)
        loss = float(F.cross_entropy(logits, (x > 0).long()))
        accuracy = float((logits.argmax(-1) == (x > 0).long()).float().mean())
        w, b = model.linear.weight[:, 0], model.linear.bias
        threshold = float((b[0] - b[1]) / (w[1] - w[0]))  # where the two logits meet
        outputs = [CLASSES[int(c)] for c in logits.argmax(-1)]
        return EvalResult({"loss": loss, "accuracy": accuracy}, notes={"threshold": threshold}, outputs=outputs)

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[Any]) -> list[Prediction]:
        probs = model(torch.tensor([float(v) for v in inputs])).softmax(-1)
        out = []
        for v, p in zip(inputs, probs, strict=True):
            probabilities = dict(zip(CLASSES, p.tolist(), strict=True))
            out.append(Prediction(v, CLASSES[int(p.argmax())], float(p.max()), probabilities=probabilities))
        return out

    def signs_of(self, model: nn.Module, numbers: list[float]) -> list[str]:
        return [p.output for p in self.predict(model, numbers)]

    def explain(self, model: nn.Module, inputs: list[Any]) -> list[Explanation]:
        raise UserError("a toy run has no attention to show")
