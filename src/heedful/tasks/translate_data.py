"""The translate task's ``data.source: parallel``: the split files' pairs, the tokenizers, and the
training batches the trainer sees.

Reading and batching parallel text is :mod:`heedful.data.parallel`'s; this module only applies the
task's config to it: which splits are required, where the tokenizers come from (trained on the
training text, or borrowed from another run with ``data.tokenizer.from_run``), which training
pairs the length filters keep (``data.max_tokens``, ``data.max_ratio``, ``model.max_len``), and,
with ``alignment_supervision``, the gold links that travel with each pair into its batch
(tasks/alignment_supervision.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from heedful.data.parallel import Pair, TokenBatches, fit_for_training, keep_by_length, read_parallel, split_files
from heedful.data.tokenizers import Tokenizer, load_tokenizers, train_tokenizers
from heedful.errors import ConfigError
from heedful.tasks.alignment_supervision import AlignmentSupervisor, supervisor_for
from heedful.tasks.base import Batch
from heedful.tasks.translate_config import SPLITS, TranslateConfig

Encoded = tuple[list[int], list[int]]  # (source ids, target ids), no specials


def read_splits(cfg: TranslateConfig, *, train: bool = True) -> dict[str, list[Pair]]:
    """Every split that ``data.*`` names, read (``data.train`` and ``data.val`` are required);
    ``train=False`` leaves the training file unread (a trained run scores without it)."""
    d = cfg.data
    for split in ("train", "val"):
        if getattr(d, split) is None:
            raise ConfigError(f"config key 'data.{split}': required when data.source is 'parallel'")
    splits = [s for s in SPLITS if getattr(d, s) is not None and (train or s != "train")]
    return {split: _read(cfg, split) for split in splits}


def _read(cfg: TranslateConfig, split: str) -> list[Pair]:
    files = split_files(cfg.data, split)
    if cfg.train.progress:  # a large corpus takes seconds to read: say what is being read
        print(f"reading {files.describe()}", file=sys.stderr, flush=True)
    return read_parallel(files, on_bad_line=cfg.data.on_bad_line)


def read_training_pairs(cfg: TranslateConfig) -> list[Pair]:
    """``data.train``'s pairs, all of them, in corpus order."""
    return _read(cfg, "train")


def tokenizers_for(cfg: TranslateConfig, train: list[Pair]) -> tuple[Tokenizer, Tokenizer]:
    """The run's (source, target) tokenizers: ``data.tokenizer.from_run``'s, or trained on ``train``."""
    t = cfg.data.tokenizer
    if t.from_run is not None:
        folder = Path(t.from_run) / "model"
        if not folder.is_dir():
            raise ConfigError(
                f"config key 'data.tokenizer.from_run': {t.from_run} has no model/ folder to take the tokenizers from"
            )
        return load_tokenizers(folder)
    if cfg.train.progress and t.kind == "sentencepiece":
        print(f"training the sentencepiece vocabulary on {len(train):,} pairs", file=sys.stderr, flush=True)
    src_tok, tgt_tok = train_tokenizers([p.source for p in train], [p.target for p in train], t)
    sizes = f"{len(src_tok)} tokens, joint" if t.joint else f"{len(src_tok)} source + {len(tgt_tok)} target tokens"
    kind = f"sentencepiece {t.model_type}" if t.kind == "sentencepiece" else "characters"
    print(f"tokenizer: {kind}, {sizes}", file=sys.stderr)
    return src_tok, tgt_tok


def length_cap(max_tokens: int | None, max_len: int) -> int:
    """The most tokens a training pair may have on either side: ``data.max_tokens``, within a
    model of ``model.max_len`` positions."""
    longest = max_len - 1  # tgt_in is <bos> + target: one position more
    return min(max_tokens or longest, longest)


def kept_training_pairs(cfg: TranslateConfig, src_tok: Tokenizer, tgt_tok: Tokenizer) -> list[Pair]:
    """The pairs of ``data.train`` that a training keeps, in corpus order."""
    d, cap = cfg.data, length_cap(cfg.data.max_tokens, cfg.model.max_len)
    pairs = read_training_pairs(cfg)
    lengths = [(len(src_tok.encode(p.source)), len(tgt_tok.encode(p.target))) for p in pairs]
    return [pairs[i] for i in keep_by_length(lengths, max_tokens=cap, max_ratio=d.max_ratio)]


def training_batches(
    cfg: TranslateConfig, pairs: list[Pair], src_tok: Tokenizer, tgt_tok: Tokenizer,
    collate: Callable[[list[Encoded]], Batch],
) -> tuple[TokenBatches, AlignmentSupervisor | None]:  # fmt: skip
    """The training pairs, length-filtered, cut into batches of at most ``data.batch_tokens``
    tokens per side; and the alignment supervisor, whose gold attention each batch then carries."""
    d, cap = cfg.data, length_cap(cfg.data.max_tokens, cfg.model.max_len)
    train_files = split_files(d, "train")
    encoded = [(src_tok.encode(p.source), tgt_tok.encode(p.target)) for p in pairs]
    encoded, sizes, kept = fit_for_training(
        encoded, train_files, max_tokens=cap, max_ratio=d.max_ratio, batch_tokens=d.batch_tokens
    )
    # Read here, when training needs it: evaluating a finished run does not need the file.
    supervisor = supervisor_for(cfg.alignment_supervision, d.source, train_files)
    if supervisor is None:
        plain = TokenBatches(sizes, d.batch_tokens, cfg.seed, lambda indices: collate([encoded[i] for i in indices]))
        return plain, None
    # Each kept pair's links, by its line in the files: they follow the pair's index into any batch.
    links = supervisor.pair_links([pairs[i] for i in kept], encoded, src_tok, tgt_tok)

    def supervised_batch(indices: list[int]) -> Batch:
        batch = collate([encoded[i] for i in indices])
        batch["alignment"] = supervisor.gold(batch, [links[i] for i in indices])  # (B, T, S)
        return batch

    return TokenBatches(sizes, d.batch_tokens, cfg.seed, supervised_batch), supervisor
