"""Speech benchmarks on the Free Spoken Digit Dataset — the figures docs/RESULTS.md reports.

    python benchmarks/speech.py digits      # standard split, CNN + self-attention (≥ 98.5 % target)
    python benchmarks/speech.py ablation    # same front end: attention vs BiGRU (equal size) vs CNN only
    python benchmarks/speech.py noise       # the `digits` model on test audio with white noise, SNR 20/10/5 dB
    python benchmarks/speech.py speakers    # leave-one-speaker-out, 6 folds (--speakers george,lucas: some)
    python benchmarks/speech.py strings     # 2–7 digit strings, CTC, digit error rate
    python benchmarks/speech.py warps       # the `speakers` models on their held-out speaker, spectrum warped
    python benchmarks/speech.py ensemble --run-prefix a,b,c   # those finished `speakers` runs averaged
    python benchmarks/speech.py synth --out DIR   # synthetic speakers' digits with espeak-ng (not in `all`)
    python benchmarks/speech.py all

Each run trains with `configs/speech_*.yaml` through the same API as `heedful train`, selects
on the validation split, then scores the test split once. Runs go to runs/bench-speech/<name>/
(their checkpoints and history are there); a summary table is printed and appended to
runs/bench-speech/summary.md. A finished run with the same config is tested again rather than
retrained (pass --retrain to train it anew), so `ablation` reuses the `digits` model and a
cut-off benchmark resumes where it stopped. `--set key=value` overrides apply to every run;
`speakers --run-prefix NAME` trains a variant's folds into runs/bench-speech/NAME-<speaker>;
`ensemble --run-prefix A,B,C` averages the class probabilities of finished variants fold by fold
(`--cut-end-ms`, `--fade-end-ms`, `--reverb-rt60` and `--tempo` alter the test clips first:
diagnostics, not results).

`synth` writes FSDD-style clips of synthetic voices; train on them beside the real speakers with
`speakers --set 'data.extra_train_roots=[DIR]'` (they join the training part only).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from common import header, table
from common import train_and_test as _train_and_test
from heedful.data.audio import RESAMPLE_QUALITY, add_reverb, stretch_time, trim_silence
from heedful.data.fsdd import FILE_NAME, FSDD_SAMPLE_RATE
from heedful.runs import load_run

ROOT = Path("runs/bench-speech")
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def train_and_test(name: str, config: str, overrides: list[str], retrain: bool) -> dict:
    return _train_and_test(ROOT / name, config, overrides, retrain)


def noisy_test(run_dir: Path, snr_db: float | None) -> float:
    run = load_run(run_dir, device="cpu")
    run.cfg.data.test_noise_snr_db = snr_db
    run.task.data = None  # rebuild the test audio with noise added
    return run.evaluate("test")["accuracy"]


WARPS = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)


def held_out_probabilities(run, waves: list[np.ndarray], warp: float = 1.0, tempo: float = 1.0) -> torch.Tensor:
    """A fold model's class probabilities (N, 10) for clips (as the model hears them), with the
    spectrum warped by ``warp`` and the frames stretched by ``tempo`` (1 = as trained)."""
    task, model = run.task, run.model.eval()
    parts = []
    with torch.no_grad():
        for i in range(0, len(waves), 64):
            features = [stretch_time(task.features(wave, warp), tempo) for wave in waves[i : i + 64]]
            batch = task.pad(features)
            logits, _ = model(batch["features"], batch["lengths"])
            parts.append(logits.softmax(-1))
    return torch.cat(parts)


def mean_row(rows: list[dict], keys: list[str]) -> dict:
    """The folds' mean of each key, labelled "mean" over all six speakers, else "mean of N"."""
    mean: dict = {"run": "mean" if len(rows) == len(SPEAKERS) else f"mean of {len(rows)}"}
    return mean | {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in keys}


def held_out_clips(run) -> tuple[list[np.ndarray], torch.Tensor, list[str]]:
    """The held-out speaker's test clips as the run's model hears them (trimmed if configured),
    their digits, and their paths; no training features are built."""
    _, _, test = run.task._splits()
    return [run.task._read(r.path) for r in test], torch.tensor([r.digit for r in test]), [str(r.path) for r in test]


def warped_test(run_dir: Path) -> dict:
    """Is a held-out speaker's gap a vocal-tract-length mismatch? Score the test clips with the
    spectrum stretched by each factor in WARPS (the VTLP map, at test time): accuracy per warp,
    the warp the model is most confident at (test-time VTLN, no labels used), and the average of
    all warps' probabilities."""
    run = load_run(run_dir, device="cpu")
    waves, labels, _ = held_out_clips(run)
    probs = {warp: held_out_probabilities(run, waves, warp) for warp in WARPS}  # (N, 10) each
    accuracy = {w: float((p.argmax(-1) == labels).float().mean()) for w, p in probs.items()}
    confident = max(WARPS, key=lambda w: float(probs[w].max(-1).values.mean()))
    averaged = torch.stack(list(probs.values())).mean(0)
    row = {"run": run_dir.name, **{f"warp {w}": round(a, 3) for w, a in accuracy.items()},
           "vtln": f"{accuracy[confident]:.3f} (warp {confident})",
           "averaged": round(float((averaged.argmax(-1) == labels).float().mean()), 3)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def fade_end(wave: np.ndarray, samples: int) -> np.ndarray:
    """``wave`` with its last ``samples`` (at most a quarter of it) faded out by a half cosine."""
    n = min(samples, len(wave) // 4)
    if n == 0:
        return wave
    faded = wave.copy()
    faded[-n:] *= (0.5 + 0.5 * np.cos(np.pi * np.arange(n) / n)).astype(wave.dtype)  # 1 → 0
    return faded


# The diagnostic rooms' direct-to-reverberant ratio: mid-range of augment.reverb_drr_db's default.
DIAGNOSTIC_DRR_DB = 3.0


def ensemble_test(
    prefixes: list[str], speaker: str, cut_end_ms: float, fade_end_ms: float, tempo: float, reverb_rt60: float = 0.0
) -> dict:
    """One fold's members (runs/bench-speech/<prefix>-<speaker>) and the average of their class
    probabilities, on the held-out speaker's test clips. Diagnostics: ``cut_end_ms`` cuts that much
    off the end of every test clip, ``fade_end_ms`` fades its end out, ``reverb_rt60`` plays it in
    a synthetic room with that reverberation time (seconds; one room per clip, seeded by its
    index), ``tempo`` stretches its frames (>1 faster), before scoring."""
    runs = [load_run(ROOT / f"{prefix}-{speaker}", device="cpu") for prefix in prefixes]
    clips = [held_out_clips(run) for run in runs]
    if any(paths != clips[0][2] for _, _, paths in clips):
        raise SystemExit(f"ensemble: the {speaker} runs of {', '.join(prefixes)} hold out different clips")
    rate = runs[0].cfg.data.sample_rate
    cut, fade = round(cut_end_ms / 1000 * rate), round(fade_end_ms / 1000 * rate)
    labels = clips[0][1]

    def altered(index: int, wave: np.ndarray) -> np.ndarray:
        wave = fade_end(wave[: len(wave) - cut] if cut else wave, fade)
        if reverb_rt60 > 0:
            wave = add_reverb(wave, rate, reverb_rt60, DIAGNOSTIC_DRR_DB, torch.Generator().manual_seed(index))
        return wave

    probs = [
        held_out_probabilities(run, [altered(i, wave) for i, wave in enumerate(waves)], tempo=tempo)
        for run, (waves, _, _) in zip(runs, clips, strict=True)
    ]  # (N, 10) each
    row = {"run": speaker}
    for prefix, p in zip(prefixes, probs, strict=True):
        row[prefix] = round(float((p.argmax(-1) == labels).float().mean()), 4)
    row["accuracy"] = round(float((torch.stack(probs).mean(0).argmax(-1) == labels).float().mean()), 4)
    print(json.dumps(row), flush=True)
    return row


# --------------------------------------------------------------------------------------------
# Synthetic speakers

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's English accents (its own formant voices; the mbrola ones need extra packages),
# each with the letters that start its speakers' names.
ACCENTS = {"en-us": "us", "en-us-nyc": "nyc", "en-gb": "gb", "en-gb-x-rp": "rp", "en-gb-scotland": "scot",
           "en-gb-x-gbclan": "lanc", "en-gb-x-gbcwmd": "wmid", "en-029": "carib"}  # fmt: skip
# Variants that don't sound like a person talking (robots, whispers, growls) or only change speed.
NOT_A_VOICE = re.compile(r"robo|robot|whisper|demonic|croak|tweaky|ricishay|fast", re.IGNORECASE)


def espeak_variants() -> list[str]:
    """The voice variants this espeak-ng has (``en-us+<variant>``), minus NOT_A_VOICE, sorted."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[4].removeprefix("!v/") for line in listing.splitlines()[1:] if len(line.split()) > 4]
    return sorted({n for n in names if not NOT_A_VOICE.search(n)})


def speaker_name(accent: str, variant: str) -> str:
    """Letters only, as FSDD's file names need: ("en-gb", "edward2") -> "esgbedwardtwo"."""
    letters = re.sub(r"[0-9]", lambda m: DIGIT_WORDS[int(m[0])], variant.lower())
    return "es" + ACCENTS[accent] + re.sub(r"[^a-z]", "", letters)


def espeak_clip(word: str, voice: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    """One word from espeak-ng: float32 ``(T,)`` at its native rate, and that rate."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", word],
                         capture_output=True, check=True).stdout  # fmt: skip
    wave, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return wave, rate


def synthesize(out: Path, n_speakers: int, takes: int, seed: int) -> None:
    """``n_speakers`` synthetic speakers × 10 digits × ``takes`` into ``out`` as FSDD-style clips.

    A speaker is one (accent, variant) pair drawn without replacement from espeak-ng's grid, with
    its own pitch (``-p`` 15–85) and speed (``-s`` 120–210 words/min); each take jitters both a
    little (±6 pitch, ±15 wpm), the way one person's takes differ. Clips are trimmed of silence,
    scaled to a peak drawn in [0.1, 0.6] (FSDD's peaks span about that) and written as 8 kHz mono
    16-bit PCM, like FSDD.

    The defaults (60 speakers × 10 digits × 5 takes = 3,000 clips) favour many voices over many
    takes: espeak-ng is deterministic, so a voice's takes differ only by the jitter, while the
    point is to cover more of voice space than FSDD's five training speakers. 3,000 clips are
    about 1.3 times a fold's 2,250 real training clips, so real speech stays ~43 % of an epoch.
    """
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found on PATH: install it: apt-get install espeak-ng")
    if out.is_dir() and any(out.glob("*.wav")):
        raise SystemExit(f"{out}: already holds .wav files; choose an empty folder or delete them first")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    grid = [(accent, variant) for accent in ACCENTS for variant in espeak_variants()]
    if n_speakers > len(grid):
        raise SystemExit(f"--n-speakers {n_speakers}: espeak-ng offers only {len(grid)} accent × variant voices")
    started = time.perf_counter()
    for accent, variant in sorted(rng.sample(grid, n_speakers)):
        speaker = speaker_name(accent, variant)
        pitch, speed = rng.randint(15, 85), rng.randint(120, 210)
        for digit, word in enumerate(DIGIT_WORDS):
            for index in range(takes):
                p = min(99, max(0, pitch + rng.randint(-6, 6)))
                s = speed + rng.randint(-15, 15)
                wave, rate = espeak_clip(word, f"{accent}+{variant}", p, s)
                wave = soxr.resample(trim_silence(wave, rate), rate, FSDD_SAMPLE_RATE, quality=RESAMPLE_QUALITY)
                wave = wave * (rng.uniform(0.1, 0.6) / max(float(np.abs(wave).max()), 1e-6))
                name = f"{digit}_{speaker}_{index}.wav"
                if not FILE_NAME.match(name):  # speaker_name keeps to letters; a change there must not slip by
                    raise ValueError(f"{name}: not an FSDD file name")
                sf.write(out / name, wave.astype(np.float32), FSDD_SAMPLE_RATE, subtype="PCM_16")
    minutes = (time.perf_counter() - started) / 60
    print(f"{out}: {n_speakers * 10 * takes} clips, {n_speakers} speakers × 10 digits × {takes} takes "
          f"(seed {seed}) in {minutes:.1f} min", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="FSDD speech benchmarks")
    parser.add_argument(
        "which", choices=["digits", "ablation", "noise", "speakers", "strings", "warps", "ensemble", "synth", "all"]
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retrain", action="store_true", help="train even where a finished run exists")
    parser.add_argument("--run-prefix", default="speaker",
                        help="speakers / warps: the folds' run directories are <prefix>-<speaker> (a variant's "
                             "own prefix keeps the default runs); ensemble: the finished prefixes to average, "
                             "comma-separated")  # fmt: skip
    parser.add_argument("--speakers", default=",".join(SPEAKERS),
                        help="speakers / warps: the held-out speakers of the folds to run, comma-separated "
                             "(default: all six)")  # fmt: skip
    parser.add_argument(
        "--cut-end-ms",
        type=float,
        default=0.0,
        help="ensemble: cut this many ms off the end of every test clip first (a diagnostic)",
    )
    parser.add_argument(
        "--fade-end-ms",
        type=float,
        default=0.0,
        help="ensemble: fade out the last this many ms of every test clip first (a diagnostic)",
    )
    parser.add_argument("--reverb-rt60", type=float, default=0.0,
                        help="ensemble: play every test clip in a synthetic room with this reverberation time "
                             "(seconds) first, 0 = off (a diagnostic)")  # fmt: skip
    parser.add_argument("--tempo", type=float, default=1.0,
                        help="ensemble: stretch every test clip's frames by this factor first, >1 faster "
                             "(a diagnostic)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="synth: the folder to write the clips to (empty or new)")
    parser.add_argument("--n-speakers", type=int, default=60, help="synth: how many synthetic speakers")
    parser.add_argument("--takes", type=int, default=5, help="synth: takes of each digit per speaker")
    parser.add_argument("--seed", type=int, default=0, help="synth: draws the voices, pitches and speeds")
    args = parser.parse_args()
    if args.which == "synth":
        if args.out is None:
            parser.error("synth needs --out DIR")
        synthesize(args.out, args.n_speakers, args.takes, args.seed)
        return
    folds = [s.strip() for s in args.speakers.split(",") if s.strip()]
    unknown = sorted(set(folds) - set(SPEAKERS))
    if unknown or not folds:
        parser.error(f"--speakers: unknown {', '.join(unknown) or '(none given)'}; have {', '.join(SPEAKERS)}")
    chosen = {"digits", "ablation", "noise", "speakers", "strings", "warps"} if args.which == "all" else {args.which}
    ROOT.mkdir(parents=True, exist_ok=True)
    out: list[str] = [header(args.overrides)]
    digits = "configs/speech_digits.yaml"

    if chosen & {"digits", "ablation", "noise"}:
        rows = [train_and_test("digits-attention", digits, args.overrides, args.retrain)]
        if "ablation" in chosen:
            for encoder in ("bigru", "none"):
                rows.append(
                    train_and_test(
                        f"digits-{encoder}", digits, [*args.overrides, f"model.encoder={encoder}"], args.retrain
                    )
                )
        out.append(table(rows, ["run", "params", "train_min", "epochs", "best_epoch", "accuracy"]))
    if "noise" in chosen:
        rows = []
        for snr in (None, 20.0, 10.0, 5.0):
            accuracy = noisy_test(ROOT / "digits-attention", snr)
            rows.append({"snr_db": "clean" if snr is None else snr, "accuracy": round(accuracy, 4)})
        print(json.dumps(rows), flush=True)
        out.append(table(rows, ["snr_db", "accuracy"]))
    if "speakers" in chosen:
        rows = [
            train_and_test(f"{args.run_prefix}-{s}", digits, [*args.overrides, f"data.split=speaker:{s}"], args.retrain)
            for s in folds
        ]
        out.append(table([*rows, mean_row(rows, ["accuracy"])], ["run", "train_min", "epochs", "accuracy"]))
    if "strings" in chosen:
        row = train_and_test("strings-ctc", "configs/speech_strings.yaml", args.overrides, args.retrain)
        beam = load_run(ROOT / "strings-ctc", device="cpu")
        beam.cfg.decode.beam_size = 8
        row_beam = {"run": "strings-ctc (beam 8)", **{k: round(v, 4) for k, v in beam.evaluate("test").items()}}
        out.append(table([row, row_beam], ["run", "params", "train_min", "epochs", "der", "accuracy"]))
    if "warps" in chosen:
        runs = [ROOT / f"{args.run_prefix}-{s}" for s in folds if (ROOT / f"{args.run_prefix}-{s}" / "model").is_dir()]
        if not runs:
            raise SystemExit(f"no speaker runs in {ROOT}: run `benchmarks/speech.py speakers` first")
        rows = [warped_test(run_dir) for run_dir in runs]
        out.append(table(rows, list(rows[0])))
    if "ensemble" in chosen:
        prefixes = [p.strip() for p in args.run_prefix.split(",") if p.strip()]
        missing = [f"{p}-{s}" for p in prefixes for s in folds if not (ROOT / f"{p}-{s}" / "eval-test.json").is_file()]
        if missing:
            raise SystemExit(f"ensemble: no finished run {ROOT / missing[0]}: train it with `speakers` first")
        alter = (args.cut_end_ms, args.fade_end_ms, args.tempo, args.reverb_rt60)
        rows = [ensemble_test(prefixes, s, *alter) for s in folds]
        out.append(table([*rows, mean_row(rows, [*prefixes, "accuracy"])], list(rows[0])))

    report = "\n\n".join(out) + "\n"
    print("\n" + report)
    with open(ROOT / "summary.md", "a") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
