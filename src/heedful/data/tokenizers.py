"""Tokenizers: text ↔ ids, with one small interface for characters and for subword pieces.

Both kinds share the special ids of :class:`~heedful.data.vocab.CharVocab` — 0 <pad>, 1 <bos>,
2 <eos>, 3 <unk> — so a model, a decoder and a loss never need to know which kind made the ids:

    tok.encode("A man rides.", eos=True)   # [ids], optionally framed by <bos>/<eos>
    tok.decode(ids)                        # text up to the first <eos>, specials dropped
    tok.batch(texts, bos=True)             # (B, T_max) right-padded with pad_id
    tok.pieces("A man")                    # one label per id, for attention heatmaps
    len(tok), tok.pad_id, tok.bos_id, tok.eos_id

Subwords come from sentencepiece (Kudo & Richardson 2018): a unigram language model (Kudo 2018)
or BPE (Sennrich et al. 2016), trained from the training text when a run starts, with
``byte_fallback`` so that a character never seen in training is spelled as its UTF-8 bytes
instead of becoming <unk>. Decoding gives detokenized text (sentencepiece keeps the spaces as
``▁``), which is what sacreBLEU expects.

A model folder holds the tokenizers as files plus ``tokenizers.json``, which says which file
serves which side; with a joint vocabulary both sides name the same file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from heedful.data.vocab import SPECIALS, CharVocab
from heedful.errors import CheckpointError, ConfigError

MANIFEST = "tokenizers.json"
N_SPECIALS = len(SPECIALS)  # ids below this are <pad> <bos> <eos> <unk>


@runtime_checkable
class Tokenizer(Protocol):
    """What the translate task needs from a tokenizer, whatever its kind."""

    kind: str
    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int

    def __len__(self) -> int: ...

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def batch(self, texts: list[str], *, bos: bool = False, eos: bool = False) -> Tensor: ...

    def pieces(self, text: str) -> list[str]: ...

    def id_to_piece(self, i: int) -> str: ...

    def save(self, path: Path) -> None: ...


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int = 0, width: int = 0) -> Tensor:
    """Right-pad id lists into one (B, W) long tensor: W the longest list, at least ``width`` and 1."""
    width = max(1, width, max((len(s) for s in sequences), default=0))
    out = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            out[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return out


def content_ids(ids: Iterable[int], eos_id: int = 2) -> list[int]:
    """The ids a decoder produced, cut at the first <eos> and without specials: exactly the ids
    behind the decoded text, one per output piece."""
    out = []
    for i in ids:
        i = int(i)
        if i == eos_id:
            break
        if i >= N_SPECIALS:
            out.append(i)
    return out


# --------------------------------------------------------------------------------------- characters
class CharTokenizer(CharVocab):
    """A :class:`CharVocab` that speaks the :class:`Tokenizer` interface; saved in the same JSON, so
    older model folders (``src_vocab.json``) load as this."""

    kind = "char"

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """Every character of the training text, in sorted order (so the ids do not depend on the
        order of the lines)."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(sorted(chars))

    def pieces(self, text: str) -> list[str]:
        return list(text)

    def id_to_piece(self, i: int) -> str:
        return self.itos[int(i)]


# ------------------------------------------------------------------------------------ sentencepiece
SentencePieceType = Literal["unigram", "bpe"]
Normalization = Literal["nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity"]


class SentencePieceTokenizer:
    """Subword pieces from a trained sentencepiece model, with heedful's special ids."""

    kind = "sentencepiece"
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, model_proto: bytes):
        import sentencepiece

        self.proto = bytes(model_proto)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.proto)
        specials = [self.sp.id_to_piece(i) for i in range(N_SPECIALS)]
        if specials != list(SPECIALS):
            raise ValueError(f"sentencepiece model has specials {specials}, expected {list(SPECIALS)} as ids 0-3")

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int,
        model_type: SentencePieceType = "unigram",
        character_coverage: float = 1.0,
        normalization: Normalization = "nmt_nfkc",
    ) -> SentencePieceTokenizer:
        """Train in memory on ``texts`` (one sentence each).

        ``vocab_size`` is an upper bound (``hard_vocab_limit=False``): a corpus too small for it
        gets the vocabulary it can support rather than an error. It counts the 4 specials and the
        256 byte pieces of ``byte_fallback``. One thread, because sentencepiece's result depends on
        the thread count — and a resumed run retrains the tokenizer and must get the same ids.
        """
        import sentencepiece

        writer = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=writer,
                model_type=model_type,
                vocab_size=vocab_size,
                hard_vocab_limit=False,
                character_coverage=character_coverage,
                normalization_rule_name=normalization,
                byte_fallback=True,
                pad_id=0,
                bos_id=1,
                eos_id=2,
                unk_id=3,
                pad_piece=SPECIALS[0],
                bos_piece=SPECIALS[1],
                eos_piece=SPECIALS[2],
                unk_piece=SPECIALS[3],
                num_threads=1,
                minloglevel=2,  # no progress chatter on stderr
            )
        except RuntimeError as exc:
            message = str(exc).splitlines()[0]
            message = message.split("] ", 1)[-1]  # drop sentencepiece's source location
            raise ConfigError(f"config key 'data.tokenizer': sentencepiece could not train ({message})") from None
        return cls(writer.getvalue())

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        return [self.bos_id] * bos + self.sp.encode(text) + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenized text up to the first <eos>; specials are dropped, byte pieces reassembled."""
        return self.sp.decode(content_ids(ids, self.eos_id))

    def batch(self, texts: list[str], *, bos: bool = False, eos: bool = False) -> Tensor:
        return pad_ids([self.encode(t, bos=bos, eos=eos) for t in texts], self.pad_id)

    def pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def save(self, path: Path) -> None:
        path.write_bytes(self.proto)

    @classmethod
    def load(cls, path: Path) -> SentencePieceTokenizer:
        try:
            proto = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: tokenizer file missing") from None
        try:
            return cls(proto)
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a heedful sentencepiece model ({str(exc).splitlines()[0]})") from None


# ------------------------------------------------------------------------------- a pair, on disk
def save_tokenizers(directory: Path, src: Tokenizer, tgt: Tokenizer) -> None:
    """Write both sides' tokenizers and ``tokenizers.json`` naming them. A joint tokenizer (the
    same object on both sides) is written once."""
    names = {"char": ("src_vocab.json", "tgt_vocab.json"), "sentencepiece": ("src.model", "tgt.model")}
    joint_names = {"char": "vocab.json", "sentencepiece": "spm.model"}
    manifest: dict[str, dict[str, str]] = {}
    for side, tok, default in (("source", src, 0), ("target", tgt, 1)):
        name = joint_names[tok.kind] if src is tgt else names[tok.kind][default]
        manifest[side] = {"kind": tok.kind, "file": name}
        tok.save(directory / name)
    (directory / MANIFEST).write_text(json.dumps({"version": 1, **manifest}, indent=2) + "\n")


def load_tokenizers(directory: Path) -> tuple[Tokenizer, Tokenizer]:
    """Read what :func:`save_tokenizers` wrote; folders from before it (``src_vocab.json`` and
    ``tgt_vocab.json`` only) load as character tokenizers."""
    path = directory / MANIFEST
    if not path.is_file():
        return CharTokenizer.load(directory / "src_vocab.json"), CharTokenizer.load(directory / "tgt_vocab.json")
    try:
        manifest = json.loads(path.read_text())
        entries = [(manifest[side]["kind"], manifest[side]["file"]) for side in ("source", "target")]
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: expected 'source' and 'target' entries with 'kind' and 'file'") from None
    loaded: dict[str, Tokenizer] = {}
    for kind, name in entries:
        if name in loaded:
            continue  # joint: both sides share one object
        if kind == "char":
            loaded[name] = CharTokenizer.load(directory / name)
        elif kind == "sentencepiece":
            loaded[name] = SentencePieceTokenizer.load(directory / name)
        else:
            raise CheckpointError(f"{path}: unknown tokenizer kind {kind!r} (char, sentencepiece)")
    return loaded[entries[0][1]], loaded[entries[1][1]]


def train_tokenizers(sources: list[str], targets: list[str], t: Any) -> tuple[Tokenizer, Tokenizer]:
    """A source and a target tokenizer trained on parallel text as ``t`` (translate's
    ``data.tokenizer``) says: characters or sentencepiece, one joint vocabulary or two."""
    if t.kind == "char":
        train = CharTokenizer.train
    else:

        def train(texts: list[str]) -> Tokenizer:
            return SentencePieceTokenizer.train(
                texts,
                vocab_size=t.vocab_size,
                model_type=t.model_type,
                character_coverage=t.character_coverage,
                normalization=t.normalization,
            )

    if t.joint:
        joint = train(sources + targets)
        return joint, joint
    return train(sources), train(targets)


def padded_width(longest: int, multiple: int, limit: int | None = None) -> int:
    """``longest`` rounded up to a multiple of ``multiple``, but not past ``limit`` (e.g. the
    model's position table) when rounding would cross it: shapes then repeat from batch to batch
    (a GPU plans and tunes a kernel once per shape) and fill its tensor cores' tiles of 8."""
    rounded = -(-longest // multiple) * multiple
    return rounded if limit is None or rounded <= limit else max(longest, limit)
