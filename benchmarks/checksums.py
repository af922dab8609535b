"""What the weights' sha256 costs: loading and saving a model folder with the sum against without.

    python benchmarks/checksums.py runs/mt40            # a trained run's model/ (Multi30k: 38 MB)
    python benchmarks/checksums.py runs/mt40 --rounds 9

  load, checked    load_pretrained of RUN/model's model saved again (config.json records the sum,
                   which is checked first)
  load, unchecked  that folder copied with the sum taken out of its config.json (a folder saved
                   before heedful kept sums)
  save, hashed     save_pretrained into a fresh folder (writes the weights, hashes them, writes config.json)
  save, unhashed   the same with the hashing replaced by a constant

The two sides of each pair alternate within a round, in one process, with the files in the page
cache (a first untimed pass reads them): what is left is the hashing itself. Per round the
difference and the ratio, then their medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import heedful.models.pretrained as pretrained
from heedful.models.pretrained import SUMS_KEY, load_pretrained


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a trained run directory (its model/ is read, never written)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.run / "model"
    with tempfile.TemporaryDirectory() as scratch:
        model = load_pretrained(folder)
        checked = model.save_pretrained(Path(scratch) / "checked")  # records the sum, whatever RUN's has
        config = json.loads((checked / "config.json").read_text())
        unchecked = Path(scratch) / "unchecked"
        shutil.copytree(checked, unchecked)
        (unchecked / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != SUMS_KEY}))
        size = (checked / "model.safetensors").stat().st_size
        load_pretrained(checked)  # a first pass over both folders' files (page cache)
        load_pretrained(unchecked)
        real_sha256 = pretrained.sha256
        rows = {"load": [], "save": []}
        for _ in range(args.rounds):
            with_sum = timed(lambda: load_pretrained(checked))
            plain = timed(lambda: load_pretrained(unchecked))
            rows["load"].append((with_sum, plain))
            out = Path(scratch) / "saved"
            hashed = timed(lambda out=out: model.save_pretrained(out))
            pretrained.sha256 = lambda path: "0" * 64
            try:
                unhashed = timed(lambda out=out: model.save_pretrained(out))
            finally:
                pretrained.sha256 = real_sha256
            rows["save"].append((hashed, unhashed))
    print(f"{folder}: model.safetensors {size / 1e6:.1f} MB, {args.rounds} rounds, {args.threads} thread(s)")
    for name, pairs in rows.items():
        with_sum = statistics.median(a for a, _ in pairs) * 1e3
        without = statistics.median(b for _, b in pairs) * 1e3
        extra = statistics.median(a - b for a, b in pairs) * 1e3
        ratio = statistics.median(a / b for a, b in pairs)
        rate = size / (extra / 1e3) / 1e9 if extra > 0 else float("inf")
        print(f"{name}: with the sum {with_sum:.1f} ms, without {without:.1f} ms; "
              f"+{extra:.1f} ms ({ratio:.2f}× paired), hashing at {rate:.2f} GB/s")  # fmt: skip


if __name__ == "__main__":
    main()
