"""The translate task's config: its data sources, tokenizers, model architectures and decoding.

Kept apart from tasks/translate.py so that the task module reads as the task itself (data →
model → loss → metrics → predict → explain); every field is documented where it is declared."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from heedful.config import RunConfig, Section
from heedful.data.parallel import Format, OnBadLine
from heedful.data.tokenizers import Normalization, SentencePieceType
from heedful.models.rnn import RNNConfig
from heedful.models.transformer import TransformerConfig

SPLITS = ("train", "val", "test")


class SplitPaths(Section):
    """Two explicit files of a ``text`` split (relative to ``data.root``)."""

    src: Path
    tgt: Path


class TokenizerConfig(Section):
    """How ``data.source: parallel`` cuts text into tokens (the built-ins always use characters)."""

    kind: Literal["sentencepiece", "char"] = Field(
        "sentencepiece", description="parallel: sentencepiece subword pieces, or characters (char)"
    )
    model_type: SentencePieceType = Field("unigram", description="sentencepiece: unigram | bpe")
    vocab_size: int = Field(8000, ge=8, description="sentencepiece: upper bound, incl. 4 specials + 256 bytes")
    joint: bool = Field(True, description="one vocabulary for source and target (lets model.share_embeddings)")
    character_coverage: float = Field(1.0, gt=0, le=1, description="sentencepiece: 1.0 for Latin text")
    normalization: Normalization = Field("nmt_nfkc", description="sentencepiece normalization rule")
    from_run: Path | None = Field(
        None,
        description="a translate run directory whose tokenizers (its model/ folder) this run uses instead of "
        "training its own: one vocabulary with that run (a distilled student and its teacher)",
    )


class TranslateData(Section):
    source: Literal["dates", "numbers", "parallel"] = Field(
        "dates",
        description="dates | numbers: built-in pairs generated on the fly, read as characters; parallel: "
        "sentence pairs from files",
    )
    val_size: int = Field(1000, ge=1, description="dates, numbers: examples in the fixed validation set")
    test_size: int = Field(2000, ge=1, description="dates, numbers: examples in the fixed test set")
    heldout_seed: int = Field(20211105, description="seed of the fixed validation and test sets")
    source_lang: str = Field("en", description="numbers: num2words code; parallel: file suffix / JSONL field")
    target_lang: str = Field("de", description="numbers: num2words code; parallel: file suffix / JSONL field")
    max_value: int = Field(999_999, ge=10, description="numbers: largest number drawn")
    # ---- parallel
    root: Path | None = Field(None, description="parallel: folder the split paths are relative to")
    format: Format = Field("text", description="parallel: text (two files) | tsv | jsonl")
    train: str | SplitPaths | None = Field(
        None,
        description="parallel: text: a prefix (train → train.<lang>[.gz]) or {src, tgt}; tsv/jsonl: a file; "
        "relative to data.root, or absolute (a distilled corpus inside the student's run directory)",
    )
    val: str | SplitPaths | None = Field(None, description="parallel: the validation split, given as data.train is")
    test: str | SplitPaths | None = Field(None, description="parallel: the test split, given as data.train is")
    fields: tuple[str, str] | None = Field(None, description="jsonl: source and target field (default: languages)")
    on_bad_line: OnBadLine = Field("error", description="parallel: error | skip (counted and reported)")
    tokenizer: TokenizerConfig = TokenizerConfig()
    max_tokens: int | None = Field(128, ge=1, description="parallel: drop training pairs longer (either side)")
    max_ratio: float | None = Field(None, ge=1, description="parallel: drop training pairs with a longer length ratio")
    batch_tokens: int = Field(4096, ge=1, description="parallel: tokens per training batch and side, padding included")
    pad_to_multiple: int = Field(
        1, ge=1, description="pad batch lengths (source and target) to a multiple of this: 8 on a GPU"
    )


class DecodeConfig(Section):
    max_len: int = Field(32, ge=1, description="longest output, in tokens")
    min_len: int = Field(
        0,
        ge=0,
        description="shortest output, in tokens: <eos> is not allowed before it (1: never an empty output); "
        "an output limit below it still ends the output",
    )
    beam_size: int = Field(1, ge=1, description="1: greedy (KV cache); more: beam search")
    val_beam_size: int | None = Field(
        None, ge=1, description="beam for the per-epoch validation during training (default: beam_size)"
    )
    alpha: float = Field(0.6, ge=0, le=10, description="beam length penalty ((5 + |y|) / 6)^alpha, 0 to 10")
    early_stopping: bool = Field(
        False,
        description="beam: a sentence is done once beam_size hypotheses have ended (faster, and it can miss the "
        "best: 0.9 BLEU lower on the Multi30k model in docs/RESULTS.md; by default it goes on while a live "
        "hypothesis could still beat them)",
    )
    max_len_ratio: float | None = Field(None, gt=0, description="cap output at ratio × source tokens + offset")
    max_len_offset: int = Field(10, ge=0, description="with max_len_ratio: tokens added to ratio × source tokens")
    batch_tokens: int = Field(4096, ge=1, description="source tokens × beam per decoding batch, padding included")
    workers: int | Literal["auto"] = Field(
        "auto",
        description="CPU: decode this many batches at once, one torch thread each; auto: one per torch thread "
        "(at most 4); 1: one batch at a time on all of torch's threads. GPUs decode one batch at a time",
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("a number of batches at once (1 or more), or auto")

    prepacked: bool = Field(
        True,
        description="CPU, float32: Linear layers on oneDNN's prepacked kernels (faster; equal to plain PyTorch's "
        "up to rounding, so a near-tie between beams may break the other way); false: plain F.linear",
    )
    explain_layer: int = Field(-1, description="decoder layer whose cross-attention maps show")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: decode under bfloat16 autocast (faster on CPUs with AVX512-BF16 and on GPUs)"
    )


def _architecture(model: Any) -> str:
    """``model.arch`` picks the model config; configs without it mean the Transformer."""
    return model.get("arch", "transformer") if isinstance(model, dict) else getattr(model, "arch", "transformer")


ModelConfig = Annotated[
    Annotated[TransformerConfig, Tag("transformer")] | Annotated[RNNConfig, Tag("rnn")],
    Discriminator(_architecture),
]


class AlignmentSupervision(Section):
    """One cross-attention head trained to align (Garg et al. 2019, §4.2): during training its
    weights are pulled toward gold word alignments by a cross-entropy added to the loss
    (tasks/alignment_supervision.py; docs/EXPLAIN.md, "Trained alignment"). ``data.source:
    parallel`` only."""

    path: Path = Field(
        description="Pharaoh word alignments, one line per line of the training files in corpus order: "
        "0-based 'i-j' links from source word i to target word j, words being what whitespace separates "
        "(as heedful align counts them); a line may be empty (that pair is not supervised)"
    )
    layer: int = Field(-1, description="decoder layer whose cross-attention holds the supervised head")
    head: int = Field(0, ge=0, description="the supervised head of that layer")
    weight: float = Field(0.05, gt=0, description="λ in loss = cross-entropy + λ · alignment cross-entropy")


class TranslateConfig(RunConfig):
    task: Literal["translate"] = Field("translate", description="which task reads the rest of the config")
    data: TranslateData = TranslateData()
    model: ModelConfig = TransformerConfig()
    decode: DecodeConfig = DecodeConfig()
    alignment_supervision: AlignmentSupervision | None = Field(
        None, description="train one cross-attention head toward word alignments (off by default)"
    )

    @model_validator(mode="after")
    def _explain_layer_exists(self) -> TranslateConfig:
        # Taken modulo the depth, layer 10 of a 2-layer decoder would silently show layer 0.
        layers = getattr(self.model, "n_decoder_layers", None)
        if layers and not -layers <= self.decode.explain_layer < layers:
            raise ValueError(
                f"decode.explain_layer={self.decode.explain_layer}: the decoder has {layers} layers "
                f"(0 to {layers - 1}, or -{layers} to -1 counting from the top)"
            )
        return self
