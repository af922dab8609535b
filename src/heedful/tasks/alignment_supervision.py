"""A cross-attention head trained to align: Garg et al. 2019, "Jointly Learning to Align and
Translate with Transformer Models" (EMNLP), §4.2.

``alignment_supervision: {path, layer, head, weight}`` in a translate config turns it on. The
file holds word alignments of the training pairs (Pharaoh ``i-j``, 0-based, one line per line of
the training files, e.g. from eflomal or fast_align, symmetrised); words are what whitespace
separates, the words of ``line.split()``, numbered as ``heedful align`` numbers them
(:func:`heedful.explain.alignment.encode_words`): a word the tokenizer drops whole keeps its
number. A pair whose word-by-word encoding is not its training ids is left unsupervised (said on
stderr).
For each training pair the links become a (T, S) piece distribution
(:func:`~heedful.explain.alignment.gold_attention`): the step that predicts target piece j should
attend uniformly to the pieces of the source words that j's word links to. The chosen head's
teacher-forced weights ``a`` (B, T, S) are pulled toward it by

    L = CE(translation) + λ · ( −Σ_s g_ts log a_ts, averaged over target pieces with links )

(:func:`~heedful.nn.losses.attention_cross_entropy`). Only the supervised layer's cross-attention
module takes the math path (its weights are needed with their gradient); every other attention
module keeps the fused kernel. Without the section, the loss and its cost are what they were.

Pairs keep their own line of links through length filtering (``data.max_tokens``,
``data.max_ratio``), skipped bad lines (``Pair.line``) and shuffling: the links travel with the
pair's index into the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from heedful.data.parallel import Pair, ParallelFiles, read_lines
from heedful.data.tokenizers import Tokenizer
from heedful.errors import ConfigError, DataError, lines_shown, warn
from heedful.explain.alignment import Link, encode_words, gold_attention, parse_links
from heedful.explain.capture import capture
from heedful.nn.losses import attention_cross_entropy
from heedful.tasks.translate_config import AlignmentSupervision


@dataclass(frozen=True)
class PairLinks:
    """One training pair's supervision: the word of each source and target piece, and the links."""

    source_words: list[int | None]  # (S,) the word of each source piece
    target_words: list[int | None]  # (T_real,) the word of each target piece, <eos> excluded
    links: frozenset[Link]  # (source word, target word), 0-based


class AlignmentSupervisor:
    """The links of every training line, and the loss that pulls one head toward them."""

    def __init__(self, cfg: AlignmentSupervision, lines: list[str]):
        self.cfg, self.lines = cfg, lines

    @classmethod
    def read(cls, cfg: AlignmentSupervision, train: ParallelFiles) -> AlignmentSupervisor:
        """Read ``cfg.path``, refusing a file whose line count is not the training files' (one
        line of links per line of text: a shifted file would teach wrong links silently)."""
        path = cfg.path
        raw = read_lines(path)
        expected = len(read_lines(train.paths[0]))
        if len(raw) != expected:
            raise DataError(
                f"{path}: {len(raw)} lines of alignments, but {train.paths[0]} has {expected}; "
                "alignment_supervision.path needs one line per training pair, in corpus order"
            )
        lines = []
        for number, line in enumerate(raw, 1):
            try:
                lines.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{path} line {number}: not valid UTF-8") from None
        return cls(cfg, lines)

    def pair_links(
        self, pairs: Sequence[Pair], encoded: Sequence[tuple[list[int], list[int]]], src_tok: Tokenizer,
        tgt_tok: Tokenizer,
    ) -> list[PairLinks]:  # fmt: skip
        """Each encoded training pair's :class:`PairLinks`, from the line of its ``Pair.line``;
        a link naming a word the pair does not have is a one-line ``DataError`` (file, line).

        The word of each piece comes from the pair's text, a word at a time (``encode_words``, as
        ``heedful align`` counts): counting the pieces that start a word would shift every later
        link where the tokenizer drops a word whole (a control character, a BOM, a literal ▁). For
        text the tokenizer splits at whitespace, those ids are the training ids; a pair where they
        are not cannot be mapped piece by piece, so it trains without links (one line on stderr)."""
        out, unmapped = [], []
        for pair, (src, tgt) in zip(pairs, encoded, strict=True):
            where = f"{self.cfg.path} line {pair.line}"
            _, links = parse_links(self.lines[pair.line - 1], where=where)  # possible ⊇ sure: every link
            source_ids, source_words = encode_words(src_tok, pair.source)
            target_ids, target_words = encode_words(tgt_tok, pair.target)
            n_source, n_target = len(pair.source.split()), len(pair.target.split())
            for s, t in sorted(links):
                if s >= n_source or t >= n_target:
                    raise DataError(
                        f"{where}: link {s}-{t}, but the pair has {n_source} source and {n_target} target words "
                        "(0-based, split at whitespace); are the links in corpus order?"
                    )
            if (source_ids, target_ids) != (src, tgt):
                unmapped.append(pair.line)
                out.append(PairLinks([None] * len(src), [None] * len(tgt), frozenset()))
                continue
            out.append(PairLinks(source_words, target_words, frozenset(links)))
        if unmapped:
            n = len(unmapped)
            # Every torchrun process reads the same pairs alike: said once per machine, as every warning.
            warn(
                f"{self.cfg.path}: {n} training pair{'s' * (n != 1)} left unsupervised "
                f"({lines_shown(unmapped)}): the tokenizer encodes the text differently word by word than "
                "whole, so the links cannot be placed on its pieces"
            )
        return out

    @staticmethod
    def gold(batch: dict[str, Tensor], links: Sequence[PairLinks]) -> Tensor:
        """The batch's gold attention (B, T, S), T and S the widths of ``tgt_out`` and ``src``;
        padding and <eos> rows are zero."""
        b, t = batch["tgt_out"].shape
        gold = torch.zeros(b, t, batch["src"].shape[1])
        for row, pair in enumerate(links):
            g = gold_attention(pair.links, pair.target_words, pair.source_words)  # (T_real, S_real)
            gold[row, : g.shape[0], : g.shape[1]] = g
        return gold

    def forward(self, model: nn.Module, batch: dict[str, Tensor], keep: Tensor) -> tuple[Tensor, Tensor]:
        """The model's logits for the ``keep`` positions (N, V) and the alignment loss (a scalar),
        from one forward pass that captures the supervised module's weights with their gradient."""
        name = model.cross_attention_name(self.cfg.layer)
        with capture(model, detach=False, only=[name]) as seen:
            logits = model(batch["src"], batch["tgt_in"], keep=keep)
        weights = seen[name][:, self.cfg.head]  # (B, T, S)
        return logits, attention_cross_entropy(weights, batch["alignment"].to(weights.device))


def supervisor_for(
    cfg: AlignmentSupervision | None, source: str, train: ParallelFiles | None
) -> AlignmentSupervisor | None:
    """The run's supervisor, or None when ``alignment_supervision`` is not set."""
    if cfg is None:
        return None
    if source != "parallel" or train is None:
        raise ConfigError("config key 'alignment_supervision': needs data.source 'parallel' with a training split")
    return AlignmentSupervisor.read(cfg, train)


def check_supervised_model(cfg: AlignmentSupervision | None, model: nn.Module) -> None:
    """Refuse, in one line, a supervised head or layer the model does not have."""
    if cfg is None:
        return
    name = getattr(model, "cross_attention_name", lambda layer=-1: None)(-1)
    if name is None:
        raise ConfigError("config key 'alignment_supervision': the model has no cross-attention to supervise")
    n_layers = len(getattr(getattr(model, "decoder", None), "layers", [None]))
    if not -n_layers <= cfg.layer < n_layers:
        raise ConfigError(f"config key 'alignment_supervision.layer': {cfg.layer}; the decoder has {n_layers}")
    n_heads = getattr(model.config, "n_heads", 1)
    if cfg.head >= n_heads:
        raise ConfigError(f"config key 'alignment_supervision.head': {cfg.head}; the layer has {n_heads}")
