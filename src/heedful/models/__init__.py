"""Models built on the attention core."""

from heedful.models.encoder_classifier import ClassifierConfig, EncoderClassifier
from heedful.models.masked_lm import MaskedLanguageModel, MaskedLMConfig
from heedful.models.pretrained import PretrainedModel, load_pretrained
from heedful.models.rnn import RNNConfig, RNNEncoderDecoder
from heedful.models.sagan import SAGAN, SAGANConfig
from heedful.models.transformer import (
    DecoderCache,
    TransformerConfig,
    TransformerEncoderDecoder,
    TransformerEncoderModel,
)

__all__ = [
    "SAGAN",
    "ClassifierConfig",
    "DecoderCache",
    "EncoderClassifier",
    "MaskedLMConfig",
    "MaskedLanguageModel",
    "PretrainedModel",
    "RNNConfig",
    "RNNEncoderDecoder",
    "SAGANConfig",
    "TransformerConfig",
    "TransformerEncoderDecoder",
    "TransformerEncoderModel",
    "load_pretrained",
]
