"""Generate images with a self-attention GAN (models/sagan.py) — and measure them without downloads.

data      scikit-learn's bundled 8×8 digits (the default: needs nothing), the MNIST IDX files
          (../shared/data/mnist holds only the 10,000 test images: a seeded, stratified part is
          held out for evaluation), or a folder of PNG/JPEG images with one sub-folder per class
loss      hinge loss (Lim & Ye 2017; SAGAN §4) for both networks, summed into one objective the
          shared trainer minimises: the discriminator's term sees the generated images detached,
          the generator's term scores them with a *parameter-detached* discriminator
          (``torch.func.functional_call``), so each network receives only its own gradient and
          both step together (simultaneous updates; SAGAN alternates one D and one G step, which
          differs only in whether G sees D before or after D's update)
optimiser two time-scales (Heusel et al. 2017): the discriminator's learning rate is
          ``gan.d_lr_scale`` × ``train.lr``; Adam with β = (0, 0.9) via ``train.betas``; the
          generator is evaluated as the weight average ``train.ema_decay`` keeps
metrics   *domain FID* (metrics/fid.py): the Fréchet distance between features of generated and held-out real
          images under a small CNN classifier trained here on the real training images (its
          held-out accuracy is reported beside it, so the features are known to mean something);
          for class-conditional models also how often that classifier recognises the requested
          class in the generated images
explain   for a generated image, where chosen query pixels attend (the generator's SAGAN block)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from heedful.config import RunConfig, Section
from heedful.data.images import image_folder, mnist, pad_to, sklearn_digits, stratified_split
from heedful.errors import CheckpointError, ConfigError, DataError, UserError
from heedful.explain.capture import capture
from heedful.explain.plots import image_format, save_grid
from heedful.metrics.fid import FeatureClassifier, feature_statistics, frechet_distance
from heedful.models.pretrained import SUMS_KEY, verify_weights
from heedful.models.sagan import SAGAN, SAGANConfig
from heedful.nn.weights import load_weights, save_weights, sha256
from heedful.tasks.base import (
    Batch,
    BatchSource,
    DataBundle,
    EvalResult,
    Explanation,
    Prediction,
    Task,
    register_task,
)

CLASSIFIER_FILE = "feature_classifier.safetensors"
# The classifier's sha256 ({"sha256": {CLASSIFIER_FILE: hex}}), as config.json records model.safetensors':
# a file of its own, written after the classifier (config.json is written before it).
CLASSIFIER_SUMS = "feature_classifier.json"


class ImageData(Section):
    source: Literal["digits", "mnist", "folder"] = Field(
        "digits",
        description="digits: scikit-learn's bundled 8×8 digits; mnist: MNIST IDX files; folder: images in one "
        "sub-folder per class",
    )
    root: Path | None = Field(None, description="mnist: the folder of IDX files; folder: <root>/<class>/*.png")
    held_out_fraction: float = Field(0.2, gt=0, lt=1, description="per class, seeded: the real images FID compares")
    on_bad: Literal["error", "skip"] = Field(
        "error",
        description="folder: an unreadable image, or one of another size or mode than the first, stops the run "
        "(error) or is skipped and counted (skip)",
    )


class GANConfig(Section):
    d_lr_scale: float = Field(4.0, gt=0, description="discriminator lr = train.lr × this (two time-scales)")
    fid_samples: int = Field(1000, ge=10, description="generated images per FID")
    classifier_epochs: int = Field(4, ge=1, description="training epochs of the FID feature classifier")
    sample_seed: int = Field(1234, description="the fixed noise of sample grids and of FID")


class ImageGenConfig(RunConfig):
    task: Literal["imagegen"] = Field("imagegen", description="which task reads the rest of the config")
    data: ImageData = ImageData()
    model: SAGANConfig = SAGANConfig(image_size=8, width=32, attention_resolution=4, n_classes=10)
    gan: GANConfig = GANConfig()


class ImageBatches(BatchSource):
    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, seed: int):
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed

    def steps_per_epoch(self) -> int:
        return len(self.images) // self.batch_size  # full batches only: batch norm wants them

    def batches(self, epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.images), generator=g)
        for i in range(self.steps_per_epoch()):
            rows = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield {"images": self.images[rows], "labels": self.labels[rows]}


@dataclass
class Generated(Prediction):
    image: Tensor | None = None  # (C, R, R) in [−1, 1]


@register_task
class ImageGenTask(Task):
    name = "imagegen"
    config_class = ImageGenConfig
    inputs = "label"  # predict() takes a class name (or anything, unconditional) per image
    prediction_class = Generated
    model_types = ("sagan",)
    run_methods: ClassVar[dict[str, str]] = {"generate": "generate_grid"}  # run.generate(64, "3", out="threes.png")

    @classmethod
    def commands(cls) -> list:
        from heedful.tasks.verbs.imagegen import generate

        return [generate]

    def __init__(self, cfg: ImageGenConfig):
        super().__init__(cfg)
        self.cfg: ImageGenConfig = cfg
        self.classes: list[str] = [str(i) for i in range(cfg.model.n_classes)]
        self.classifier: FeatureClassifier | None = None

    # ------------------------------------------------------------------------------------- data
    def _load(self) -> tuple[Tensor, Tensor, list[str]]:
        d = self.cfg.data
        if d.source == "digits":
            return sklearn_digits()
        if d.root is None:
            raise ConfigError(f"config key 'data.root': data.source {d.source!r} needs the folder it reads")
        return mnist(d.root) if d.source == "mnist" else image_folder(d.root, d.on_bad)

    def build_data(self, cfg: ImageGenConfig) -> DataBundle:
        images, labels, classes = self._load()
        images = pad_to(images, cfg.model.image_size)
        if images.shape[1] != cfg.model.channels:
            raise ConfigError(f"config key 'model.channels': the images have {images.shape[1]} channels")
        if cfg.model.n_classes and cfg.model.n_classes != len(classes):
            raise ConfigError(f"config key 'model.n_classes': the data has {len(classes)} classes ({classes[:5]}…)")
        self.classes = classes
        train_rows, held_rows = stratified_split(labels, cfg.data.held_out_fraction, cfg.seed)
        train = ImageBatches(images[train_rows], labels[train_rows], cfg.train.batch_size, cfg.seed)
        if not train.steps_per_epoch():  # it trained no step and saved the untrained model
            raise DataError(
                f"{cfg.data.root}: {len(train_rows)} training images, fewer than one batch "
                f"(train.batch_size {cfg.train.batch_size}): add images or lower train.batch_size"
            )
        held = {"images": images[held_rows], "labels": labels[held_rows]}
        self.data = DataBundle(train=train, splits={"val": held, "test": held})
        if self.classifier is None:
            self.classifier = self._train_classifier(train.images, train.labels)
        return self.data

    def _train_classifier(self, images: Tensor, labels: Tensor) -> FeatureClassifier:
        """The FID feature network, trained on the real training images (its own seed, so the
        GAN's random stream is untouched)."""
        state = torch.get_rng_state()
        torch.manual_seed(self.cfg.seed + 7)
        model = FeatureClassifier(images.shape[1], images.shape[-1], max(len(self.classes), 2))
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(self.cfg.gan.classifier_epochs):
            for rows in torch.randperm(len(images)).split(128):
                x = images[rows] + 0.05 * torch.randn_like(images[rows])  # a little noise: smoother features
                loss = F.cross_entropy(model(x)[1], labels[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        torch.set_rng_state(state)
        return model.eval()

    # ------------------------------------------------------------------------------------ model
    def build_model(self, cfg: ImageGenConfig, data: DataBundle) -> nn.Module:
        return SAGAN(cfg.model)

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]] | None:
        """Two time-scales: the discriminator's parameters at d_lr_scale × the generator's rate."""
        return [
            {"params": list(model.generator.parameters()), "weight_decay": weight_decay, "lr_scale": 1.0},
            {
                "params": list(model.discriminator.parameters()),
                "weight_decay": weight_decay,
                "lr_scale": self.cfg.gan.d_lr_scale,
            },
        ]

    # ------------------------------------------------------------------------------------- loss
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        real = batch["images"]  # (B, C, R, R)
        y = batch["labels"] if self.cfg.model.n_classes else None
        z = torch.randn(real.shape[0], self.cfg.model.z_dim, device=real.device)
        fake = model.generator(z, y)
        d_real = model.discriminator(real, y)
        d_fake = model.discriminator(fake.detach(), y)
        d_loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        # The generator's term through a discriminator whose parameters are detached: gradient
        # reaches the generated images (and so the generator), never the discriminator.
        frozen = {name: p.detach() for name, p in model.discriminator.named_parameters()}
        g_loss = -torch.func.functional_call(model.discriminator, frozen, (fake, y)).mean()
        stats = {
            "loss": float((d_loss + g_loss).detach()),
            "d_loss": float(d_loss.detach()),
            "g_loss": float(g_loss.detach()),
            "d_real": float(d_real.detach().mean()),
            "d_fake": float(d_fake.detach().mean()),
            "weight": real.shape[0],
        }
        return d_loss + g_loss, stats

    # --------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, model: nn.Module, n: int, class_id: int | None = None, seed: int | None = None) -> Tensor:
        """n images (n, C, R, R) in [−1, 1] from fixed noise (``seed``, default gan.sample_seed);
        class-conditional models cycle through the classes unless ``class_id`` is given."""
        model.eval()
        return model.generator(*self._latents(model, n, class_id, seed)).float().cpu()

    def _latents(
        self, model: nn.Module, n: int, class_id: int | None, seed: int | None
    ) -> tuple[Tensor, Tensor | None]:
        """The noise (n, z_dim) and classes (n,) of ``generate``'s n images, on the model's device."""
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(self.cfg.gan.sample_seed if seed is None else seed)
        z = torch.randn(n, self.cfg.model.z_dim, generator=g).to(device)
        y = None
        if self.cfg.model.n_classes:
            if class_id is not None and not 0 <= class_id < self.cfg.model.n_classes:
                raise UserError(f"--class {class_id}: this model has classes 0–{self.cfg.model.n_classes - 1}")
            y = torch.full((n,), class_id) if class_id is not None else torch.arange(n) % self.cfg.model.n_classes
            y = y.to(device)
        elif class_id is not None:
            raise UserError("this model is not class-conditional (model.n_classes: 0); drop --class")
        return z, y

    def generate_grid(
        self,
        model: nn.Module,
        n: int = 64,
        class_name: str | None = None,
        seed: int | None = None,
        out: str | Path | None = None,
    ) -> Tensor:
        """``run.generate``: n images (n, C, R, R) in [−1, 1], of one class (its name) or all in
        turn; with ``out`` (.png or .jpg), also saved as one grid there."""
        if out is not None:
            image_format(Path(out), "out")  # before any work
        images = self.generate(model, n, self._class_id(class_name) if class_name is not None else None, seed)
        if out is not None:
            save_grid(images, Path(out))
        return images

    @torch.no_grad()
    def explain_grid(
        self, model: nn.Module, n: int = 64, class_name: str | None = None, seed: int | None = None, count: int = 3
    ) -> list[Explanation]:
        """Where query pixels attend in the first ``count`` images of the grid ``generate_grid``
        makes with the same arguments (the same noise, so the same images)."""
        self._check_attention(model)
        class_id = self._class_id(class_name) if class_name is not None else None
        model.eval()
        z, y = self._latents(model, n, class_id, seed)
        k = min(count, n)
        with capture(model.generator) as seen:
            images = model.generator(z[:k], None if y is None else y[:k]).float().cpu()
        labels = [self.classes[int(c)] for c in y[:k]] if y is not None else ["image"] * k
        return [
            self._explanation(label, label, image, seen["attention"][i, 0].float().cpu())
            for i, (label, image) in enumerate(zip(labels, images, strict=True))
        ]

    # --------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def _features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = zip(*(self.classifier(chunk) for chunk in images.split(500)), strict=True)
        return torch.cat(feats), torch.cat(logits)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> EvalResult:
        if self.data is None or split not in self.data.splits:
            raise UserError(f"no {split!r} split; available: val, test")
        real = self.data.splits[split]
        real_features, real_logits = self._features(real["images"])
        n = self.cfg.gan.fid_samples
        fake = self.generate(model, n)
        fake_features, fake_logits = self._features(fake)
        metrics = {
            "fid": frechet_distance(*feature_statistics(real_features), *feature_statistics(fake_features)),
            "classifier_accuracy": float((real_logits.argmax(-1) == real["labels"]).float().mean()),
        }
        if self.cfg.model.n_classes:
            requested = torch.arange(n) % self.cfg.model.n_classes
            metrics["class_accuracy"] = float((fake_logits.argmax(-1) == requested).float().mean())
        return EvalResult(metrics)

    def after_validation(self, model: nn.Module, epoch: int, run_dir: Path) -> None:
        """A grid from the fixed noise after every epoch: plots/samples-epoch-N.png."""
        save_grid(self.generate(model, 64), run_dir / self.after_validation_files(epoch)[0], option="sample grid")

    def after_validation_files(self, epoch: int) -> list[str]:
        return [f"plots/samples-epoch-{epoch:03d}.png"]

    # --------------------------------------------------------------------------- predict/explain
    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[Any]) -> list[Prediction]:
        """One image per input: a class id (or name) for conditional models, anything otherwise."""
        out = []
        for i, item in enumerate(inputs):
            class_id = self._class_id(item) if self.cfg.model.n_classes else None
            image = self.generate(model, 1, class_id, seed=self.cfg.gan.sample_seed + i)[0]
            label = self.classes[class_id] if class_id is not None else "image"
            out.append(Generated(item, label, None, image=image))
        return out

    def _class_id(self, item: Any) -> int:
        if str(item) in self.classes:
            return self.classes.index(str(item))
        raise UserError(f"unknown class {item!r}; this model has {', '.join(self.classes)}")

    @torch.no_grad()
    def explain(self, model: nn.Module, inputs: list[Any]) -> list[Explanation]:
        """Where three query pixels (the image's brightest generated strokes) attend, per input
        (image i: the image ``predict`` makes of input i)."""
        self._check_attention(model)
        explanations = []
        for i, item in enumerate(inputs):
            class_id = self._class_id(item) if self.cfg.model.n_classes else None
            with capture(model.generator) as seen:
                image = self.generate(model, 1, class_id, seed=self.cfg.gan.sample_seed + i)[0]
            label = self.classes[class_id] if class_id is not None else "image"
            explanations.append(self._explanation(item, label, image, seen["attention"][0, 0].float().cpu()))
        return explanations

    @staticmethod
    def _check_attention(model: nn.Module) -> None:
        if model.generator.attention is None:
            raise UserError("this model has no self-attention block (model.attention_resolution: null)")

    @staticmethod
    def _explanation(item: Any, label: str, image: Tensor, weights: Tensor) -> Explanation:
        """One generated image's explanation from its attention ``weights`` (N, N), N = side²."""
        side = math.isqrt(weights.shape[0])
        queries = _query_pixels(image, side)
        prediction = Generated(item, label, None, image=image)
        return Explanation(
            prediction=prediction,
            query_tokens=[f"({r}, {c})" for r, c in queries],
            key_tokens=[str(j) for j in range(side * side)],
            weights={"generator.attention": weights[None]},
            summary=torch.stack([weights[r * side + c] for r, c in queries]),  # (3, N)
            title=f"generated {prediction.output}: where {len(queries)} query positions attend",
            context={"image": image, "side": side, "queries": queries},
        )

    def plot_explanation(self, explanation: Explanation, path: Path) -> Path:
        from heedful.explain.plots import attention_overlay

        ctx = explanation.context
        return attention_overlay(ctx["image"], explanation.summary, ctx["side"], ctx["queries"], path,
                                 title=explanation.title)  # fmt: skip

    # -------------------------------------------------------------------------------- artifacts
    def save_artifacts(self, directory: Path) -> None:
        import json

        if self.classifier is not None:
            save_weights(self.classifier, directory / CLASSIFIER_FILE)
            sums = {SUMS_KEY: {CLASSIFIER_FILE: sha256(directory / CLASSIFIER_FILE)}}
            (directory / CLASSIFIER_SUMS).write_text(json.dumps(sums, indent=2) + "\n")
        (directory / "classes.json").write_text(json.dumps(self.classes, ensure_ascii=False) + "\n")

    def load_artifacts(self, directory: Path) -> None:
        import json

        try:
            self.classes = json.loads((directory / "classes.json").read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{directory / 'classes.json'}: missing — not an imagegen model folder") from None
        m = self.cfg.model
        classifier = FeatureClassifier(m.channels, m.image_size, max(len(self.classes), 2))
        sums = directory / CLASSIFIER_SUMS
        if sums.is_file():  # a folder saved before heedful kept the classifier's sum has none: unchecked
            try:
                recorded = json.loads(sums.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{sums}: not the JSON record of the classifier's sha256") from None
            verify_weights(directory, recorded if isinstance(recorded, dict) else {}, CLASSIFIER_FILE, CLASSIFIER_SUMS)
        if (directory / CLASSIFIER_FILE).is_file():
            load_weights(classifier, directory / CLASSIFIER_FILE)
            self.classifier = classifier.eval()


def _query_pixels(image: Tensor, side: int) -> list[tuple[int, int]]:
    """Three feature-map positions on the drawn digit: the brightest cells of the image pooled to
    side × side, spread apart (the first, then the farthest from the chosen ones)."""
    pooled = F.adaptive_avg_pool2d(image.mean(0, keepdim=True)[None], side)[0, 0]  # (side, side)
    order = pooled.flatten().argsort(descending=True)[: max(side * side // 3, 3)].tolist()
    chosen = [divmod(order[0], side)]
    while len(chosen) < min(3, side * side):
        far = max(order, key=lambda j: min(abs(j // side - r) + abs(j % side - c) for r, c in chosen))
        chosen.append(divmod(far, side))
    return chosen
