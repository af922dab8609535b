"""Transformer encoder–decoder and encoder-only models (Vaswani et al. 2017) on our attention core.

Pre-LN by default (Xiong et al. 2020: normalise before each sublayer, which trains stably without
long warm-ups); ``norm_first=False`` gives the original post-LN. Positions are chosen by name
(``sinusoidal``, ``learned``, ``rope``, ``alibi``, ``relative``, ``none``) — see
:mod:`heedful.attention.positions`.

Shapes: B batch, S source length, T target length, D model width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from heedful.attention import CacheArena, KVCache, MultiHeadAttention
from heedful.attention.dropout import Dropout, relu_dropout
from heedful.attention.positions import POSITIONS, build_attention_positions, build_input_positions
from heedful.config import Section
from heedful.models.pretrained import PretrainedModel
from heedful.nn.fused import linear_relu


class TransformerConfig(Section):
    """Everything needed to build a Transformer; saved as the model folder's config.json."""

    arch: Literal["transformer"] = Field(
        "transformer", description="picks the architecture, and with it this section's other keys (rnn: translate only)"
    )
    src_vocab_size: int = Field(0, ge=0, description="set by the task from its vocabulary")
    tgt_vocab_size: int = Field(0, ge=0, description="set by the task (encoder–decoder only)")
    pad_id: int = Field(0, description="the padding token's id (set by the task)")
    d_model: int = Field(256, ge=8, description="width of the residual stream and embeddings")
    n_heads: int = Field(4, ge=1, description="attention heads per layer")
    d_head: int | None = Field(None, ge=1, description="width of each attention head; null: d_model // n_heads")
    n_encoder_layers: int = Field(3, ge=0, description="encoder layers (self-attention + feed-forward)")
    n_decoder_layers: int = Field(3, ge=0, description="decoder layers (causal self-, cross-attention, feed-forward)")
    d_ff: int = Field(1024, ge=1, description="inner width of each feed-forward block")
    dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="dropout on embeddings, each sublayer's output and the feed-forward's inner activations",
    )
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the attention weights")
    activation: Literal["relu", "gelu"] = Field("relu", description="the feed-forward block's nonlinearity")
    norm_first: bool = Field(True, description="pre-LN (True) or post-LN (False)")
    position: str = Field("sinusoidal", description=" | ".join(POSITIONS))
    max_len: int = Field(512, ge=1, description="longest sequence, in tokens, the positions cover")
    relative_max_distance: int = Field(16, ge=1, description="position: relative: distances clipped to ±this")
    attention_score: Literal["scaled_dot", "dot", "general", "additive"] = Field(
        "scaled_dot", description="how a query scores a key (heedful/attention/scores.py)"
    )
    tie_embeddings: bool = Field(True, description="decoder input embedding = output projection")
    share_embeddings: bool = Field(False, description="one embedding for source and target")
    # What BERT-style encoders differ in (models/bert.py loads them with these set):
    embed_scale: bool = Field(True, description="multiply token embeddings by √D (Vaswani); BERT does not")
    embed_norm: bool = Field(False, description="LayerNorm over the summed embeddings (BERT)")
    type_vocab_size: int = Field(0, ge=0, description="segment (token type) embeddings, as in BERT; 0: none")
    layer_norm_eps: float = Field(1e-5, gt=0, description="ε of every LayerNorm")
    residual_dtype: Literal["float32", "autocast"] = Field(
        "float32",
        description="under autocast (precision: bf16), the residual stream's dtype: float32, or autocast's own "
        "(no cast into and out of bf16 around every sublayer; LayerNorm still sums in float32)",
    )

    @model_validator(mode="after")
    def _check(self) -> TransformerConfig:
        if self.d_head is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.position not in POSITIONS:
            raise ValueError(f"position {self.position!r} is not one of {', '.join(POSITIONS)}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size")
        return self


# ------------------------------------------------------------------------------------------ layers
class FeedForward(nn.Module):
    """FFN(x) = W_2 act(W_1 x + b_1) + b_2  (§3.3)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation == "relu" and not (self.training and self.dropout.p):
            # No dropout: the ReLU inside linear1's kernel where it has one (prepacked, int8)
            return self.linear2(linear_relu(self.linear1, x))  # (B, T, D)
        h = self.linear1(x)  # (B, T, d_ff)
        if self.activation == "gelu":
            return self.linear2(self.dropout(F.gelu(h)))  # (B, T, D)
        # ReLU's gate and dropout's mask in one product: three passes over (B, T, d_ff) fewer
        return self.linear2(relu_dropout(h, self.dropout.p, self.training))


class Sublayer(nn.Module):
    """Residual connection around a sublayer, with LayerNorm before (pre-LN) or after (post-LN)."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, fn) -> Tensor:
        if self.norm_first:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


def _attention(cfg: TransformerConfig, *, self_attention: bool) -> MultiHeadAttention:
    """Self-attention (the config's attention positions, if any; q/k/v packed in one matmul) or
    cross-attention (no positions; q from the target, k/v from the memory)."""
    d_head = cfg.d_head or cfg.d_model // cfg.n_heads
    position = None
    if self_attention:
        position = build_attention_positions(cfg.position, cfg.n_heads, d_head, cfg.max_len, cfg.relative_max_distance)
    return MultiHeadAttention(
        cfg.d_model,
        cfg.n_heads,
        d_head=d_head,
        dropout=cfg.attention_dropout,
        score=cfg.attention_score,
        position=position,
        packed=self_attention,
    )


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = _attention(cfg, self_attention=True)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        self.attn_sublayer = Sublayer(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)
        self.ff_sublayer = Sublayer(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)

    def forward(self, x: Tensor, padding: Tensor | None) -> Tensor:
        """x: (B, S, D); padding: (B, S) bool, True = real token."""
        x = self.attn_sublayer(x, lambda h: self.self_attn(h, key_padding_mask=padding).output)
        return self.ff_sublayer(x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = _attention(cfg, self_attention=True)
        self.cross_attn = _attention(cfg, self_attention=False)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        self.self_sublayer = Sublayer(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)
        self.cross_sublayer = Sublayer(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)
        self.ff_sublayer = Sublayer(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)

    def forward(
        self, y: Tensor, memory: Tensor, memory_padding: Tensor | None, cache: LayerCache | None = None
    ) -> Tensor:
        """y: (B, T, D) target states; memory: (B, S, D) encoder output."""
        self_cache = cache.self_attn if cache is not None else None
        cross_cache = cache.cross_attn if cache is not None else None
        # Causal self-attention needs no target padding mask: padding sits at the end, so real
        # positions never see it, and outputs at padded positions are ignored by the loss.
        y = self.self_sublayer(y, lambda h: self.self_attn(h, is_causal=True, cache=self_cache).output)
        y = self.cross_sublayer(
            y, lambda h: self.cross_attn(h, memory, key_padding_mask=memory_padding, cache=cross_cache).output
        )
        return self.ff_sublayer(y, self.ff)


@dataclass
class LayerCache:
    self_attn: KVCache
    cross_attn: KVCache


class DecoderCache:
    """Per-layer key/value caches plus the number of target positions already decoded."""

    def __init__(self, n_layers: int):
        self.layers = [LayerCache(KVCache(), KVCache(static=True)) for _ in range(n_layers)]
        self.offset = 0

    def reserve(self, positions: int, arena: CacheArena | None = None) -> None:
        """Room for ``positions`` decoded positions and buffers from ``arena`` (:meth:`KVCache.reserve`)."""
        for layer in self.layers:
            layer.self_attn.reserve(positions, arena)
            layer.cross_attn.reserve(positions, arena)

    @property
    def needs_memory(self) -> bool:
        """Whether decoding still reads the encoder output: only until every cross-attention cache
        holds its keys and values (the first step). The searches stop re-indexing it after that."""
        return not all(layer.cross_attn.filled for layer in self.layers)

    def reorder(self, index: Tensor, sources_unchanged: bool = False) -> None:
        """Keep batch rows ``index`` — for beam search. With ``sources_unchanged`` every row keeps
        its source sentence, whose cross-attention keys/values are then left where they are."""
        for layer in self.layers:
            layer.self_attn.reorder(index)
            if not sources_unchanged:
                layer.cross_attn.reorder(index)


class Embedder(nn.Module):
    """Token embedding scaled by √D (§3.4), plus input positions when the config uses them; for
    BERT-style encoders also segment embeddings and a LayerNorm (``type_vocab_size``, ``embed_norm``)."""

    def __init__(self, vocab_size: int, cfg: TransformerConfig, embedding: nn.Embedding | None = None):
        super().__init__()
        self.embedding = embedding or nn.Embedding(vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        if embedding is None:
            nn.init.normal_(self.embedding.weight, std=cfg.d_model**-0.5)
            with torch.no_grad():
                self.embedding.weight[cfg.pad_id].zero_()
        self.positions = build_input_positions(cfg.position, cfg.d_model, cfg.max_len)
        self.scale = math.sqrt(cfg.d_model) if cfg.embed_scale else 1.0
        self.token_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.embed_norm else nn.Identity()
        self.dropout = Dropout(cfg.dropout)
        self.residual_in_autocast = cfg.residual_dtype == "autocast"

    def forward(self, tokens: Tensor, offset: int = 0, token_types: Tensor | None = None) -> Tensor:
        x = self.embedding(tokens) * self.scale  # (B, T) -> (B, T, D)
        if self.positions is not None:
            x = self.positions(x, offset)
        if self.token_types is not None:  # one segment unless told otherwise
            x = x + self.token_types(token_types if token_types is not None else torch.zeros_like(tokens))
        x = self.dropout(self.norm(x))
        device = x.device.type
        if self.residual_in_autocast and torch.is_autocast_enabled(device):
            # The residual stream in bf16 from here on: the sublayers' Linears take it as it is and
            # their bf16 outputs add to it without a cast; LayerNorm (not on autocast's float32
            # list on CPU) reads bf16 and sums in float32. On CUDA autocast's LayerNorm returns
            # float32, cast once for the Linear after it, while the stream itself stays bf16.
            x = x.to(torch.get_autocast_dtype(device))
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, embedding: nn.Embedding | None = None):
        super().__init__()
        self.embed = Embedder(cfg.src_vocab_size, cfg, embedding)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.norm_first else nn.Identity()

    def forward(self, tokens: Tensor, padding: Tensor | None, token_types: Tensor | None = None) -> Tensor:
        x = self.embed(tokens, token_types=token_types)  # (B, S, D)
        for layer in self.layers:
            x = layer(x, padding)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, embedding: nn.Embedding | None = None):
        super().__init__()
        self.embed = Embedder(cfg.tgt_vocab_size, cfg, embedding)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.norm_first else nn.Identity()
        self.output = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.embedding.weight

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor,
        memory_padding: Tensor | None,
        cache: DecoderCache | None = None,
        keep: Tensor | None = None,
        project: bool = True,
    ) -> Tensor:
        """Logits (B, T, V); with ``keep`` (B, T) bool, only those positions': (N, V); with
        ``project=False``, the final states that the vocabulary projection would take, (…, D)."""
        offset = cache.offset if cache is not None else 0
        y = self.embed(tokens, offset)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            y = layer(y, memory, memory_padding, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.offset += tokens.shape[1]
        if keep is not None:  # the vocabulary projection is the largest matmul: skip padded positions
            y = y[keep]  # (N, D)
        y = self.norm(y)
        return self.output(y) if project else y  # (B, T, V) or (N, V); or (…, D)


# ------------------------------------------------------------------------------------------ models
class TransformerEncoderDecoder(PretrainedModel):
    """Sequence to sequence: ``forward(src, tgt_in) -> logits (B, T, V_tgt)``.

    ``tgt_in`` is the target shifted right (starting with <bos>); the loss compares the logits
    with the target shifted left (ending with <eos>).
    """

    model_type = "transformer-encoder-decoder"
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        if config.src_vocab_size < 1 or config.tgt_vocab_size < 1:
            raise ValueError("src_vocab_size and tgt_vocab_size must be set (the task sets them from its vocab)")
        self.encoder = Encoder(config)
        shared = self.encoder.embed.embedding if config.share_embeddings else None
        self.decoder = Decoder(config, shared)

    def cross_attention_name(self, layer: int = -1) -> str | None:
        """The module whose weights are decoder ``layer``'s source–target attention."""
        return f"decoder.layers.{layer % len(self.decoder.layers)}.cross_attn"

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src: (B, S) ids -> memory (B, S, D) and its padding mask (B, S), True = real token."""
        padding = src != self.config.pad_id
        return self.encoder(src, padding), padding

    def decode(
        self, tgt_in: Tensor, memory: Tensor, memory_padding: Tensor, cache: DecoderCache | None = None
    ) -> Tensor:
        """tgt_in: (B, T) ids (only the new ones when ``cache`` holds earlier steps) -> (B, T, V)."""
        return self.decoder(tgt_in, memory, memory_padding, cache)

    def new_cache(self) -> DecoderCache:
        return DecoderCache(self.config.n_decoder_layers)

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None, project: bool = True) -> Tensor:
        """Logits (B, T, V); with ``keep`` (B, T) bool (e.g. the real target positions), only
        those positions' logits (N, V), in row-major order — what a loss needs, cheaper. With
        ``project=False``, the states before the vocabulary projection instead, (…, D): a loss
        that applies :meth:`vocabulary_weight` itself (nn/losses.py's projected_cross_entropy)."""
        memory, padding = self.encode(src)
        return self.decoder(tgt_in, memory, padding, None, keep, project)

    def vocabulary_weight(self) -> Tensor | None:
        """The vocabulary projection's weight (V, D) when the projection is a plain bias-free
        Linear without hooks — one a loss can apply itself; None otherwise (e.g. after
        ``heedful optimize`` made it low-rank or int8)."""
        output = self.decoder.output
        plain = type(output) is nn.Linear and output.bias is None
        if not plain or output._forward_hooks or output._forward_pre_hooks:
            return None
        return output.weight


class TransformerEncoderModel(PretrainedModel):
    """Encoder only: ``forward(tokens) -> hidden states (B, S, D)``; for classifiers and taggers."""

    model_type = "transformer-encoder"
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        if config.src_vocab_size < 1:
            raise ValueError("src_vocab_size must be set (the task sets it from its vocab)")
        self.encoder = Encoder(config)

    def forward(self, tokens: Tensor, padding: Tensor | None = None, token_types: Tensor | None = None) -> Tensor:
        """tokens (B, S) -> hidden states (B, S, D); padding (B, S) True = real token."""
        padding = tokens != self.config.pad_id if padding is None else padding
        return self.encoder(tokens, padding, token_types)
