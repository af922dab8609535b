"""The attention core every heedful model is built on."""

from heedful.attention.attend import Attend
from heedful.attention.base import AttentionModule
from heedful.attention.cache import CacheArena, KVCache
from heedful.attention.coattention import CoAttentionOutput, ParallelCoAttention
from heedful.attention.content import ContentAttention
from heedful.attention.masks import causal_mask, combine_masks, lengths_mask, padding_mask
from heedful.attention.multihead import AttentionOutput, MultiHeadAttention, prefer_fused
from heedful.attention.positions import (
    ALiBiPositions,
    AttentionPositions,
    LearnedPositions,
    RelativePositions,
    RotaryPositions,
    SinusoidalPositions,
)
from heedful.attention.scores import (
    AdditiveScore,
    DotScore,
    GeneralScore,
    ScaledDotScore,
    Score,
    masked_softmax,
)

__all__ = [
    "ALiBiPositions",
    "AdditiveScore",
    "Attend",
    "AttentionModule",
    "AttentionOutput",
    "AttentionPositions",
    "CacheArena",
    "CoAttentionOutput",
    "ContentAttention",
    "DotScore",
    "GeneralScore",
    "KVCache",
    "LearnedPositions",
    "MultiHeadAttention",
    "ParallelCoAttention",
    "RelativePositions",
    "RotaryPositions",
    "ScaledDotScore",
    "Score",
    "SinusoidalPositions",
    "causal_mask",
    "combine_masks",
    "lengths_mask",
    "masked_softmax",
    "padding_mask",
    "prefer_fused",
]
