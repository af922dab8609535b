"""Text classifiers: an encoder over the tokens, a pooling that makes one vector, a linear head.

    encoder   transformer  our Transformer encoder (from scratch, or a pretrained BERT/MiniLM
                           loaded into it — models/bert.py; ``encoder`` holds its config)
              bigru        embeddings → bidirectional GRU (Yang et al. 2016's word encoder)
    pooling   cls          the first position's state (BERT's [CLS]; for from-scratch models the
                           task puts a <cls> token first)
              attention    additive attention with a learned query (Yang et al. 2016, eq. 5–7):
                           α = softmax(vᵀ tanh(W q + U h_t)),  s = Σ_t α_t h_t — the weights say
                           which tokens drove the prediction, and ``explain.capture`` sees them
              mean         the mean over real tokens
    head      dropout → Linear(D, n_classes)

``forward(tokens, padding=None) -> logits (B, C)``; padding (B, T) is True at real tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from heedful.attention.content import ContentAttention
from heedful.config import Section
from heedful.models.pretrained import PretrainedModel
from heedful.models.rnn import masked_mean, run_packed
from heedful.models.transformer import Encoder, TransformerConfig


class ClassifierConfig(Section):
    n_classes: int = Field(0, ge=0, description="set by the task from the labels")
    vocab_size: int = Field(0, ge=0, description="set by the task from its tokenizer")
    pad_id: int = Field(0, description="the padding token's id (set by the task)")
    encoder_type: Literal["transformer", "bigru"] = Field(
        "transformer",
        description="transformer: the Transformer of model.encoder; bigru: a bidirectional GRU over embed_dim "
        "embeddings",
    )
    pooling: Literal["cls", "attention", "mean"] = Field(
        "attention",
        description="how the token states become one vector: the first position's (cls), additive attention of "
        "one learned query (attention), or their mean (mean)",
    )
    encoder: TransformerConfig = TransformerConfig(n_encoder_layers=2, n_decoder_layers=0, d_model=128, d_ff=256)
    embed_dim: int = Field(128, ge=1, description="bigru: embedding width")
    hidden_size: int = Field(128, ge=2, multiple_of=2, description="bigru: output width (half per direction)")
    dropout: float = Field(0.1, ge=0, lt=1, description="before the head (and on bigru embeddings)")

    @property
    def width(self) -> int:
        return self.encoder.d_model if self.encoder_type == "transformer" else self.hidden_size


def vocabulary_encoder(encoder: TransformerConfig, vocab_size: int, pad_id: int) -> Encoder:
    """Our Transformer encoder of shape ``encoder`` over a ``vocab_size`` vocabulary. Every text
    encoder that must share weights (a classifier, the masked LM that pretrains it) builds it here,
    so their state dicts fit each other."""
    enc = encoder.model_copy(update={"src_vocab_size": vocab_size, "pad_id": pad_id})
    return Encoder(TransformerConfig.model_validate(enc.model_dump()))


class AttentionPooling(nn.Module):
    """Additive attention of one learned query over the states: (B, T, D) -> (B, D)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, d_model) * d_model**-0.5)
        self.attn = ContentAttention("additive", d_model, d_model, d_attn=d_model)

    def forward(self, states: Tensor, padding: Tensor) -> Tensor:
        query = self.query.expand(states.shape[0], -1, -1).to(states.dtype)  # (B, 1, D)
        pooled, _ = self.attn(query, states, padding)  # (B, 1, D)
        return pooled[:, 0]


class BiGRUEncoder(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rnn = nn.GRU(cfg.embed_dim, cfg.hidden_size // 2, batch_first=True, bidirectional=True)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        x = self.dropout(self.embedding(tokens))  # (B, T, E)
        return run_packed(self.rnn, x, padding)  # (B, T, H)


class EncoderClassifier(PretrainedModel):
    model_type = "encoder-classifier"
    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__(config)
        if config.n_classes < 2 or config.vocab_size < 1:
            raise ValueError("n_classes (≥ 2) and vocab_size must be set (the task sets them)")
        if config.encoder_type == "transformer":
            self.encoder: nn.Module = vocabulary_encoder(config.encoder, config.vocab_size, config.pad_id)
        else:
            self.encoder = BiGRUEncoder(config)
        self.pool = AttentionPooling(config.width) if config.pooling == "attention" else None
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.width, config.n_classes)

    def forward(self, tokens: Tensor, padding: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, C)."""
        padding = tokens != self.config.pad_id if padding is None else padding
        states = self.encoder(tokens, padding)  # (B, T, D)
        if self.config.pooling == "cls":
            pooled = states[:, 0]
        elif self.config.pooling == "mean":
            pooled = masked_mean(states, padding)
        else:
            pooled = self.pool(states, padding)
        return self.head(self.dropout(pooled))  # (B, C)

    def load_pretrained_encoder(self, directory) -> None:
        """Start from a BERT folder's weights (e.g. the MiniLM); ``encoder`` must be its config."""
        from heedful.models.bert import load_bert

        bert = load_bert(directory)
        self.encoder.load_state_dict(bert.encoder.state_dict())
