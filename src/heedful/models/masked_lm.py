"""A Transformer encoder pretrained by masked language modelling on the user's own text.

BERT's first objective (Devlin et al. 2019, §3.1): hide some tokens and predict them from both
sides. A classifier trained from scratch on a few thousand labelled reviews learns its word
meanings from the labels alone; pretraining the same encoder on the reviews' text first lets it
learn which pieces go together before a label is seen. ``classify`` starts from the encoder with
``model.pretrained=<this run>`` (tasks/mlm.py trains it).

    encoder   our Transformer encoder (models/transformer.py), exactly as the classifier builds it
    head      Linear(D, D) → GELU → LayerNorm → the token embedding, transposed (tied, as BERT),
              plus a bias per piece; applied only at the positions being predicted

``forward(tokens, predict_at) -> logits (N, V)`` for the N positions where predict_at is True.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from heedful.config import Section
from heedful.models.encoder_classifier import vocabulary_encoder
from heedful.models.pretrained import CONFIG_NAME, PretrainedModel
from heedful.models.transformer import TransformerConfig


class MaskedLMConfig(Section):
    vocab_size: int = Field(0, ge=0, description="set by the task from its tokenizer")
    pad_id: int = Field(0, description="the padding token's id (set by the task)")
    encoder: TransformerConfig = TransformerConfig(n_encoder_layers=2, n_decoder_layers=0, d_model=128, d_ff=256)


class MaskedLanguageModel(PretrainedModel):
    model_type = "masked-lm"
    config_class = MaskedLMConfig

    def __init__(self, config: MaskedLMConfig):
        super().__init__(config)
        if config.vocab_size < 1:
            raise ValueError("vocab_size must be set (the task sets it)")
        self.encoder = vocabulary_encoder(config.encoder, config.vocab_size, config.pad_id)  # a classifier's
        d = config.encoder.d_model
        self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, tokens: Tensor, predict_at: Tensor) -> Tensor:
        """tokens (B, T), predict_at (B, T) bool -> logits (N, V), N = predict_at.sum(), in
        row-major order of the chosen positions."""
        states = self.encoder(tokens, tokens != self.config.pad_id)  # (B, T, D)
        chosen = self.transform(states[predict_at])  # (N, D): the vocabulary product only where needed
        return F.linear(chosen, self.encoder.embed.embedding.weight.to(chosen.dtype), self.bias.to(chosen.dtype))


def masked_lm_folder(path: str | Path) -> Path | None:
    """The model folder of a masked-LM run (``path`` is the run directory or its ``model/``
    folder), or None when ``path`` holds no masked-LM model."""
    path = Path(path)
    for folder in (path / "model", path):
        try:
            config = json.loads((folder / CONFIG_NAME).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(config, dict) and config.get("model_type") == MaskedLanguageModel.model_type:
            return folder
    return None
