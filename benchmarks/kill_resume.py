"""kill -9 at random moments, resume each time: does training still end where it would have?

    python benchmarks/kill_resume.py --kills 20 [--seed 0] [--work /tmp/kill-resume] [--json out.json]

A tiny dates run (configs/dates.yaml, 3 epochs of 12 steps, a checkpoint every step) is trained
once straight through as the reference. Then the same run is trained as a pre-empted job would
be: started, SIGKILLed, resumed (``--resume``; or started afresh with ``--overwrite`` when no
checkpoint was complete yet), killed again, … ``--kills`` times, then left to finish. The kills
fall on distinct steps drawn at random over the whole run; at each, a coin decides between

* mid-save: the kill comes as soon as that step's checkpoint has its model file written, while
  its optimizer state and state.json are being written (or just after), and
* a random moment: a delay drawn uniformly from 0 to 1.5 steps' time after that point, which
  lands in training steps, other saves, end-of-epoch validation or the model's own save.

The processes run through a small wrapper that touches ``signals/step-N`` once step N's model file
is written; nothing else in them changes.

After every kill every complete checkpoint (``step-N/`` with its state.json) is read back in full;
one that does not read is counted. At the end the final model and latest checkpoint must equal
the reference's bit for bit, and the training losses of every epoch too.

Prints a Markdown summary (and writes ``--json``); exits 1 when the weights differ or any
checkpoint was unreadable. tests/train/test_kill_resume.py runs it with 3 kills.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

from heedful.train import History
from heedful.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data.val_size": 32, "data.test_size": 32, "model.d_model": 32, "model.n_heads": 2,
    "model.n_encoder_layers": 1, "model.n_decoder_layers": 1, "model.d_ff": 64, "train.epochs": 3,
    "train.steps_per_epoch": 12, "train.batch_size": 8, "train.eval_batch_size": 32, "train.warmup_steps": 4,
    "train.schedule": "inverse_sqrt", "train.checkpoint_every": 1, "train.keep_checkpoints": 2,
    "train.max_minutes": "null", "train.progress": "false", "train.tensorboard": "false", "train.num_threads": 1,
    "device": "cpu",
}  # fmt: skip

# Runs the CLI with a hook: once the model file of step N's checkpoint is written, touch
# signals/step-N (the parent decides when to kill). Nothing else changes: the save goes on.
HOOKED = """
import sys
from pathlib import Path
from heedful.train import checkpoint
from heedful import cli

signals, original = Path(sys.argv[1]), checkpoint.save_weights

def save_weights(model, path):
    original(model, path)
    step = Path(path).parent.name.split("-")[2]  # .tmp-step-N-pid
    (signals / f"step-{step}").touch()

checkpoint.save_weights = save_weights
sys.argv = ["heedful", *sys.argv[2:]]
cli.main()
"""


def train_args(run_dir: Path, extra: dict[str, object]) -> list[str]:
    values = {**TINY, **extra, "run_dir": run_dir}
    return ["train", "configs/dates.yaml", *(a for k, v in values.items() for a in ("--set", f"{k}={v}"))]


def start(args: list[str], signals: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    if signals is None:
        command = [sys.executable, "-m", "heedful.cli", *args]
    else:
        command = [sys.executable, "-c", HOOKED, str(signals), *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def read_checkpoints(run_dir: Path) -> tuple[int, list[str]]:
    """How many complete checkpoints there are, and those that do not read back in full."""
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    bad = []
    for path in checkpoints:
        try:
            json.loads((path / "state.json").read_text())
            for name in ("model.safetensors", "optimizer.safetensors"):
                safetensors.torch.load_file(str(path / name))
        except Exception as exc:  # any failure to read is what we count
            bad.append(f"{path.name}: {type(exc).__name__}: {exc}")
    return len(checkpoints), bad


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(kills: int, seed: int, work: Path, extra: dict[str, object] | None = None) -> dict:
    extra = dict(extra or {})
    rng = random.Random(seed)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reference, killed, signals = work / "reference", work / "killed", work / "signals"
    signals.mkdir()

    # The reference, timed: its steps, and how long a step takes once training runs.
    (signals / "reference").mkdir()
    began = time.monotonic()
    process = start(train_args(reference, extra), signals / "reference")
    while process.poll() is None:
        time.sleep(0.01)
    total = time.monotonic() - began
    if process.returncode != 0:
        raise SystemExit(f"the reference run failed: {process.stderr.read()}")
    seen = sorted((signals / "reference").iterdir(), key=lambda p: p.stat().st_mtime)
    steps = max(int(p.name.split("-")[1]) for p in seen)
    step_seconds = (seen[-1].stat().st_mtime - seen[0].stat().st_mtime) / max(len(seen) - 1, 1)
    if kills >= steps:
        raise SystemExit(f"{kills} kills need a run of more than {kills} steps; it has {steps}")

    # Where the kills fall: distinct steps, spread over the whole run; at each, either as soon as
    # the step's checkpoint has its model file (mid-save), or a random moment within the next step.
    targets = sorted(rng.sample(range(1, steps), kills))
    events, unreadable, kills_done = [], [], 0
    started = time.monotonic()
    for target in targets:
        resumable = bool(list_checkpoints(killed / "checkpoints"))
        flags = ["--resume"] if resumable else (["--overwrite"] if killed.exists() else [])
        here = signals / f"kill-{kills_done}"
        here.mkdir()
        process = start([*train_args(killed, extra), *flags], here)
        # The first save at or past the target: a kill that came late may have let the run pass it.
        while process.poll() is None and not any(int(p.name[5:]) >= target for p in here.iterdir()):
            time.sleep(0.001)
        mid_save = rng.random() < 0.5
        delay = 0.0 if mid_save else rng.uniform(0, step_seconds * 1.5)
        time.sleep(delay)
        if process.poll() is not None:
            raise SystemExit(f"a start ended before its kill at step {target}: {process.stderr.read()}")
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills_done += 1
        n_checkpoints, bad = read_checkpoints(killed)
        unreadable += bad
        latest = list_checkpoints(killed / "checkpoints")
        leftovers = sorted(p.name for p in (killed / "checkpoints").glob(".*"))
        events.append({"kill": kills_done, "step": target, "when": "mid-save" if mid_save else f"+{delay:.3f} s",
                       "started_with": flags, "latest": latest[-1].name if latest else None,
                       "complete_checkpoints": n_checkpoints, "leftovers": leftovers, "unreadable": bad})  # fmt: skip
        print(json.dumps(events[-1]), flush=True)
    flags = ["--resume"] if list_checkpoints(killed / "checkpoints") else ["--overwrite"]
    process = start([*train_args(killed, extra), *flags])
    _, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise SystemExit(f"the last resume failed: {err}")
    elapsed = time.monotonic() - started

    final_model = same(
        weights(reference / "model" / "model.safetensors"), weights(killed / "model" / "model.safetensors")
    )
    ref_latest, killed_latest = (
        list_checkpoints(reference / "checkpoints")[-1],
        list_checkpoints(killed / "checkpoints")[-1],
    )
    final_checkpoint = ref_latest.name == killed_latest.name and same(
        weights(ref_latest / "model.safetensors"), weights(killed_latest / "model.safetensors")
    )
    losses = (
        History.load(reference / "history.json")["train_loss"] == History.load(killed / "history.json")["train_loss"]
    )
    return {
        "kills": kills_done,
        "mid_save_kills": sum(1 for e in events if e["when"] == "mid-save"),
        "steps": steps,
        "seed": seed,
        "reference_seconds": round(total, 2),
        "killed_run_seconds": round(elapsed, 2),
        "final_model_bit_identical": final_model,
        "final_checkpoint_bit_identical": final_checkpoint,
        "train_losses_identical": losses,
        "unreadable_checkpoints": unreadable,
        "events": events,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/heedful-kill-resume"))
    parser.add_argument("--json", type=Path, default=None)
    a = parser.parse_args()
    result = run(a.kills, a.seed, a.work)
    print(f"\n## {result['date']} — {result['machine']}")
    print(f"`python benchmarks/kill_resume.py --kills {a.kills} --seed {a.seed}`\n")
    print(
        "| kills | of them mid-save | unreadable checkpoints | final model bit-identical | latest checkpoint "
        "bit-identical | train losses identical | reference s | killed run s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    r = result
    print(f"| {r['kills']} | {r['mid_save_kills']} | {len(r['unreadable_checkpoints'])} | "
          f"{r['final_model_bit_identical']} | {r['final_checkpoint_bit_identical']} | "
          f"{r['train_losses_identical']} | {r['reference_seconds']} | {r['killed_run_seconds']} |")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["final_model_bit_identical"] and result["final_checkpoint_bit_identical"]
    sys.exit(0 if ok and result["train_losses_identical"] and not result["unreadable_checkpoints"] else 1)


if __name__ == "__main__":
    main()
