"""Self-attention GAN (Zhang et al. 2018, "Self-Attention Generative Adversarial Networks").

    generator      z (B, Z) [+ class] → linear → (B, C, 4, 4) → up-blocks ×2 each → image (B, ch, R, R)
    discriminator  image → down-blocks ÷2 each → ReLU → sum over positions → linear [+ projection]

Both networks are residual (as in the paper's code), spectrally normalised in every conv and
linear layer (``torch.nn.utils.parametrizations.spectral_norm``), and carry the self-attention
block of §3 at the feature-map resolution ``attention_resolution`` (None: no block, for the
ablation). Class-conditional generation uses conditional batch norm in the generator (a gain and
bias per class, Dumoulin et al.) and a projection discriminator (Miyato & Koyama 2018):
D(x, y) = ψ(φ(x)) + embed(y)·φ(x).

The self-attention block (§3, eq. 1–3), on a feature map x (B, C, H, W) with N = H·W positions:

    f(x) = W_f x,  g(x) = W_g x   (1×1 convs to C/8)      β_{j,i} = softmax_i(f(x_i)ᵀ g(x_j))
    o_j  = W_v Σ_i β_{j,i} h(x_i),  h(x) = W_h x (to C/2)  y = γ·o + x,   γ initialised to 0

so it starts as the identity and the network learns how much non-local evidence to use. Its
weights go through the attention core (``DotScore`` + masked softmax) and are reported to
``explain.capture`` as (B, 1, N, N): row j is where output position j looks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from heedful.attention.base import AttentionModule
from heedful.attention.scores import DotScore
from heedful.config import Section
from heedful.models.pretrained import PretrainedModel


class SAGANConfig(Section):
    image_size: int = Field(32, description="output side: 4 · 2^k (8, 16, 32, 64)")
    channels: int = Field(1, ge=1, description="image channels (1 for digits)")
    z_dim: int = Field(128, ge=1, description="length of the generator's noise vector z")
    width: int = Field(64, ge=8, description="feature channels of the widest generator block")
    n_classes: int = Field(0, ge=0, description="> 0: class-conditional (CBN + projection discriminator)")
    attention_resolution: int | None = Field(16, description="feature-map side that gets self-attention; null: none")
    spectral_norm: bool = Field(
        True,
        description="spectral normalisation of every conv and linear layer of both networks (and of the "
        "discriminator's class embedding)",
    )

    @model_validator(mode="after")
    def _check(self) -> SAGANConfig:
        steps = math.log2(self.image_size / 4)
        if steps < 1 or steps != int(steps):
            raise ValueError(f"image_size must be 4 · 2^k with k ≥ 1 (8, 16, 32, …), got {self.image_size}")
        sides = [4 * 2**i for i in range(1, int(steps) + 1)]
        if self.attention_resolution is not None and self.attention_resolution not in [4, *sides[:-1]]:
            raise ValueError(
                f"attention_resolution {self.attention_resolution} is not an inner feature-map side "
                f"({', '.join(map(str, [4, *sides[:-1]]))}) for image_size {self.image_size}"
            )
        return self

    @property
    def n_blocks(self) -> int:
        return int(math.log2(self.image_size / 4))


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module) if on else module


class SelfAttention2d(AttentionModule):
    """The SAGAN block: y = γ · attention(x) + x over the H·W positions, γ starting at 0."""

    def __init__(self, channels: int, use_sn: bool = True):
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = _sn(nn.Conv2d(channels, inner, 1, bias=False), use_sn)  # f
        self.key = _sn(nn.Conv2d(channels, inner, 1, bias=False), use_sn)  # g
        self.value = _sn(nn.Conv2d(channels, max(channels // 2, 1), 1, bias=False), use_sn)  # h
        self.out = _sn(nn.Conv2d(max(channels // 2, 1), channels, 1, bias=False), use_sn)  # W_v
        self.score = DotScore()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = self.key(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, N, C/2)
        weights = self.score(q, k)  # (B, N, N): row j = where position j looks
        self.report(weights[:, None])
        o = (weights @ v).transpose(1, 2).reshape(B, -1, H, W)  # (B, C/2, H, W)
        return x + self.gamma * self.out(o)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias come from the class (identity-initialised)."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=n_classes == 0)
        self.n_classes = n_classes
        if n_classes:
            self.gain = nn.Embedding(n_classes, channels)
            self.bias = nn.Embedding(n_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = self.norm(x)
        if not self.n_classes:
            return h
        return h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv, plus an upsampled 1×1 shortcut: (B, C_in, s, s) → (B, C_out, 2s, 2s)."""

    def __init__(self, c_in: int, c_out: int, n_classes: int, use_sn: bool):
        super().__init__()
        self.bn1, self.bn2 = ConditionalBatchNorm2d(c_in, n_classes), ConditionalBatchNorm2d(c_out, n_classes)
        self.conv1 = _sn(nn.Conv2d(c_in, c_out, 3, padding=1), use_sn)
        self.conv2 = _sn(nn.Conv2d(c_out, c_out, 3, padding=1), use_sn)
        self.shortcut = _sn(nn.Conv2d(c_in, c_out, 1), use_sn)

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class DiscriminatorBlock(nn.Module):
    """ReLU-conv-ReLU-conv-avgpool, plus a 1×1 shortcut: (B, C_in, s, s) → (B, C_out, s/2, s/2)."""

    def __init__(self, c_in: int, c_out: int, use_sn: bool, first: bool = False):
        super().__init__()
        self.first = first
        self.conv1 = _sn(nn.Conv2d(c_in, c_out, 3, padding=1), use_sn)
        self.conv2 = _sn(nn.Conv2d(c_out, c_out, 3, padding=1), use_sn)
        self.shortcut = _sn(nn.Conv2d(c_in, c_out, 1), use_sn)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)  # no ReLU on the raw image
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        return h + F.avg_pool2d(self.shortcut(x), 2)


class Generator(nn.Module):
    def __init__(self, cfg: SAGANConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.width * 2 ** max(cfg.n_blocks - 1 - i, 0) for i in range(cfg.n_blocks + 1)]  # 4×4 … R×R
        self.widths = widths
        self.linear = _sn(nn.Linear(cfg.z_dim, widths[0] * 16), cfg.spectral_norm)
        self.blocks = nn.ModuleList(
            GeneratorBlock(widths[i], widths[i + 1], cfg.n_classes, cfg.spectral_norm) for i in range(cfg.n_blocks)
        )
        self.attention_after: int | None = None  # index of the block whose output gets attention
        self.attention = None
        if cfg.attention_resolution is not None:
            side = cfg.attention_resolution
            self.attention_after = -1 if side == 4 else int(math.log2(side / 4)) - 1
            channels = widths[self.attention_after + 1]
            self.attention = SelfAttention2d(channels, cfg.spectral_norm)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.to_image = _sn(nn.Conv2d(widths[-1], cfg.channels, 3, padding=1), cfg.spectral_norm)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """z (B, Z), y (B,) class ids -> images (B, channels, R, R) in [−1, 1]."""
        h = self.linear(z).view(z.shape[0], self.widths[0], 4, 4)
        if self.attention_after == -1:
            h = self.attention(h)
        for i, block in enumerate(self.blocks):
            h = block(h, y)
            if i == self.attention_after:
                h = self.attention(h)
        return torch.tanh(self.to_image(F.relu(self.bn(h))))


class Discriminator(nn.Module):
    def __init__(self, cfg: SAGANConfig):
        super().__init__()
        n = cfg.n_blocks
        widths = [cfg.channels] + [cfg.width * 2 ** min(i, n - 1) for i in range(n)]  # R×R … 4×4 (then 4×4 → 2×2)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(widths[i], widths[i + 1], cfg.spectral_norm, first=i == 0) for i in range(n)
        )
        # After block i the side is R / 2^(i+1).
        self.attention_after: int | None = None
        self.attention = None
        if cfg.attention_resolution is not None and cfg.attention_resolution < cfg.image_size:
            self.attention_after = int(math.log2(cfg.image_size / cfg.attention_resolution)) - 1
            self.attention = SelfAttention2d(widths[self.attention_after + 1], cfg.spectral_norm)
        self.linear = _sn(nn.Linear(widths[-1], 1), cfg.spectral_norm)
        self.embed = _sn(nn.Embedding(cfg.n_classes, widths[-1]), cfg.spectral_norm) if cfg.n_classes else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """images (B, channels, R, R), y (B,) -> a realness score per image (B,)."""
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attention_after:
                h = self.attention(h)
        features = F.relu(h).sum(dim=(2, 3))  # (B, C): sum pooling, as in the paper's code
        out = self.linear(features).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * features).sum(1)  # the projection term
        return out


class SAGAN(PretrainedModel):
    """Generator and discriminator in one model folder; ``forward`` generates."""

    model_type = "sagan"
    config_class = SAGANConfig

    def __init__(self, config: SAGANConfig):
        super().__init__(config)
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.generator(z, y)
