"""RNN encoder–decoders, the baselines the Transformer is measured against.

    encoder   embeddings → bidirectional GRU/LSTM → memory (B, S, H)      (H = hidden_size)
    init      s₀ = tanh(W · mean of the memory over real tokens)         (B, H) per decoder layer
    decoder   one of
      none       Cho et al. 2014 without attention: a fixed context c = the mean of the memory
                 is fed at every step;  s_t = RNN([e_t; c], s_{t−1})
      bahdanau   Bahdanau et al. 2015: the previous state asks the memory (additive score)
                 before the step;  c_t = attn(s_{t−1}, memory),  s_t = RNN([e_t; c_t], s_{t−1})
      luong_general / luong_dot
                 Luong et al. 2015, global attention after the step (without input feeding, so the
                 whole target runs through the RNN in one call):  s_t = RNN(e_t, s_{t−1}),
                 c_t = attn(s_t, memory),  h̃_t = tanh(W_c [c_t; s_t])
    readout   r_t = tanh(W_r [s_t; c_t; e_t]) (Luong: h̃_t), width embed_dim → logits r_t Eᵀ when the
              output layer is tied to the target embedding (Press & Wolf 2017)

The attention is :class:`heedful.attention.ContentAttention` at ``decoder.cross_attn``, so
``explain.capture`` and the translate task's attention maps work as for the Transformer.
Decoding uses the protocol of ``decode.beam``: ``encode``, ``new_cache``, ``decode`` on the new
tokens only; the cache holds the recurrent state and is re-ordered for beam search.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from heedful.attention.content import ContentAttention
from heedful.config import Section
from heedful.models.pretrained import PretrainedModel

RNN_ATTENTIONS = ("none", "bahdanau", "luong_general", "luong_dot")


class RNNConfig(Section):
    arch: Literal["rnn"] = Field(
        "rnn", description="picks the architecture, and with it this section's other keys (rnn: translate only)"
    )
    src_vocab_size: int = Field(0, ge=0, description="set by the task from its vocabulary")
    tgt_vocab_size: int = Field(0, ge=0, description="set by the task from its vocabulary")
    pad_id: int = Field(0, description="the padding token's id (set by the task)")
    cell: Literal["gru", "lstm"] = Field("gru", description="the recurrent cell of the encoder and the decoder")
    attention: Literal["none", "bahdanau", "luong_general", "luong_dot"] = Field(
        "bahdanau",
        description="the decoder's attention over the memory: none (one fixed context, the memory's mean), "
        "bahdanau (additive, asked by the state before each step), luong_general / luong_dot (Luong et al. "
        "2015, asked by the state after it)",
    )
    embed_dim: int = Field(
        256, ge=1, description="width of the token embeddings and of the readout before the output layer"
    )
    hidden_size: int = Field(
        512, ge=2, multiple_of=2, description="memory and decoder width; the encoder has half per direction"
    )
    n_encoder_layers: int = Field(1, ge=1, description="stacked layers of the bidirectional encoder RNN")
    n_decoder_layers: int = Field(
        1, ge=1, description="stacked layers of the decoder RNN (each started from the memory's mean)"
    )
    dropout: float = Field(
        0.3, ge=0, lt=1, description="dropout on the embeddings, the memory, the readout and between stacked layers"
    )
    max_len: int = Field(256, ge=1, description="longest source or target the task feeds, in tokens")
    tie_embeddings: bool = Field(True, description="output layer = target embedding (readout of width embed_dim)")
    share_embeddings: bool = Field(False, description="one embedding for source and target")


class RNNDecoderCache:
    """The recurrent state between decoding calls: ``state`` is h (L, B, H), or (h, c) for LSTM."""

    def __init__(self) -> None:
        self.state: Tensor | tuple[Tensor, Tensor] | None = None
        self.projected_keys: Tensor | None = None  # the memory's key projection, computed once

    def reorder(self, index: Tensor, sources_unchanged: bool = False) -> None:
        """Keep batch rows ``index`` — for beam search (the key projection of the memory is per
        source, so it stays as it is when ``sources_unchanged``)."""
        if isinstance(self.state, tuple):
            self.state = tuple(s.index_select(1, index) for s in self.state)
        elif self.state is not None:
            self.state = self.state.index_select(1, index)
        if self.projected_keys is not None and not sources_unchanged:
            self.projected_keys = self.projected_keys.index_select(0, index)


def _rnn(cell: str, *args, **kwargs) -> nn.RNNBase:
    return (nn.GRU if cell == "gru" else nn.LSTM)(*args, batch_first=True, **kwargs)


def run_packed(rnn: nn.RNNBase, x: Tensor, padding: Tensor) -> Tensor:
    """A batch-first RNN over (B, T, E) inputs, padding (B, T) True = real -> (B, T, H), zero at
    padding. Packing makes each row's states independent of how much padding its batch has."""
    lengths = padding.sum(1).clamp(min=1).cpu()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def masked_mean(memory: Tensor, padding: Tensor) -> Tensor:
    """(B, S, H), (B, S) True = real -> (B, H): the mean over real positions."""
    weights = padding.to(memory.dtype)[:, :, None]
    return (memory * weights).sum(1) / weights.sum(1).clamp(min=1)


class RNNEncoder(nn.Module):
    def __init__(self, cfg: RNNConfig, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        self.dropout = nn.Dropout(cfg.dropout)
        self.rnn = _rnn(
            cfg.cell,
            cfg.embed_dim,
            cfg.hidden_size // 2,
            num_layers=cfg.n_encoder_layers,
            bidirectional=True,
            dropout=cfg.dropout if cfg.n_encoder_layers > 1 else 0.0,
        )

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        """tokens (B, S), padding (B, S) True = real -> memory (B, S, H), zero at padding."""
        x = self.dropout(self.embedding(tokens))  # (B, S, E)
        memory = run_packed(self.rnn, x, padding)  # (B, S, H)
        return self.dropout(memory)


class RNNDecoder(nn.Module):
    def __init__(self, cfg: RNNConfig, embedding: nn.Embedding):
        super().__init__()
        self.cfg = cfg
        H, E, L = cfg.hidden_size, cfg.embed_dim, cfg.n_decoder_layers
        self.embedding = embedding
        self.dropout = nn.Dropout(cfg.dropout)
        self.init_state = nn.Linear(H, H * L)
        feeds_context = cfg.attention in ("none", "bahdanau")
        self.rnn = _rnn(cfg.cell, E + H if feeds_context else E, H, num_layers=L, dropout=cfg.dropout if L > 1 else 0)
        if cfg.attention == "bahdanau":
            self.cross_attn = ContentAttention("additive", H, H, d_attn=H)
        elif cfg.attention.startswith("luong"):
            self.cross_attn = ContentAttention(cfg.attention.removeprefix("luong_"), H, H)
            self.combine = nn.Linear(2 * H, H, bias=False)  # W_c [c_t; s_t]
        self.readout = nn.Linear(H if cfg.attention.startswith("luong") else 2 * H + E, E)
        self.output = nn.Linear(E, cfg.tgt_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.embedding.weight

    def _initial_state(self, memory: Tensor, padding: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        B, L = memory.shape[0], self.cfg.n_decoder_layers
        h0 = torch.tanh(self.init_state(masked_mean(memory, padding)))  # (B, L·H)
        h0 = h0.view(B, L, -1).transpose(0, 1).contiguous()  # (L, B, H)
        return (h0, torch.zeros_like(h0)) if self.cfg.cell == "lstm" else h0

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor,
        padding: Tensor,
        cache: RNNDecoderCache | None = None,
        keep: Tensor | None = None,
    ) -> Tensor:
        """tokens (B, T): the target so far (only the new ones when ``cache`` holds the state)
        -> logits (B, T, V); with ``keep`` (B, T) bool, only those positions' (N, V)."""
        cache = cache if cache is not None else RNNDecoderCache()
        if cache.state is None:
            cache.state = self._initial_state(memory, padding)
        e = self.dropout(self.embedding(tokens))  # (B, T, E)
        kind = self.cfg.attention
        if kind == "none":
            context = masked_mean(memory, padding)[:, None].expand(-1, e.shape[1], -1)  # (B, T, H)
            states, cache.state = self.rnn(torch.cat([e, context], -1), cache.state)  # (B, T, H)
            r = torch.cat([states, context, e], -1)
        elif kind == "bahdanau":
            if cache.projected_keys is None:
                cache.projected_keys = self.cross_attn.project_keys(memory)  # (B, S, A), once per batch
            outputs, contexts = [], []
            for t in range(e.shape[1]):  # the query is the state before the step: inherently sequential
                h = cache.state[0] if isinstance(cache.state, tuple) else cache.state
                context, _ = self.cross_attn(h[-1][:, None], memory, padding, cache.projected_keys)  # (B, 1, H)
                out, cache.state = self.rnn(torch.cat([e[:, t : t + 1], context], -1), cache.state)
                outputs.append(out)
                contexts.append(context)
            states, context = torch.cat(outputs, 1), torch.cat(contexts, 1)  # (B, T, H) each
            r = torch.cat([states, context, e], -1)
        else:  # luong: attend after the step, all steps at once
            states, cache.state = self.rnn(e, cache.state)  # (B, T, H)
            context, _ = self.cross_attn(states, memory, padding)  # (B, T, H)
            r = torch.tanh(self.combine(torch.cat([context, states], -1)))  # h̃_t
        if keep is not None:
            r = r[keep]  # (N, ·): the readout and vocabulary projection only where the loss looks
        r = self.dropout(torch.tanh(self.readout(self.dropout(r))))  # (B, T, E)
        return self.output(r)  # (B, T, V)


class RNNEncoderDecoder(PretrainedModel):
    """Sequence to sequence with RNNs: ``forward(src, tgt_in) -> logits (B, T, V_tgt)``, the same
    contract as :class:`~heedful.models.transformer.TransformerEncoderDecoder`."""

    model_type = "rnn-encoder-decoder"
    config_class = RNNConfig

    def __init__(self, config: RNNConfig):
        super().__init__(config)
        if config.src_vocab_size < 1 or config.tgt_vocab_size < 1:
            raise ValueError("src_vocab_size and tgt_vocab_size must be set (the task sets them from its vocab)")
        src_embedding = nn.Embedding(config.src_vocab_size, config.embed_dim, padding_idx=config.pad_id)
        tgt_embedding = (
            src_embedding
            if config.share_embeddings
            else nn.Embedding(config.tgt_vocab_size, config.embed_dim, padding_idx=config.pad_id)
        )
        for embedding in {id(src_embedding): src_embedding, id(tgt_embedding): tgt_embedding}.values():
            nn.init.normal_(embedding.weight, std=config.embed_dim**-0.5)
            with torch.no_grad():
                embedding.weight[config.pad_id].zero_()
        self.encoder = RNNEncoder(config, src_embedding)
        self.decoder = RNNDecoder(config, tgt_embedding)

    def cross_attention_name(self, layer: int = -1) -> str | None:
        """The module whose weights are the source–target attention (None: this model has none)."""
        return None if self.config.attention == "none" else "decoder.cross_attn"

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src: (B, S) ids -> memory (B, S, H) and its padding mask (B, S), True = real token."""
        padding = src != self.config.pad_id
        return self.encoder(src, padding), padding

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_padding: Tensor, cache: RNNDecoderCache | None = None):
        return self.decoder(tgt_in, memory, memory_padding, cache)

    def new_cache(self) -> RNNDecoderCache:
        return RNNDecoderCache()

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None) -> Tensor:
        """Logits (B, T, V), or with ``keep`` (B, T) bool only those positions' (N, V)."""
        memory, padding = self.encode(src)
        return self.decoder(tgt_in, memory, padding, None, keep)
