"""How fast a review file streams through ``read_labelled``, against another checkout's reader.

    python benchmarks/read_reviews.py                         # this checkout alone
    git worktree add /tmp/before 84b14b3^
    python benchmarks/read_reviews.py --against /tmp/before   # both, alternating, and their ratio

The file is synthetic: 413,840 rows (the size of the full Kaggle phone-review set) of 60 words,
written once to runs/bench-reviews/read-413840.csv.gz. Each reader runs in its own process, in
turns, and keeps its best of 3 reads, since the machine is shared.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import random
import subprocess
import sys
from pathlib import Path

ROWS = 413_840
FILE = Path(f"runs/bench-reviews/read-{ROWS}.csv.gz")
TIME_ONE = """
import sys, time
from heedful.data.text import TextColumns, read_labelled
best = float("inf")
for _ in range(3):
    start = time.perf_counter()
    n = sum(1 for _ in read_labelled(sys.argv[1], TextColumns("Reviews", "Rating", labels="stars5")))
    best = min(best, time.perf_counter() - start)
assert n == int(sys.argv[2]), n
print(best)
"""


def write_file() -> None:
    if FILE.exists():
        return
    FILE.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = ["phone", "battery", "screen", "great", "bad", "camera", "price", "seller", "charger", "case"]
    with gzip.open(FILE, "wt", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Product Name", "Rating", "Reviews"])
        for i in range(ROWS):
            out.writerow([f"phone {i % 500}", rng.randint(1, 5), " ".join(rng.choices(words, k=60))])


def seconds(src: Path | None) -> float:
    """Best of 3 reads of FILE, in a fresh process importing heedful from ``src`` (None: this one)."""
    env = {**os.environ, **({"PYTHONPATH": str(src)} if src else {})}
    result = subprocess.run([sys.executable, "-c", TIME_ONE, str(FILE), str(ROWS)], env=env, capture_output=True,
                            text=True, check=True)  # fmt: skip
    return float(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout: its src/ reader is timed in turn with ours")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    write_file()
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(seconds(None))
        if args.against:
            theirs.append(seconds(args.against / "src"))
    line = f"{ROWS:,} rows: this checkout {min(ours):.2f} s"
    if theirs:
        line += f", {args.against} {min(theirs):.2f} s, ratio {min(theirs) / min(ours):.1f}x"
    print(line)


if __name__ == "__main__":
    main()
