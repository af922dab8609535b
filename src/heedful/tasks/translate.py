"""Translation: sequence to sequence with a Transformer encoder–decoder.

Data sources (``data.source``):

* ``dates`` — built in, generated on the fly by Babel: a date in one of 24 locales and many
  formats → its ISO form (see :mod:`heedful.data.builtin`). Character vocabularies. Each epoch draws
  fresh examples from a stream seeded by (seed, epoch); the fixed validation and test sets are
  drawn from another seed and never appear in training.

data → model → loss (label-smoothed cross-entropy) → metrics (exact match, token accuracy,
attention/gold-alignment agreement) → predict (greedy) → explain (cross-attention maps).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from heedful.config import RunConfig, Section
from heedful.data.builtin import ISO_SPANS, DateExample, date_charset, fixed_dates, random_dates
from heedful.data.vocab import CharVocab
from heedful.decode.greedy import greedy_decode
from heedful.errors import UserError
from heedful.explain.capture import capture
from heedful.models.transformer import TransformerConfig, TransformerEncoderDecoder
from heedful.tasks.base import Batch, BatchSource, DataBundle, Explanation, Prediction, Task, register_task


class TranslateData(Section):
    source: Literal["dates"] = "dates"
    val_size: int = Field(1000, ge=1)
    test_size: int = Field(2000, ge=1)
    heldout_seed: int = Field(20211105, description="seed of the fixed validation and test sets")


class DecodeConfig(Section):
    max_len: int = Field(32, ge=1, description="longest output, in tokens")
    explain_layer: int = Field(-1, description="decoder layer whose cross-attention maps show")


class TranslateConfig(RunConfig):
    task: Literal["translate"] = "translate"
    data: TranslateData = TranslateData()
    model: TransformerConfig = TransformerConfig()
    decode: DecodeConfig = DecodeConfig()


class DateBatches(BatchSource):
    """Fresh examples every epoch, from a stream seeded by (seed, epoch)."""

    def __init__(self, seed: int, batch_size: int, steps: int, exclude: frozenset[str], encode):
        self.seed, self.batch_size, self.steps, self.exclude, self.encode = (
            seed,
            batch_size,
            steps,
            exclude,
            encode,
        )

    def steps_per_epoch(self) -> int:
        return self.steps

    def batches(self, epoch: int) -> Iterator[Batch]:
        stream = random_dates(random.Random(f"{self.seed}:{epoch}").getrandbits(63), self.exclude)
        for _ in range(self.steps):
            yield self.encode([next(stream) for _ in range(self.batch_size)])


@register_task
class TranslateTask(Task):
    name = "translate"
    config_class = TranslateConfig
    cfg: TranslateConfig

    def __init__(self, cfg: TranslateConfig):
        super().__init__(cfg)
        self.src_vocab: CharVocab | None = None
        self.tgt_vocab: CharVocab | None = None

    # ---------------------------------------------------------------------------------------- data
    def _build_vocabs(self) -> None:
        self.src_vocab = CharVocab(date_charset())
        self.tgt_vocab = CharVocab("0123456789-")

    def encode_examples(self, examples: list[DateExample]) -> Batch:
        assert self.src_vocab is not None and self.tgt_vocab is not None
        target = self.tgt_vocab.batch([e.target for e in examples], bos=True, eos=True)  # (B, T+1)
        return {
            "src": self.src_vocab.batch([e.source for e in examples]),  # (B, S)
            "tgt_in": target[:, :-1],  # <bos> y1 … yT
            "tgt_out": target[:, 1:],  # y1 … yT <eos>
        }

    def build_data(self, cfg: TranslateConfig) -> DataBundle:
        self._build_vocabs()
        d = cfg.data
        val = fixed_dates(d.val_size, d.heldout_seed)
        test = fixed_dates(d.test_size, d.heldout_seed + 1, exclude=frozenset(e.source for e in val))
        held_out = frozenset(e.source for e in val + test)
        steps = cfg.train.steps_per_epoch or 200
        train = DateBatches(cfg.seed, cfg.train.batch_size, steps, held_out, self.encode_examples)
        self.data = DataBundle(train, {"val": val, "test": test})
        return self.data

    def build_model(self, cfg: TranslateConfig, data: DataBundle) -> nn.Module:
        assert self.src_vocab is not None and self.tgt_vocab is not None
        model_cfg = cfg.model.model_copy(
            update={
                "src_vocab_size": len(self.src_vocab),
                "tgt_vocab_size": len(self.tgt_vocab),
                "pad_id": self.src_vocab.pad_id,
            }
        )
        return TransformerEncoderDecoder(TransformerConfig.model_validate(model_cfg.model_dump()))

    # ---------------------------------------------------------------------------------------- loss
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits = model(batch["src"], batch["tgt_in"])  # (B, T, V)
        target = batch["tgt_out"]  # (B, T)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(),
            target.flatten(),
            ignore_index=self.tgt_vocab.pad_id,
            label_smoothing=self.cfg.train.label_smoothing,
        )
        real = target != self.tgt_vocab.pad_id
        n_tokens = int(real.sum())
        correct = int(((logits.argmax(-1) == target) & real).sum())
        return loss, {
            "loss": float(loss.detach()),
            "accuracy": correct / max(n_tokens, 1),
            "weight": n_tokens,
        }

    # ------------------------------------------------------------------------------------ evaluate
    def _examples(self, split: str) -> list[DateExample]:
        if self.data is None or split not in self.data.splits:
            raise UserError(f"no {split!r} split; available: {', '.join(self.data.splits) if self.data else 'none'}")
        return self.data.splits[split]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        examples = self._examples(split)
        model.eval()
        device = next(model.parameters()).device
        size = self.cfg.train.eval_batch_size
        loss_sum = tokens = correct_tokens = exact = 0.0
        hits = fields = 0
        for start in range(0, len(examples), size):
            chunk = examples[start : start + size]
            batch = {k: v.to(device) for k, v in self.encode_examples(chunk).items()}
            target = batch["tgt_out"]
            real = target != self.tgt_vocab.pad_id
            with capture(model) if split == "test" else contextlib.nullcontext() as seen:
                logits = model(batch["src"], batch["tgt_in"]).float()
            loss_sum += float(
                F.cross_entropy(
                    logits.flatten(0, 1),
                    target.flatten(),
                    ignore_index=self.tgt_vocab.pad_id,
                    reduction="sum",
                )
            )
            tokens += int(real.sum())
            correct_tokens += int(((logits.argmax(-1) == target) & real).sum())
            outputs = self.predict(model, [e.source for e in chunk])
            exact += sum(p.output == e.target for p, e in zip(outputs, chunk, strict=True))
            if seen is not None:
                h, f = self._alignment_hits(seen[self._cross_attention_name(model)], chunk)
                hits, fields = hits + h, fields + f
        metrics = {
            "loss": loss_sum / tokens,
            "accuracy": correct_tokens / tokens,
            "exact_match": exact / len(examples),
        }
        if fields:
            metrics["alignment_hit"] = hits / fields
        return metrics

    def _cross_attention_name(self, model: nn.Module) -> str:
        layer = self.cfg.decode.explain_layer % len(model.decoder.layers)
        return f"decoder.layers.{layer}.cross_attn"

    @staticmethod
    def _alignment_hits(weights: Tensor, examples: list[DateExample]) -> tuple[int, int]:
        """How often the source character that a target digit attends to most (mean over heads)
        lies inside the gold span of its field (day, month, year); counts (hits, digits).

        weights: (B, H, T, S) cross-attention under teacher forcing; row j predicts target char j.
        """
        most_attended = weights.mean(1).argmax(-1).cpu()  # (B, T)
        hits = total = 0
        for i, example in enumerate(examples):
            for field, (t_start, t_end) in ISO_SPANS.items():
                s_start, s_end = example.spans[field]
                for j in range(t_start, t_end):
                    hits += s_start <= int(most_attended[i, j]) < s_end
                    total += 1
        return hits, total

    # ------------------------------------------------------------------------------- predict/explain
    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[Prediction]:
        model.eval()
        device = next(model.parameters()).device
        src = self.src_vocab.batch(list(inputs)).to(device)
        tokens, log_prob = greedy_decode(
            model,
            src,
            bos_id=self.tgt_vocab.bos_id,
            eos_id=self.tgt_vocab.eos_id,
            max_len=self.cfg.decode.max_len,
        )
        return [
            Prediction(text, self.tgt_vocab.decode(row.tolist()), float(lp))
            for text, row, lp in zip(inputs, tokens.cpu(), log_prob.cpu(), strict=True)
        ]

    @torch.no_grad()
    def explain(self, model: nn.Module, inputs: list[str]) -> list[Explanation]:
        predictions = self.predict(model, inputs)
        device = next(model.parameters()).device
        src = self.src_vocab.batch(list(inputs)).to(device)
        tgt_in = self.tgt_vocab.batch([p.output for p in predictions], bos=True).to(device)  # (B, T+1)
        with capture(model) as seen:
            model(src, tgt_in)
        name = self._cross_attention_name(model)
        explanations = []
        for i, p in enumerate(predictions):
            s, t = len(p.input), len(p.output)
            weights = {k: v[i, :, : t + 1, :s].cpu() for k, v in seen.items() if "cross_attn" in k}
            explanations.append(
                Explanation(
                    prediction=p,
                    query_tokens=[*p.output, "<eos>"],
                    key_tokens=list(p.input),
                    weights=weights,
                    summary=weights[name].mean(0),
                    title=f"{p.input}  →  {p.output}   ({name}, mean over heads)",
                )
            )
        return explanations

    # ------------------------------------------------------------------------------------ artifacts
    def save_artifacts(self, directory: Path) -> None:
        self.src_vocab.save(directory / "src_vocab.json")
        self.tgt_vocab.save(directory / "tgt_vocab.json")

    def load_artifacts(self, directory: Path) -> None:
        self.src_vocab = CharVocab.load(directory / "src_vocab.json")
        self.tgt_vocab = CharVocab.load(directory / "tgt_vocab.json")
