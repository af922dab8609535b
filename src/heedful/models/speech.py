"""Speech recognizer: a CNN front end, then self-attention over frames, then a head.

    log-mel (B, T, M) ─ conv blocks, stride 2 in time and frequency ─► (B, T', C·M')
                      ─ linear ─► (B, T', D) ─ encoder ─► (B, T', D)
                      ─ head ─► classify: masked mean over frames → (B, n_classes)
                                ctc:      per frame → (B, T', vocab + blank)

The CNN extracts local time–frequency patterns and shortens the sequence (each block halves T);
the encoder relates frames across the whole utterance. ``encoder`` selects the middle for the
ablation the issue asks for: ``attention`` (Transformer layers on heedful's attention core,
positions ``rope``/``relative``/``sinusoidal``/``alibi``/``none``), ``bigru`` (a bidirectional
GRU of similar size), or ``none`` (CNN only).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from heedful.attention.positions import POSITIONS, build_input_positions
from heedful.config import Section
from heedful.models.encoder_classifier import AttentionPooling
from heedful.models.pretrained import PretrainedModel
from heedful.models.rnn import masked_mean
from heedful.models.transformer import EncoderLayer, TransformerConfig


class SpeechConfig(Section):
    n_mels: int = Field(40, ge=4, description="mel bands of the log-mel features (each frame's frequency axis)")
    per_bin_variance: bool = Field(
        True,
        description="normalise each utterance's mel bins to unit variance one by one (true) or together "
        "(false: quiet bands stay quiet)",
    )
    per_bin_mean: bool = Field(
        True,
        description="subtract each mel bin's mean over the utterance (true: also removes a constant "
        "channel colouring) or one mean over all bins (false: keeps the utterance's average spectrum)",
    )
    n_cepstra: int | None = Field(
        None,
        ge=1,
        description="smooth each log-mel frame to its first n cepstral coefficients (removes pitch "
        "harmonics, a speaker trait); null = off",
    )
    conv_channels: list[int] = Field(
        default_factory=lambda: [32, 64],
        min_length=1,
        max_length=4,
        description="output channels of each front-end block (3×3 conv, stride 2: each block halves the frames "
        "and the mel bands)",
    )
    d_model: int = Field(128, ge=8, description="width of the frame states the front end projects to")
    encoder: Literal["attention", "bigru", "none"] = Field(
        "attention",
        description="what relates the frames after the front end: Transformer layers (attention), a "
        "bidirectional GRU (bigru; see gru_hidden), or nothing (none: the CNN alone)",
    )
    n_layers: int = Field(3, ge=1, description="encoder layers (attention or bigru)")
    n_heads: int = Field(4, ge=1, description="attention: heads per layer")
    d_ff: int = Field(256, ge=1, description="attention: inner width of each feed-forward block")
    dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="dropout on the front end's output, inside the attention layers and between bigru layers",
    )
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="attention: dropout on the attention weights")
    position: str = Field("rope", description=" | ".join(POSITIONS))
    max_frames: int = Field(2048, ge=1, description="longest utterance in frames after the CNN")
    gru_hidden: int | None = Field(None, ge=1, description="bigru: per direction; default matches attention's size")
    head: Literal["classify", "ctc"] = Field(
        "classify",
        description="classify: one class per utterance (data.mode: digits); ctc: a symbol or blank per frame, "
        "CTC-trained (data.mode: strings)",
    )
    pooling: Literal["mean", "attention"] = Field(
        "mean",
        description="classify: the frames' mean, or additive attention of one learned query over them (which can "
        "weigh a word's consonants above its long vowel)",
    )
    n_classes: int = Field(10, ge=2, description="classes (classify) or symbols without the blank (ctc)")

    @model_validator(mode="after")
    def _cepstra_fit_the_bands(self) -> SpeechConfig:
        if self.n_cepstra is not None and self.n_cepstra > self.n_mels:
            raise ValueError(f"n_cepstra ({self.n_cepstra}) cannot exceed n_mels ({self.n_mels})")
        if self.pooling != "mean" and self.head != "classify":
            raise ValueError("pooling applies to head 'classify' (a CTC head reads every frame)")
        return self

    def transformer(self) -> TransformerConfig:
        """The encoder layers' settings, in the form the Transformer layers take."""
        return TransformerConfig(
            d_model=self.d_model, n_heads=self.n_heads, n_encoder_layers=self.n_layers, n_decoder_layers=0,
            d_ff=self.d_ff, dropout=self.dropout, attention_dropout=self.attention_dropout,
            position=self.position, max_len=self.max_frames, activation="gelu",
        )  # fmt: skip


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matching_gru_hidden(config: SpeechConfig) -> int:
    """The BiGRU width per direction whose encoder has about as many parameters as the attention
    encoder of the same config — so the ablation compares mechanisms, not sizes."""
    layer_cfg = config.transformer()
    target = _n_params(EncoderLayer(layer_cfg)) * config.n_layers + 2 * config.d_model  # + final norm

    def size(hidden: int) -> int:
        gru = 2 * sum(3 * hidden * (d_in + hidden) + 6 * hidden  # two directions, three gates, two biases
                      for d_in in [config.d_model] + [2 * hidden] * (config.n_layers - 1))  # fmt: skip
        return gru + (2 * hidden + 1) * config.d_model + 2 * config.d_model  # + output projection, norm

    return min(range(4, 4 * config.d_model), key=lambda h: abs(size(h) - target))


class ConvFrontEnd(nn.Module):
    """Blocks of Conv2d(3×3, stride 2) → BatchNorm → GELU over (time, mel), then a projection.

    Frames past each utterance's end are zeroed before the first block and after every block, so
    what sits in the padding never reaches a real frame: the network sees an utterance the same
    whether it is batched with longer ones or alone.
    """

    def __init__(self, n_mels: int, channels: list[int], d_model: int):
        super().__init__()
        self.blocks = nn.ModuleList()
        c_in, mels = 1, n_mels
        for c_out in channels:
            self.blocks.append(
                nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU())
            )
            c_in, mels = c_out, (mels + 1) // 2
        self.project = nn.Linear(c_in * mels, d_model)

    @staticmethod
    def _halve(lengths: Tensor) -> Tensor:  # kernel 3, stride 2, padding 1: ⌊(T − 1) / 2⌋ + 1
        return torch.div(lengths - 1, 2, rounding_mode="floor") + 1

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for _ in self.blocks:
            lengths = self._halve(lengths)
        return lengths

    @staticmethod
    def _mask_time(x: Tensor, lengths: Tensor) -> Tensor:
        keep = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        return x * keep[:, None, :, None].to(x.dtype)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        x = self._mask_time(features.unsqueeze(1), lengths)  # (B, 1, T, M)
        for block in self.blocks:
            lengths = self._halve(lengths)
            x = self._mask_time(block(x), lengths)  # (B, C, T', M')
        B, C, T, M = x.shape
        return self.project(x.permute(0, 2, 1, 3).reshape(B, T, C * M))  # (B, T', D)


class SpeechModel(PretrainedModel):
    """``forward(features (B, T, M), lengths (B,)) -> (logits, frame_lengths)``.

    logits: (B, n_classes) for ``head: classify``; (B, T', n_classes + 1) for ``head: ctc``,
    with the CTC blank at index 0.
    """

    model_type = "speech"
    config_class = SpeechConfig

    def __init__(self, config: SpeechConfig):
        super().__init__(config)
        self.front = ConvFrontEnd(config.n_mels, config.conv_channels, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.positions = None
        if config.encoder == "attention":
            layer_cfg = config.transformer()
            self.positions = build_input_positions(config.position, config.d_model, config.max_frames)
            self.layers = nn.ModuleList(EncoderLayer(layer_cfg) for _ in range(config.n_layers))
            self.norm = nn.LayerNorm(config.d_model)
        elif config.encoder == "bigru":
            hidden = config.gru_hidden or matching_gru_hidden(config)
            dropout = config.dropout if config.n_layers > 1 else 0.0
            self.gru = nn.GRU(config.d_model, hidden, num_layers=config.n_layers, batch_first=True,
                              bidirectional=True, dropout=dropout)  # fmt: skip
            self.gru_out = nn.Linear(2 * hidden, config.d_model)
            self.norm = nn.LayerNorm(config.d_model)
        n_out = config.n_classes + (1 if config.head == "ctc" else 0)
        self.pool = AttentionPooling(config.d_model) if config.pooling == "attention" else None
        self.head = nn.Linear(config.d_model, n_out)

    def encode(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> frame states (B, T', D), frame lengths (B,), frame mask (B, T') True = real frame."""
        x = self.dropout(self.front(features, lengths))  # (B, T', D)
        frame_lengths = self.front.output_lengths(lengths).clamp(max=x.shape[1])
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < frame_lengths[:, None]  # (B, T')
        if self.config.encoder == "attention":
            if self.positions is not None:
                x = self.positions(x)
            for layer in self.layers:
                x = layer(x, mask)
            x = self.norm(x)
        elif self.config.encoder == "bigru":
            packed = nn.utils.rnn.pack_padded_sequence(x, frame_lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.gru(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            x = self.norm(self.gru_out(x))
        return x, frame_lengths, mask

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x, frame_lengths, mask = self.encode(features, lengths)
        if self.config.head == "ctc":
            return self.head(x), frame_lengths  # (B, T', V + 1)
        pooled = self.pool(x, mask) if self.pool is not None else masked_mean(x, mask)  # (B, D)
        return self.head(pooled), frame_lengths  # (B, n_classes)
