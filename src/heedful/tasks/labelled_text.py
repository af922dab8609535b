"""Labelled texts read, split and cut into tokens the same way for every text task: ``classify``
and ``mlm`` (which pretrains an encoder on the texts a classifier will learn from) both build on
:class:`LabelledTextTask`, so one ``data`` section with one seed gives both the same train / val /
test texts and the same pieces.

data      a CSV / TSV / JSONL file (data/text.py: named columns, label schemes, filters, bad rows),
          split into train / val / test by seeded fractions or k folds (data/labelled.py);
          identical texts always land in the same part, so no text is both trained on and
          tested. The split's seed is the run's, unless ``data.split_seed`` fixes it;
          ``data.sample: N`` first keeps a uniform sample of N rows, drawn with that seed as the
          file streams
tokens    sentencepiece trained on the training texts (works for Chinese without a word segmenter:
          it learns pieces from raw character sequences, spaces or not); a task may bring other
          tokens (classify: a pretrained model's WordPiece). A text longer than
          ``data.max_tokens`` is cut (keeping the head, or head and tail) or read as overlapping
          windows: each window trains as an example with its text's label
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from heedful.config import RunConfig, Section
from heedful.data.labelled import Example, ExampleBatches, split_examples
from heedful.data.text import BadRows, LabelMap, TextColumns, read_labelled, reservoir_sample
from heedful.data.tokenizers import SentencePieceTokenizer, pad_ids
from heedful.errors import CheckpointError, ConfigError, DataError
from heedful.tasks.base import Batch, BatchSource, DataBundle, Task

BatchSource.register(ExampleBatches)  # heedful.data does not import tasks; it is one all the same


class ClassifyTokenizerConfig(Section):
    vocab_size: int = Field(8000, ge=300, description="sentencepiece: upper bound (specials and bytes included)")
    model_type: Literal["unigram", "bpe"] = Field("unigram", description="sentencepiece: unigram | bpe")
    character_coverage: float = Field(0.9995, gt=0, le=1, description="below 1 for large CJK alphabets")


class ClassifyData(Section):
    path: Path | None = Field(None, description="the labelled texts (CSV, TSV or JSONL, gzip or not)")
    val_path: Path | None = Field(None, description="a separate validation file (else split from path)")
    test_path: Path | None = Field(None, description="a separate test file (else split from path)")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field(
        "auto", description="the files' format; auto: from each file's suffix (.csv, .tsv or .jsonl, gzipped or not)"
    )
    text_column: str = Field("text", description="the column (JSONL: field) that holds the text")
    label_column: str | None = Field(
        "label", description="null: the texts alone, without labels (the mlm task only; any file of texts)"
    )
    group_column: str | None = Field(None, description="e.g. 'Product Name': per-group quality in evaluate")
    labels: Literal["stars5", "stars3", "binary", "as_is"] = Field(
        "as_is",
        description="how labels become classes: stars5: ratings 1–5, five classes; stars3: 1–2 neg, 3 neutral, "
        "4–5 pos; binary: 1–2 neg, 4–5 pos, 3 left out; as_is: each distinct label a class",
    )
    classes: list[str] | None = Field(None, description="as_is: the class names, in order")

    @field_validator("classes", mode="before")
    @classmethod
    def _numbers_are_names(cls, value: Any) -> Any:
        # --set data.classes=[1,5] reads numbers, which a label 1 in a file is named by: "1"
        if isinstance(value, list):
            return [str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value]
        return value

    filters: dict[str, str] = Field(default_factory=dict, description="keep rows whose column equals the value")
    on_bad_row: Literal["error", "skip"] = Field(
        "error",
        description="a bad row (empty text, a label out of range, broken quoting, …) stops the read naming its "
        "line (error), or is skipped and counted (skip)",
    )
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of the distinct texts held out for validation (with folds: of those outside the test fold)",
    )
    test_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of the distinct texts held out for testing (unused with folds)"
    )
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
    fold: int = Field(0, ge=0, description="k-fold: the fold that is the test set, 0 to folds − 1")
    tokenizer: ClassifyTokenizerConfig = ClassifyTokenizerConfig()
    max_tokens: int = Field(256, ge=4, description="longer texts are cut or windowed (see truncation)")
    truncation: Literal["head", "head_tail", "windows"] = Field(
        "head",
        description="a text over max_tokens: keep its head, or its head and tail (half each), or read it all as "
        "overlapping windows, each trained as an example and their probabilities averaged",
    )
    window_stride: int | None = Field(
        None, ge=1, description="windows: tokens between window starts (default: half a window)"
    )
    class_weights: Literal["none", "balanced"] = Field(
        "none",
        description="balanced: weigh each class's loss by n / (C · n_c), n_c its training examples (as "
        "scikit-learn's class_weight='balanced'); none: unweighted",
    )
    token_dropout: float = Field(
        0.0, ge=0, lt=1, description="training only: hide each token but the first with this probability"
    )
    length_buckets: bool = Field(True, description="batch texts of similar length together (less padding)")
    balanced_sampling: bool = Field(
        False, description="draw training examples with replacement, each class equally often"
    )
    min_group_size: int = Field(10, ge=1, description="groups with fewer held-out examples are not scored")
    baselines: Literal["auto", "word", "char", "none"] = Field(
        "auto",
        description="evaluate also scores the majority class and TF-IDF + logistic regression fit on the training "
        "texts, over word 1–2-grams or character 1–3-grams (text without spaces); auto: chosen from the texts",
    )

    @model_validator(mode="after")
    def _text_is_not_its_own_label(self) -> ClassifyData:
        # Read as both, every distinct text becomes a class of one text: training then stopped at
        # "no val examples", which did not say why.
        if self.text_column == self.label_column:
            raise ValueError(
                f"data.text_column and data.label_column both name the column {self.text_column!r}; "
                "a text cannot be its own label: give the label column (--label-column)"
            )
        return self


# The data settings that decide which texts are training texts (with the split seed): the split
# is drawn over the distinct texts kept, so whatever keeps other rows (or reads other text) moves
# it. The label column too: read without one (an mlm run's data.label_column: null), rows with a
# bad label stay. data.on_bad_row is not one: "error" stops at the first bad row, so two runs
# that both read their data kept the same rows. group_column keeps every row.
SPLIT_KEYS = (
    "path", "val_path", "test_path", "format", "filters", "sample", "val_fraction", "test_fraction", "folds", "fold",
    "label_column", "text_column",
)  # fmt: skip
# Which labels a scheme keeps a row for (data/text.py's LabelMap): stars5 and stars3 keep every
# rating 1–5 and differ only in the classes they make of them; binary leaves 3 stars out.
ROWS_KEPT = {"stars5": "ratings 1-5", "stars3": "ratings 1-5", "binary": "ratings 1, 2, 4, 5", "as_is": "any label"}


def split_differences(theirs: dict, ours: dict) -> list[str]:
    """The ``data`` settings (keys, as dumped to config.yaml) by which two runs may keep other
    rows or split them otherwise; the split seed is compared apart (:func:`split_seed`)."""
    differ = [k for k in SPLIT_KEYS if not same_setting(k, theirs.get(k), ours.get(k))]
    if theirs.get("label_column") is None or ours.get("label_column") is None:
        return differ  # a run without labels kept rows whatever its label settings said
    schemes = theirs.get("labels", "as_is"), ours.get("labels", "as_is")
    if len({ROWS_KEPT.get(s, s) for s in schemes}) > 1:
        differ.append("labels")
    elif schemes == ("as_is", "as_is"):  # only as_is reads data.classes: a label outside them is a bad row

        def accepted(classes: Any) -> Any:  # None: any label; else the names, in any order
            return None if classes is None else sorted(map(str, classes))

        if accepted(theirs.get("classes")) != accepted(ours.get("classes")):
            differ.append("classes")
    return differ


def split_seed(data: dict | ClassifyData, seed: int | None) -> int | None:
    """The seed a run's split is drawn with: ``data.split_seed``, else the run's ``seed``."""
    chosen = data.get("split_seed") if isinstance(data, dict) else data.split_seed
    return seed if chosen is None else chosen


PATH_KEYS = ("path", "val_path", "test_path")


def same_setting(key: str, theirs: Any, ours: Any) -> bool:
    """One data setting of two runs, compared as written — except paths, compared as the files they
    name (``../shared/x.csv`` and its absolute form are one file; both resolve from the current
    folder, as the runs read them)."""
    if key in PATH_KEYS and theirs is not None and ours is not None:
        return Path(str(theirs)).resolve() == Path(str(ours)).resolve()
    return str(theirs) == str(ours)


class LabelledTextTask(Task):
    """The data and tokens of a text task: reading and splitting the labelled texts, the
    tokenizer, windows, batches and the model folder's ``labels.json`` + tokenizer file. A
    subclass adds its model, loss, metrics, predictions and explanations."""

    needs_classes: ClassVar[bool] = True  # a file of one class is refused (the MLM reads no labels)

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.tokenizer: Any = None
        self.labels: LabelMap | None = None
        self.train_texts: list[Example] = []  # build_data: the training split, one example per text

    # --------------------------------------------------------------------------------- tokens
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
        """A sentencepiece model trained on the training texts."""
        t = self.cfg.data.tokenizer
        if self.cfg.train.progress:  # sentencepiece shows none: 12 s on 100,000 texts of 60 words
            print(f"training sentencepiece ({t.vocab_size:,} pieces) on {len(train_texts):,} texts", file=sys.stderr)
        self.tokenizer = SentencePieceTokenizer.train(
            train_texts, vocab_size=t.vocab_size, model_type=t.model_type, character_coverage=t.character_coverage
        )

    # ----------------------------------------------------------------------------------- data
    def vocab_size(self) -> int:
        if isinstance(self.tokenizer, SentencePieceTokenizer):
            return len(self.tokenizer)
        return self.tokenizer.get_vocab_size()

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

    def build_data(self, cfg: Any) -> DataBundle:
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
        seen = {r.label for r in rows}
        if self.needs_classes and len(seen) < 2:  # it would train, and learn to say one class
            name = self.labels.name(next(iter(seen)))
            raise DataError(f"{d.path}: only one class in {len(rows)} rows ({name}); a classifier needs two or more")
        distinct = len({" ".join(r.text.split()) for r in rows})
        if distinct < 3 and not (d.val_path and d.test_path):  # else "no val examples", which hides why
            raise DataError(
                f"{d.path}: {len(rows)} rows but {distinct} distinct text(s); identical texts stay in one split, "
                "so train, val and test need 3 or more"
            )
        if d.val_path or d.test_path:
            splits = {"train": rows, "val": [], "test": []}
            for name, path in (("val", d.val_path), ("test", d.test_path)):
                if path is not None:
                    splits[name] = self._read(path, bad)
                    unseen = next((r for r in splits[name] if r.label not in seen), None)
                    if unseen is not None and not self.labels.fixed:  # a class the model would never train on
                        raise DataError(f"{path} line {unseen.line}: label {self.labels.name(unseen.label)!r} "
                                        f"does not occur in {d.path}, the training data")  # fmt: skip
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
        if self.needs_classes and len(self.labels.classes) < 2:
            raise DataError(f"{d.path}: only one class ({self.labels.classes}); a classifier needs two or more")
        if self.tokenizer is None:  # a loaded run brings its own (load_artifacts)
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

    def _example(self, row) -> Example:
        first, *more = self.windows(row.text)
        return Example(row.text, row.label, row.group, tuple(first), tuple(map(tuple, more)))

    def collate(self, examples: list[Example]) -> Batch:
        return {
            "tokens": pad_ids([list(e.ids) for e in examples], self.pad_id),  # (B, T)
            "labels": torch.tensor([e.label for e in examples]),  # (B,)
        }

    # ------------------------------------------------------------------------------ artifacts
    def save_artifacts(self, directory: Path) -> None:
        meta: dict[str, Any] = {"classes": self.labels.classes, "scheme": self.labels.scheme}
        if isinstance(self.tokenizer, SentencePieceTokenizer):
            self.tokenizer.save(directory / "spm.model")
            meta["tokenizer"] = "spm.model"
        else:
            self.tokenizer.save(str(directory / "tokenizer.json"))
            meta["tokenizer"] = "tokenizer.json"
        (directory / "labels.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n")

    def load_artifacts(self, directory: Path) -> None:
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
