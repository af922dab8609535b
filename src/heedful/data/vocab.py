"""A character vocabulary with the four special symbols every sequence model here uses."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from heedful.errors import CheckpointError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


class CharVocab:
    """Maps characters to ids: 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>, then the characters given."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, chars: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        for ch in chars:
            if len(ch) != 1:
                raise ValueError(f"CharVocab holds single characters, got {ch!r}")
            if ch not in self.itos:
                self.itos.append(ch)
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.stoi.get(ch, self.unk_id) for ch in text]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        """Characters up to the first <eos>; other specials are dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return "".join(out)

    def batch(self, texts: list[str], *, bos: bool = False, eos: bool = False) -> Tensor:
        """Encode and right-pad: (B, T_max) long."""
        encoded = [self.encode(t, bos=bos, eos=eos) for t in texts]
        width = max(1, max(len(e) for e in encoded))
        out = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(encoded):
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"type": "char", "itos": self.itos}, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: Path) -> CharVocab:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: vocabulary file missing") from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if data.get("type") != "char" or data.get("itos", [])[: len(SPECIALS)] != list(SPECIALS):
            raise CheckpointError(f"{path}: not a heedful character vocabulary")
        return cls(data["itos"][len(SPECIALS) :])
