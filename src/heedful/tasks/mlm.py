"""Pretrain a text encoder by masked language modelling on the texts a classifier will learn from.

data      exactly as ``classify`` reads and splits it (tasks/labelled_text.py, which both build
          on; the same ``data`` section, so the same
          seed and fractions give the same train / val / test texts); only the training texts'
          tokens are learned from, and the test texts are never seen — a classify run started
          from this one stays honest about its test score. Labels are never used: with
          ``data.label_column: null`` the text column is read alone (a file without labels);
          with a label column, the rows classify would leave out (a bad or left-out label) are
          left out here too, so that both runs split the same texts
tokens    sentencepiece trained on the training texts, saved with the model; the classify run
          that starts from it reuses it, so ids mean the same pieces in both
masking   BERT's recipe (Devlin et al. 2019, §3.1): ``masking.prob`` of the real pieces (not
          <pad>/<bos>) are predicted; of those 80 % are replaced by the mask id, 10 % by a random
          piece, 10 % left as they are. The mask id is sentencepiece's <unk>: with byte fallback
          no real text ever encodes to it, so it is free to mean "hidden"
model     models/masked_lm.py: the classifier's Transformer encoder plus a tied vocabulary head
loss      cross-entropy over the predicted positions only
metrics   loss, accuracy and perplexity at the predicted positions, with a fixed masking per split
          so epochs compare like with like

Then: ``heedful train configs/reviews/chinese.yaml --set model.pretrained=runs/<this run>``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from heedful.config import Section
from heedful.data.labelled import Example
from heedful.data.tokenizers import N_SPECIALS, SentencePieceTokenizer, pad_ids
from heedful.errors import ConfigError, UserError, warn
from heedful.models.masked_lm import MaskedLanguageModel, MaskedLMConfig
from heedful.tasks.base import DataBundle, EvalResult, Explanation, Prediction, register_task
from heedful.tasks.classify import ClassifyConfig
from heedful.tasks.labelled_text import LabelledTextTask
from heedful.tasks.verbs import TrainOption, labelled_text_options

EVAL_SEED = 1234  # the fixed masking of val/test


class MaskingConfig(Section):
    prob: float = Field(0.15, gt=0, lt=1, description="share of the real pieces that are predicted")


class MaskedLMRunConfig(ClassifyConfig):
    """classify's sections, so one data section (and seed) gives both tasks the same texts."""

    task: Literal["mlm"] = Field("mlm", description="which task reads the rest of the config")  # type: ignore[assignment]
    masking: MaskingConfig = MaskingConfig()


def mask_tokens(
    tokens: Tensor, prob: float, vocab_size: int, mask_id: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """BERT's masking of a batch (B, T) -> (inputs (B, T), predict_at (B, T) bool, targets (N,)).

    Pieces with ids below N_SPECIALS (<pad>, <bos>, <eos>, <unk>) are never chosen. A batch with
    real pieces always gets at least one chosen, so its loss is defined."""
    real = tokens >= N_SPECIALS  # (B, T)
    draw = torch.rand(tokens.shape, generator=generator)  # on the CPU: same draws on any device
    predict_at = (draw.to(tokens.device) < prob) & real
    if not predict_at.any() and real.any():
        predict_at.view(-1)[real.view(-1).nonzero()[0]] = True
    how = torch.rand(tokens.shape, generator=generator).to(tokens.device)  # 80 / 10 / 10
    random_ids = torch.randint(N_SPECIALS, vocab_size, tokens.shape, generator=generator).to(tokens.device)
    inputs = torch.where(predict_at & (how < 0.8), mask_id, tokens)
    inputs = torch.where(predict_at & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, predict_at, tokens[predict_at]


@register_task
class MaskedLMTask(LabelledTextTask):
    name = "mlm"
    config_class = MaskedLMRunConfig
    model_types = ("masked-lm",)
    needs_classes = False  # labels are never used (data.label_column: null reads none)
    requires = ()  # its metrics are its own: no scikit-learn

    @classmethod
    def train_options(cls) -> list[TrainOption]:
        return labelled_text_options()  # it reads the same files as classify

    def build_data(self, cfg: MaskedLMRunConfig) -> DataBundle:
        if cfg.model.pretrained is not None or cfg.model.encoder_type != "transformer":
            raise ConfigError(
                "config keys 'model.pretrained' / 'model.encoder_type': the mlm task pretrains a Transformer "
                "encoder from scratch (model.pretrained: null, model.encoder_type: transformer)"
            )
        pooling = cfg.model.pooling
        if pooling != type(cfg.model).model_fields["pooling"].default:  # else every saved config would say it
            warn(
                f"config key 'model.pooling' ({pooling}) is ignored: the mlm task predicts each hidden piece and "
                "pools nothing; set it in the classify run started from this one"
            )
        return super().build_data(cfg)

    def build_model(self, cfg: MaskedLMRunConfig, data: DataBundle) -> nn.Module:
        if not isinstance(self.tokenizer, SentencePieceTokenizer):
            raise ConfigError("the mlm task needs its own sentencepiece tokenizer")
        config = MaskedLMConfig(vocab_size=self.vocab_size(), pad_id=self.pad_id, encoder=cfg.model.encoder)
        return MaskedLanguageModel(config)

    def _mask(self, tokens: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        return mask_tokens(tokens, self.cfg.masking.prob, self.vocab_size(), self.tokenizer.unk_id, generator)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        inputs, predict_at, targets = self._mask(batch["tokens"])
        logits = model(inputs, predict_at).float()  # (N, V)
        loss = F.cross_entropy(logits, targets)
        correct = (logits.argmax(-1) == targets).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(correct), "weight": len(targets)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> EvalResult:
        if self.data is None or split not in self.data.splits:
            raise UserError(f"no {split!r} split; available: val, test")
        model.eval()
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(EVAL_SEED)
        examples: list[Example] = sorted(self.data.splits[split], key=lambda e: len(e.ids))
        total, correct, count = 0.0, 0, 0
        size = self.cfg.train.eval_batch_size
        for start in range(0, len(examples), size):
            tokens = pad_ids([list(e.ids) for e in examples[start : start + size]], self.pad_id)
            inputs, predict_at, targets = self._mask(tokens, generator)
            logits = model(inputs.to(device), predict_at.to(device)).float()
            targets = targets.to(device)
            total += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += len(targets)
        loss = total / max(count, 1)
        return EvalResult({"loss": loss, "accuracy": correct / max(count, 1), "perplexity": math.exp(min(loss, 50.0))})

    def _not_a_classifier(self) -> UserError:
        return UserError(
            "an mlm run only pretrains an encoder: start a classifier from it "
            "(heedful train <classify config> --set model.pretrained=<this run dir>) and predict with that"
        )

    def predict(self, model: nn.Module, inputs: list[Any]) -> list[Prediction]:
        raise self._not_a_classifier()

    def explain(self, model: nn.Module, inputs: list[Any]) -> list[Explanation]:
        raise self._not_a_classifier()
