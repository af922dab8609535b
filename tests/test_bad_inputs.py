"""Every malformed file of ``tests/bad_inputs/`` through the verb a user would give it to: one line
on stderr naming the file (and the line or key where there is one), exit code 2, no traceback, and
nothing created or changed on disk.

The CLI runs in this process (``heedful.cli.main`` as the console script calls it) to keep some
fifty cases within seconds; ``test_cli.py`` covers the same ``main`` as a subprocess. The tiny runs
the cases predict, transcribe or resume with are trained once per session. Files too large to
commit (an hour of audio, a 1 MB line) are made here."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from heedful import cli
from heedful.runs import load_config
from heedful.train import fit
from tests.conftest import ROOT, tiny_dates_overrides
from tests.tasks.test_speech import write_recordings

BAD = ROOT / "tests" / "bad_inputs"
CONFIGS = ROOT / "configs"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # how the file is used: see ``command``
    file: str  # under tests/bad_inputs/, or generated/<name> (made by ``generated``), or the run's file
    expect: str  # a piece of the message (after the file's name)
    line: int | None = None


CASES = [
    # ---- parallel text (translate: train with --set data.*)
    Case("parallel-mismatched-lines", "text", "parallel/mismatched", "has 4 lines but"),
    Case("parallel-invalid-utf8", "text", "parallel/invalid_utf8", "not valid UTF-8", line=2),
    Case("parallel-empty-files", "text", "parallel/empty", "no usable sentence pairs"),
    Case("parallel-blank-line", "text", "parallel/blank_line", "empty line", line=2),
    Case("parallel-truncated-gzip", "text", "parallel/truncated_gz", "not a readable gzip file"),
    Case("parallel-nul-byte", "text", "parallel/nul_byte", "NUL byte", line=2),
    Case("parallel-binary", "text", "parallel/binary", "line 1:"),
    Case("parallel-missing-file", "text", "parallel/no_such", "file not found"),
    Case("parallel-1mb-line", "text", "generated/long_line", "bytes long", line=3),
    Case("tsv-three-columns", "tsv", "parallel/three_columns.tsv", "expected 2 tab-separated columns", line=3),
    Case("tsv-empty-target", "tsv", "parallel/empty_target.tsv", "empty target column", line=3),
    Case("jsonl-broken", "jsonl", "parallel/broken_json.jsonl", "not valid JSON", line=3),
    Case("jsonl-missing-field", "jsonl", "parallel/missing_field.jsonl", "no field 'de'", line=4),
    Case("jsonl-not-a-string", "jsonl", "parallel/not_a_string.jsonl", "field 'en' is a int", line=2),
    Case("jsonl-not-an-object", "jsonl", "parallel/not_an_object.jsonl", "no field 'en'", line=2),
    # ---- reviews (classify: train with --set data.path=…)
    Case("reviews-missing-column", "reviews", "reviews/missing_column.csv", "no column 'Rating'"),
    Case("reviews-rating-out-of-range", "reviews", "reviews/rating_out_of_range.csv", "out of range", line=5),
    Case("reviews-rating-not-numeric", "reviews", "reviews/rating_not_numeric.csv", "'five'", line=4),
    Case("reviews-rating-empty", "reviews", "reviews/rating_empty.csv", "label ''", line=6),
    Case("reviews-broken-quoting", "reviews", "reviews/broken_quoting.csv", "broken quoting", line=2),
    Case("reviews-empty-text", "reviews", "reviews/empty_text.csv", "empty text", line=7),
    Case("reviews-too-many-columns", "reviews", "reviews/too_many_columns.csv", "expected 2 columns", line=4),
    Case("reviews-bom-semicolon", "reviews", "reviews/bom_semicolon.csv", "separated by ';'"),
    Case("reviews-latin1", "reviews", "reviews/latin1.csv", "not valid UTF-8", line=4),
    Case("reviews-header-only", "reviews", "reviews/header_only.csv", "no rows"),
    Case("reviews-empty-file", "reviews", "reviews/empty.csv", "empty file"),
    Case("reviews-one-class", "reviews", "reviews/one_class.csv", "only one class"),
    Case("reviews-identical-texts", "reviews", "reviews/identical_texts.csv", "distinct text"),
    Case("reviews-binary", "reviews", "reviews/binary.csv", "line 1"),
    # ---- audio (speech: transcribe with a tiny run; training clips in a folder of good ones)
    Case("audio-truncated-header", "transcribe", "audio/truncated_header.wav", "not a readable audio file"),
    Case("audio-wrong-header", "transcribe", "audio/wrong_header.wav", "not a readable audio file"),
    Case("audio-promises-more", "transcribe", "audio/promises_more.wav", "header promises 2000 samples"),
    Case("audio-zero-samples", "transcribe", "audio/zero_samples.wav", "0 samples"),
    Case("audio-zero-hz", "transcribe", "audio/zero_hz.wav", "not a readable audio file"),
    Case("audio-stereo", "speech-train", "audio/stereo.wav", "2 channels"),
    Case("audio-24bit-cut", "transcribe", "audio/pcm24_cut.wav", "header promises 600 samples, the file holds 300"),
    Case("audio-not-audio", "transcribe", "audio/not_audio.wav", "not a readable audio file"),
    Case("audio-empty", "transcribe", "audio/empty.wav", "empty file"),
    Case("audio-nan-samples", "transcribe", "audio/nan_samples.wav", "NaN"),
    Case("audio-hour-long", "transcribe", "generated/hour.wav", "this model hears at most"),
    Case("audio-promises-more-training", "speech-train", "audio/promises_more.wav", "header promises 2000"),
    Case("audio-hour-long-training", "speech-train", "generated/hour.wav", "this model hears at most"),
    # ---- images (imagegen: train with data.source=folder)
    Case("image-truncated-png", "images", "images/truncated", "z_truncated.png: not a readable image"),
    Case("image-zero-bytes", "images", "images/zero_bytes", "z_empty.png: not a readable image"),
    Case("image-not-an-image", "images", "images/not_an_image", "z_text.png: not a readable image"),
    Case("image-mixed-modes", "images", "images/mixed_modes", "z_rgb.png: 8×8 RGB, but"),
    Case("image-mixed-sizes", "images", "images/mixed_sizes", "z_big.png: 16×9 grey, but"),
    Case("image-16-bit", "images", "images/sixteen_bit", "z_16bit.png: 16-bit"),
    # ---- configs (train CONFIG)
    Case("config-unknown-key", "config", "configs/unknown_key.yaml", "unknown config key 'train.epoch'"),
    Case("config-wrong-type", "config", "configs/wrong_type.yaml", "config key 'train.epochs'"),
    Case("config-syntax-error", "config", "configs/syntax_error.yaml", "line 4"),
    Case("config-empty", "config", "configs/empty.yaml", "empty"),
    Case("config-unknown-task", "config", "configs/unknown_task.yaml", "tranlsate"),
    Case("config-not-a-mapping", "config", "configs/not_a_mapping.yaml", "mapping"),
    Case("config-tab-indent", "config", "configs/tab_indent.yaml", "line 3"),
    # ---- files to predict (predict RUN --input FILE, a tiny dates run)
    Case("predict-latin1", "predict-input", "predict/latin1.txt", "not valid UTF-8", line=2),
    Case("predict-utf16", "predict-input", "predict/utf16.txt", "NUL byte", line=1),
    Case("predict-no-text-column", "predict-input", "predict/no_text_column.csv", "which column holds the text"),
    Case("predict-broken-jsonl", "predict-input", "predict/broken_row.jsonl", "broken JSON", line=2),
    Case("predict-missing-file", "predict-input", "predict/no_such.txt", "file not found"),
    # ---- model folders (predict / evaluate a copy of a tiny run) and checkpoints (train --resume)
    Case("model-pickle-as-safetensors", "model", "models/pickle.safetensors", "model.safetensors"),
    Case("model-truncated-safetensors", "model", "models/truncated.safetensors", "model.safetensors"),
    Case("model-wrong-shapes", "model", "generated/wrong_shapes.safetensors", "model.safetensors"),
    Case("model-missing-tensor", "model", "generated/missing_tensor.safetensors", "model.safetensors"),
    Case("model-config-not-json", "model-config", "models/not_json_config.json", "config.json"),
    Case("model-config-of-another-task", "model-config", "generated/speech_config.json", "holds a 'speech' model"),
    Case("model-folder-of-another-task", "model-folder", "speech/model", "holds a 'speech' model; a translate run"),
    Case("speech-run-with-a-translate-model", "transcribe-model-folder", "dates/model", "a speech run's model is"),
    Case("model-no-weights", "model-evaluate", "generated/missing", "model.safetensors"),
    Case("checkpoint-pickle", "checkpoint", "models/pickle.safetensors", "model.safetensors"),
    Case("checkpoint-wrong-shapes", "checkpoint", "generated/wrong_shapes.safetensors", "does not fit"),
    Case("checkpoint-missing-tensor", "checkpoint", "generated/missing_tensor.safetensors", "does not fit"),
    # ---- export folders (predict with an export of the tiny dates run, one of its files broken)
    Case("onnx-export-missing-graph", "onnx-export-missing", "export/decoder_step.onnx", "missing; the export is"),
    Case("onnx-export-truncated-graph", "onnx-export-truncated", "export/encoder.onnx", "onnxruntime cannot load it"),
    Case("ct2-export-missing-weights", "ct2-export-missing", "export/model.bin", "missing; the CTranslate2 model"),
    Case("ct2-export-truncated-weights", "ct2-export-truncated", "export/model.bin", "CTranslate2 cannot load it"),
]


TINY_PARALLEL = {
    "data.source": "parallel", "data.source_lang": "en", "data.target_lang": "de", "data.val": "good",
    "data.test": "good", "data.tokenizer.kind": "char", "data.max_tokens": "null", "data.max_ratio": "null",
    "data.batch_tokens": 256, "model.d_model": 16, "model.n_heads": 2, "model.n_encoder_layers": 1,
    "model.n_decoder_layers": 1, "model.d_ff": 32, "train.epochs": 1, "train.max_minutes": "null",
    "train.progress": "false", "train.tensorboard": "false", "train.precision": "fp32", "train.ema_decay": "null",
    "device": "cpu",
}  # fmt: skip
TINY_REVIEWS = {
    "data.on_bad_row": "error", "data.group_column": "null", "data.val_fraction": 0.2, "data.test_fraction": 0.2,
    "data.tokenizer.vocab_size": 300, "model.encoder.d_model": 16, "model.encoder.n_heads": 2,
    "model.encoder.n_encoder_layers": 1, "model.encoder.d_ff": 32, "train.epochs": 1, "train.max_minutes": "null",
    "train.progress": "false", "train.tensorboard": "false", "device": "cpu",
}  # fmt: skip
TINY_SPEECH = {
    "model.conv_channels": "[4]", "model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2, "model.d_ff": 32,
    "model.max_frames": 512, "train.epochs": 1, "train.batch_size": 64, "train.max_minutes": "null",
    "train.progress": "false", "train.tensorboard": "false", "augment.speed": "null", "augment.noise_snr_db": "null",
    "augment.vtlp": "null", "data.trim_db": "null", "data.split": "speaker:cyd", "device": "cpu",
}  # fmt: skip
TINY_IMAGES = {"data.source": "folder", "model.image_size": 8, "train.epochs": 1, "train.max_minutes": "null",
               "train.progress": "false", "train.tensorboard": "false", "device": "cpu"}  # fmt: skip


def sets(values: dict[str, object]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def hour_long_wav(path: Path) -> None:
    """An hour of 8 kHz 16-bit silence (58 MB), written in chunks."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        chunk = np.zeros(8000 * 60, dtype="<i2").tobytes()
        for _ in range(60):
            w.writeframes(chunk)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """The tiny runs (dates, speech) and the generated files, made once."""
    root = tmp_path_factory.mktemp("bad-inputs")
    fit(load_config(CONFIGS / "dates.yaml", tiny_dates_overrides(root / "dates", **{"train.epochs": 1})))
    fsdd = write_recordings(root / "fsdd" / "recordings", ("ann", "bob", "cyd"), takes=2).parent
    speech = [f"{k}={v}" for k, v in {**TINY_SPEECH, "data.root": fsdd, "run_dir": root / "speech"}.items()]
    fit(load_config(CONFIGS / "speech_digits.yaml", speech))
    generated = root / "generated"
    generated.mkdir()
    for lang in ("en", "de"):
        shutil.copy(BAD / "parallel" / f"good.{lang}", generated / f"good.{lang}")
    lines = (BAD / "parallel" / "good.en").read_text().splitlines()
    (generated / "long_line.en").write_text("\n".join([*lines[:2], "word " * 209_716, lines[3]]) + "\n")
    shutil.copy(BAD / "parallel" / "good.de", generated / "long_line.de")
    hour_long_wav(generated / "hour.wav")
    weights = safetensors.torch.load_file(str(root / "dates" / "model" / "model.safetensors"))
    name = next(iter(weights))
    safetensors.torch.save_file({**weights, name: torch.zeros(3, 5)}, str(generated / "wrong_shapes.safetensors"))
    safetensors.torch.save_file(
        {k: v for k, v in weights.items() if k != name}, str(generated / "missing_tensor.safetensors")
    )
    speech_config = (root / "speech" / "model" / "config.json").read_bytes()
    (generated / "speech_config.json").write_bytes(speech_config)
    return root


def source(case: Case, workspace: Path) -> Path:
    return workspace / case.file if case.file.startswith(("generated/", "speech/", "dates/")) else BAD / case.file


def command(case: Case, workspace: Path, tmp: Path) -> tuple[list[str], Path]:
    """The CLI arguments of ``case`` and the path its message must name. Files that must sit in a
    run directory or a data folder are copied into ``tmp`` first."""
    file, run_dir = source(case, workspace), tmp / "run"
    if case.kind in ("text", "tsv", "jsonl"):
        folder, train = file.parent, file.name
        val = "good" if case.kind == "text" else f"good.{case.kind}"
        values = {**TINY_PARALLEL, "data.root": folder, "data.format": case.kind, "data.train": train,
                  "data.val": val, "data.test": val, "run_dir": run_dir}  # fmt: skip
        named = file if case.kind != "text" else file.parent
        return ["train", str(CONFIGS / "multi30k" / "transformer.yaml"), *sets(values)], named
    if case.kind == "reviews":
        values = {**TINY_REVIEWS, "data.path": file, "run_dir": run_dir}
        return ["train", str(CONFIGS / "reviews" / "amazon.yaml"), *sets(values)], file
    if case.kind == "transcribe":
        return ["transcribe", str(workspace / "speech"), str(file), "--device", "cpu"], file
    if case.kind == "speech-train":
        fsdd = tmp / "fsdd"
        shutil.copytree(workspace / "fsdd", fsdd)
        shutil.copy(file, fsdd / "recordings" / "7_bob_9.wav")
        values = {**TINY_SPEECH, "data.root": fsdd, "run_dir": run_dir}
        return ["train", str(CONFIGS / "speech_digits.yaml"), *sets(values)], fsdd / "recordings" / "7_bob_9.wav"
    if case.kind == "images":
        values = {**TINY_IMAGES, "data.root": file, "run_dir": run_dir}
        return ["train", str(CONFIGS / "digits_gan.yaml"), *sets(values)], file
    if case.kind == "predict-input":
        column = ["--text-column", "text"] if file.suffix == ".jsonl" else []
        return ["predict", str(workspace / "dates"), "--input", str(file), *column, "--device", "cpu"], file
    if case.kind == "config":
        return ["train", str(file), "--set", f"run_dir={run_dir}"], file
    if case.kind in ("model-folder", "transcribe-model-folder"):  # another run's whole model/ copied in
        run = tmp / "run"
        shutil.copytree(workspace / ("dates" if case.kind == "model-folder" else "speech"), run)
        shutil.rmtree(run / "model")
        shutil.copytree(workspace / case.file, run / "model")
        if case.kind == "model-folder":
            return ["predict", str(run), "1. Mai 2020", "--device", "cpu"], run / "model" / "config.json"
        return [
            "transcribe",
            str(run),
            str(BAD / "audio" / "stereo.wav"),
            "--device",
            "cpu",
        ], run / "model" / "config.json"
    if case.kind.startswith(("onnx-export", "ct2-export")):
        return export_command(case, workspace, tmp)
    run = tmp / "dates"
    shutil.copytree(workspace / "dates", run)
    if case.kind == "checkpoint":
        *older, latest = sorted((run / "checkpoints").iterdir())
        for folder in older:
            shutil.rmtree(folder)
        shutil.copy(file, latest / "model.safetensors")
        # Whole files of another model, not damaged ones: their sums recorded as a save would have.
        state = json.loads((latest / "state.json").read_text())
        state["sha256"]["model.safetensors"] = hashlib.sha256(file.read_bytes()).hexdigest()
        (latest / "state.json").write_text(json.dumps(state))
        return ["train", str(run), "--resume"], latest / "model.safetensors"
    target = run / "model" / ("config.json" if case.kind == "model-config" else "model.safetensors")
    if file.exists():
        shutil.copy(file, target)
    else:
        target.unlink()
    if case.kind == "model":  # whole files of another kind, not damaged ones: their sum recorded as a save would
        config = json.loads((run / "model" / "config.json").read_text())
        config["sha256"]["model.safetensors"] = hashlib.sha256(file.read_bytes()).hexdigest()
        (run / "model" / "config.json").write_text(json.dumps(config))
    verb = (
        ["evaluate", str(run), "--device", "cpu"]
        if case.kind == "model-evaluate"
        else ["predict", str(run), "1. Mai 2020", "--device", "cpu"]
    )
    return verb, target


def export_command(case: Case, workspace: Path, tmp: Path) -> tuple[list[str], Path]:
    """``heedful predict`` of an export of the tiny dates run (ONNX or CTranslate2, made into
    ``tmp``) whose file ``case.file`` is deleted or cut to its first kilobyte."""
    pytest.importorskip("onnxruntime", reason="exports need the export extra: pip install 'heedful[export]'")
    pytest.importorskip("ctranslate2", reason="exports need the export extra: pip install 'heedful[export]'")
    from heedful.optimize.ct2 import export_ctranslate2
    from heedful.optimize.export import export_onnx
    from heedful.runs import load_run

    run = load_run(workspace / "dates", "cpu")
    folder = (export_onnx if case.kind.startswith("onnx") else export_ctranslate2)(run, tmp / "export")
    target = folder / case.file.removeprefix("export/")
    if case.kind.endswith("missing"):
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:1024])
    named = folder if case.kind == "ct2-export-truncated" else target  # CTranslate2 reads the folder as one model
    return ["predict", str(folder), "1. Mai 2020"], named


def snapshot(*folders: Path) -> dict[str, bytes | None]:
    return {str(p): (p.read_bytes() if p.is_file() else None) for folder in folders for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_naming_it_and_changes_nothing(case, workspace, tmp_path, monkeypatch, capsys):
    args, named = command(case, workspace, tmp_path)
    watched = [tmp_path, BAD, workspace / "speech", workspace / "dates", workspace / "generated"]
    before = snapshot(*watched)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["heedful", *args])
    monkeypatch.chdir(tmp_path)  # a planted pickle that ran would leave PICKLE_RAN here
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    assert exit_.value.code == 2, (out.out, out.err)
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    line = lines[0]
    assert line.startswith("heedful: error: "), line
    assert str(named) in line, line
    if case.line is not None:
        assert f"line {case.line}" in line, line
    assert case.expect in line, line
    assert not (tmp_path / "PICKLE_RAN").exists() and not (ROOT / "PICKLE_RAN").exists()
    assert snapshot(*watched) == before


def test_the_corpus_is_at_least_forty_files_each_used():
    committed = {p.relative_to(BAD).as_posix() for p in BAD.rglob("*") if p.is_file() and p.suffix != ".py"}
    assert len(CASES) >= 40 and len(committed) >= 40
    # a case names a file, a pair's prefix (parallel/x → x.en, x.de) or an image folder
    used = [c.file for c in CASES if not c.file.startswith(("generated/", "speech/", "dates/"))] + ["parallel/good"]
    assert [f for f in sorted(committed) if not any(f.startswith(u) for u in used)] == []


def test_the_planted_pickle_would_create_a_file(tmp_path, monkeypatch):
    """The guard above means something: unpickled (here, on purpose), the file does its harm."""
    import pickle

    monkeypatch.chdir(tmp_path)
    pickle.loads((BAD / "models" / "pickle.safetensors").read_bytes())  # our own planted file, on purpose
    assert (tmp_path / "PICKLE_RAN").exists()
