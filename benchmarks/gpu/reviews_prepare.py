"""Prepare the GPU run of the Amazon cross-validation (benchmarks/gpu/reviews_run.sh).

    python benchmarks/gpu/reviews_prepare.py      # then, with the device tool:
    run  command="bash benchmarks/gpu/reviews_run.sh"  carry=[".whl-reviews", ".gpu-data"]

The GPU machine gets a copy of the checkout and at most 64 MiB of ignored folders, and it reaches
no package index (../shared/gpu/README.md). MiniLM's weights (91 MB) do not fit as they are, so
this script writes a copy that does and that gives the same outputs on these reviews:
- the rows of the word-piece embedding for pieces that no review of the sample uses (and is not
  among the first 1,000 ids, the specials) are set to zero: no text of the benchmark looks them up,
  so no forward pass, gradient or update of a used weight changes (checked: the encoder's outputs
  equal the full model's on 200 reviews, bit for bit);
- the float32 bytes are stored plane by plane (byte 0 of every float, then byte 1, …) and
  xz-compressed: the exponent planes pack well (46 MB); `unpack_minilm.py` restores the file.
Per-fold records already made here (runs/bench-reviews/records) go along as records.tgz.
The wheels the image lacks go to .whl-reviews (Babel's locale data, unused by this benchmark,
is left out: its wheel is 11 MB).
"""

from __future__ import annotations

import csv
import gzip
import lzma
import random
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from heedful.models.bert import load_bert, load_wordpiece, minilm_dir

DATA = Path("../shared/data/reviews/amazon_unlocked_mobile.csv.gz")
OUT = Path(".gpu-data")
WHEELS = Path(".whl-reviews")


def reviews() -> list[str]:
    with gzip.open(DATA, "rt", encoding="utf-8", newline="") as f:
        return [row["Reviews"] for row in csv.DictReader(f)]


def compact_minilm(target: Path) -> None:
    source = minilm_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, target / name)
    used = set(range(1000))
    for encoding in load_wordpiece(source).encode_batch(reviews()):
        used.update(encoding.ids)
    weights = safetensors.torch.load_file(str(source / "model.safetensors"))
    embedding = weights["embeddings.word_embeddings.weight"]  # (V, D)
    unused = torch.ones(embedding.shape[0], dtype=torch.bool)
    unused[sorted(used)] = False
    embedding[unused] = 0
    zeroed = target / "model.safetensors"
    safetensors.torch.save_file(weights, str(zeroed), metadata={"format": "pt"})
    check_same_outputs(source, target)
    raw = np.fromfile(zeroed, dtype=np.uint8)
    n = int.from_bytes(raw[:8].tobytes(), "little")  # safetensors: 8-byte header length, header, data
    planes = raw[8 + n :].reshape(-1, 4).T  # (4, N): byte k of every float32
    with lzma.open(target / "model.shuffled.xz", "wb", preset=9) as f:
        f.write(raw[: 8 + n].tobytes() + planes.tobytes())
    zeroed.unlink()
    print(f"{target}: {len(used):,} of {embedding.shape[0]:,} word pieces kept", flush=True)


def check_same_outputs(full: Path, compact: Path) -> None:
    a, b, tokenizer = load_bert(full).eval(), load_bert(compact).eval(), load_wordpiece(full)
    with torch.no_grad():
        for text in random.Random(0).sample(reviews(), 200):
            ids = torch.tensor([tokenizer.encode(text).ids[:200]])
            out_a, out_b = a(ids), b(ids)
            out_a, out_b = (out_a[0], out_b[0]) if isinstance(out_a, tuple) else (out_a, out_b)
            if not torch.equal(out_a, out_b):
                raise SystemExit(f"the compacted MiniLM differs from the full one on {text!r}")


def pack_records() -> None:
    """The per-fold records already made here (e.g. on the CPU) travel along, so the GPU run trains
    only the models they lack (further MiniLM seeds)."""
    records = Path("runs/bench-reviews/records")
    if records.is_dir():
        with tarfile.open(OUT / "records.tgz", "w:gz") as tar:
            tar.add(records, arcname="records")
        print(f"{OUT / 'records.tgz'}: {len(list(records.glob('*.json')))} fold records", flush=True)


def main() -> None:
    subprocess.run(["bash", "../shared/gpu/wheels.sh"], check=True)
    WHEELS.mkdir(exist_ok=True)
    for wheel in Path(".whl").glob("*.whl"):
        if wheel.name.startswith("babel-"):
            site = OUT / "site"
            zipfile.ZipFile(wheel).extractall(site)
            keep = {"root.dat", "en.dat", "en_US.dat"}
            for dat in (site / "babel" / "locale-data").glob("*.dat"):
                if dat.name not in keep:
                    dat.unlink()
        else:
            shutil.copy(wheel, WHEELS / wheel.name)
    (OUT / "reviews").mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA, OUT / "reviews" / DATA.name)
    compact_minilm(OUT / "minilm")
    pack_records()
    exclude = Path(".git/info/exclude")
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    exclude.write_text("\n".join([*lines, *(p for p in ("/.gpu-data/", "/.whl-reviews/") if p not in lines)]) + "\n")
    size = sum(f.stat().st_size for d in (OUT, WHEELS) for f in d.rglob("*") if f.is_file())
    print(f"{OUT} and {WHEELS}: {size / 2**20:.1f} MiB (the device tool carries at most 64)")


if __name__ == "__main__":
    main()
