"""Decoding speed of ours (fp32, int8) and CTranslate2 (float32, int8) on one run, interleaved so
that a load burst on a shared machine hits every engine alike: 200 test sources, batches of 100,
beam 5, the run's alpha, 2 threads; 5 rounds, the median per engine.

    python benchmarks/optimize_engine_speed.py RUN INT8_RUN WORK
    # INT8_RUN: heedful optimize RUN --method int8; WORK: the --work folder of benchmarks/optimize.py
    # (its ct2_float32/ and ct2_int8/ conversions)
"""

import os
import statistics
import sys
import time
from pathlib import Path

import torch

from heedful.optimize.ct2 import Ct2Engine
from heedful.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from optimize import decode_all  # benchmarks/optimize.py, beside this file

torch.set_num_threads(2)
run = load_run(sys.argv[1], "cpu")
run.task.build_data(run.cfg)
run.task.load_artifacts(run.run_dir / "model")
src = [e.source for e in list(run.task.data.splits["test"])[:200]]
int8 = load_run(sys.argv[2], "cpu").model
ct2f = Ct2Engine(run, Path(sys.argv[3]) / "ct2_float32", threads=2)
ct2i = Ct2Engine(run, Path(sys.argv[3]) / "ct2_int8", threads=2)
a = run.cfg.decode.alpha
engines = {
    "ours fp32": lambda lines: decode_all(run.model, run.task, lines, 5, 100, a),
    "ours int8": lambda lines: decode_all(int8, run.task, lines, 5, 100, a),
    "CTranslate2 float32": lambda lines: [
        t.output for i in range(0, len(lines), 100) for t in ct2f.translate(lines[i : i + 100], beam=5)
    ],
    "CTranslate2 int8": lambda lines: [
        t.output for i in range(0, len(lines), 100) for t in ct2i.translate(lines[i : i + 100], beam=5)
    ],
}
times = {k: [] for k in engines}
print("load average at start", os.getloadavg(), flush=True)
with torch.inference_mode():
    for f in engines.values():
        f(src[:20])
    for _ in range(5):
        for k, f in engines.items():
            t = time.perf_counter()
            f(src)
            times[k].append(time.perf_counter() - t)
print("load average at end", os.getloadavg(), flush=True)
base = statistics.median(times["ours fp32"])
for k, v in times.items():
    m = statistics.median(v)
    print(f"| {k} | {len(src) / m:.1f} | {base / m:.2f} | {min(v):.2f}–{max(v):.2f} |", flush=True)
