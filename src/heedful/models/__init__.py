"""Models built on the attention core."""

from heedful.models.pretrained import PretrainedModel, load_pretrained
from heedful.models.transformer import (
    DecoderCache,
    TransformerConfig,
    TransformerEncoderDecoder,
    TransformerEncoderModel,
)

__all__ = [
    "DecoderCache",
    "PretrainedModel",
    "TransformerConfig",
    "TransformerEncoderDecoder",
    "TransformerEncoderModel",
    "load_pretrained",
]
