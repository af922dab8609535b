"""Writes the committed bad-input corpus (``python tests/bad_inputs/make_corpus.py``).

Each file is small and broken in one way; ``tests/test_bad_inputs.py`` lists them with the verb
each goes through and the message it must give. Files too large to commit (an hour of audio, a
1 MB line) are made at test time there. The planted pickle, if ever unpickled, creates
``PICKLE_RAN`` in the working directory: the test checks it never appears.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PAIRS = [("A man rides a bike.", "Ein Mann fährt Fahrrad."), ("Two dogs play.", "Zwei Hunde spielen."),
         ("A woman sings.", "Eine Frau singt."), ("The sun is up.", "Die Sonne ist auf.")]  # fmt: skip


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def lines(texts: list[str]) -> str:
    return "".join(t + "\n" for t in texts)


def parallel(root: Path) -> None:
    en, de = [s for s, _ in PAIRS], [t for _, t in PAIRS]
    write(root / "good.en", lines(en))
    write(root / "good.de", lines(de))
    write(root / "good.tsv", lines([f"{s}\t{t}" for s, t in PAIRS]))
    write(root / "good.jsonl", lines([json.dumps({"en": s, "de": t}) for s, t in PAIRS]))
    write(root / "mismatched.en", lines(en))
    write(root / "mismatched.de", lines(de[:3]))
    write(
        root / "invalid_utf8.en",
        lines(en[:1]).encode() + "Ein Caf\xe9 am Ende.\n".encode("latin-1") + lines(en[2:]).encode(),
    )
    write(root / "invalid_utf8.de", lines(de))
    write(root / "empty.en", b"")
    write(root / "empty.de", b"")
    write(root / "blank_line.en", lines([en[0], "   ", *en[2:]]))
    write(root / "blank_line.de", lines(de))
    gz = gzip.compress(lines(en * 200).encode(), mtime=0)
    write(root / "truncated_gz.en.gz", gz[: len(gz) // 2])
    write(root / "truncated_gz.de", lines(de * 200))
    write(root / "nul_byte.en", lines(en))
    write(root / "nul_byte.de", lines([de[0], "Zwei Hunde\x00 spielen.", *de[2:]]))
    write(root / "binary.en", bytes(range(256)) * 4)  # a file that is no text at all
    write(root / "binary.de", lines([*de, "Noch einer."]))  # as many lines as binary.en
    write(root / "three_columns.tsv", lines([f"{s}\t{t}" for s, t in PAIRS[:2]] + ["a\tb\tc", f"{en[3]}\t{de[3]}"]))
    write(root / "empty_target.tsv", lines([f"{s}\t{t}" for s, t in PAIRS[:2]] + [f"{en[2]}\t  "]))
    write(
        root / "broken_json.jsonl",
        lines([json.dumps({"en": s, "de": t}) for s, t in PAIRS[:2]] + ['{"en": "A", "de": ']),
    )
    write(
        root / "missing_field.jsonl", lines([json.dumps({"en": s, "de": t}) for s, t in PAIRS[:3]] + ['{"en": "Hi"}'])
    )
    write(
        root / "not_a_string.jsonl",
        lines([json.dumps({"en": s, "de": t}) for s, t in PAIRS[:1]] + ['{"en": 5, "de": "fünf"}']),
    )
    write(root / "not_an_object.jsonl", lines([json.dumps({"en": en[0], "de": de[0]}), json.dumps(["en", "de"])]))


REVIEWS = [
    ("Great phone, the battery lasts two days.", 5), ("Screen cracked in a week.", 1),
    ("Does what it should, nothing more.", 3), ("Love the camera.", 5), ("Stopped charging after a month.", 1),
    ("Fine for the price.", 4), ("Slow and hot.", 2), ("Works well, arrived late.", 4),
]  # fmt: skip


def csv_rows(rows: list[tuple[str, object]], header: str = "Reviews,Rating") -> str:
    return lines([header, *(f'"{t}",{r}' for t, r in rows)])


def reviews(root: Path) -> None:
    write(root / "missing_column.csv", lines(["Reviews,Stars", *(f'"{t}",{r}' for t, r in REVIEWS)]))
    write(root / "rating_out_of_range.csv", csv_rows([*REVIEWS[:3], ("Amazing.", 7), *REVIEWS[3:]]))
    write(root / "rating_not_numeric.csv", csv_rows([*REVIEWS[:2], ("Okay I guess.", "five"), *REVIEWS[2:]]))
    write(root / "rating_empty.csv", csv_rows([*REVIEWS[:4], ("No stars given.", ""), *REVIEWS[4:]]))
    write(root / "broken_quoting.csv", lines(["Reviews,Rating", '"Great phone,5', *(f'"{t}",{r}' for t, r in REVIEWS)]))
    write(root / "empty_text.csv", csv_rows([*REVIEWS[:5], ("  ", 3), *REVIEWS[5:]]))
    write(
        root / "too_many_columns.csv", lines(["Reviews,Rating", *(f'"{t}",{r}' for t, r in REVIEWS[:2]), '"x",3,extra'])
    )
    write(root / "bom_semicolon.csv", "\ufeff" + lines(["Reviews;Rating", *(f'"{t}";{r}' for t, r in REVIEWS)]))
    latin = csv_rows([*REVIEWS[:2], ("Très bien, un café.", 5), *REVIEWS[2:]])
    write(root / "latin1.csv", latin.encode("latin-1"))
    write(root / "header_only.csv", "Reviews,Rating\n")
    write(root / "empty.csv", b"")
    write(root / "one_class.csv", csv_rows([(f"Review number {i}, five stars.", 5) for i in range(40)]))
    write(root / "identical_texts.csv", csv_rows([("Good phone.", 5 if i % 2 else 1) for i in range(50)]))
    write(root / "binary.csv", bytes(range(256)) * 4)


def wav_bytes(samples: np.ndarray, rate: int = 8000, channels: int = 1, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buffer.getvalue()


def tone(n: int = 2000) -> np.ndarray:
    return (0.3 * 32767 * np.sin(2 * np.pi * 500 * np.arange(n) / 8000)).astype("<i2")


def audio(root: Path) -> None:
    good = wav_bytes(tone())
    write(root / "truncated_header.wav", good[:30])  # cut inside the 44-byte header
    write(root / "wrong_header.wav", b"RIFX" + good[4:8] + b"WAVX" + good[12:])
    write(root / "promises_more.wav", good[:2044])  # the header promises 2,000 samples, 1,000 follow
    write(root / "zero_samples.wav", wav_bytes(tone(0)))
    zero_hz = bytearray(good)
    zero_hz[24:28] = struct.pack("<I", 0)  # sample rate
    zero_hz[28:32] = struct.pack("<I", 0)  # byte rate
    write(root / "zero_hz.wav", bytes(zero_hz))
    write(root / "stereo.wav", wav_bytes(np.repeat(tone(), 2), channels=2))
    pcm24 = b"".join((int(v) * 256).to_bytes(3, "little", signed=True) for v in tone(600))
    write(root / "pcm24_cut.wav", wav_bytes(np.frombuffer(pcm24, dtype=np.uint8), width=3)[: 44 + 900])
    write(root / "not_audio.wav", "This is a text file with a .wav name.\n")
    write(root / "empty.wav", b"")
    floats = np.full(800, np.nan, dtype="<f4")
    nan = bytearray(wav_bytes(floats.view("<i2")))
    nan[20:22] = struct.pack("<H", 3)  # format 3: IEEE float
    nan[34:36] = struct.pack("<H", 32)
    nan[32:34] = struct.pack("<H", 4)
    nan[28:32] = struct.pack("<I", 32000)
    write(root / "nan_samples.wav", bytes(nan))


def png_bytes(size: tuple[int, int], mode: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode in ("L", "I;16") else (10, 20, 30)[: len(mode)]).save(buffer, "PNG")
    return buffer.getvalue()


def images(root: Path) -> None:
    good = png_bytes((8, 8), "L")
    for case in ("truncated", "zero_bytes", "not_an_image", "mixed_modes", "mixed_sizes", "sixteen_bit"):
        for i in range(2):
            write(root / case / "a" / f"good{i}.png", good)
    write(root / "truncated" / "a" / "z_truncated.png", good[: len(good) // 2])
    write(root / "zero_bytes" / "a" / "z_empty.png", b"")
    write(root / "not_an_image" / "a" / "z_text.png", "not an image\n")
    write(root / "mixed_modes" / "a" / "z_rgb.png", png_bytes((8, 8), "RGB"))
    write(root / "mixed_sizes" / "a" / "z_big.png", png_bytes((16, 9), "L"))
    write(root / "sixteen_bit" / "a" / "z_16bit.png", png_bytes((8, 8), "I;16"))


def configs(root: Path) -> None:
    write(root / "unknown_key.yaml", "task: translate\ndata:\n  source: dates\ntrain:\n  epoch: 3\n")
    write(root / "wrong_type.yaml", "task: translate\ndata:\n  source: dates\ntrain:\n  epochs: three\n")
    write(root / "syntax_error.yaml", "task: translate\ndata:\n  source: dates\n   val_size: [1, 2\n")
    write(root / "empty.yaml", "")
    write(root / "unknown_task.yaml", "task: tranlsate\n")
    write(root / "not_a_mapping.yaml", "- task: translate\n- data: dates\n")
    write(root / "tab_indent.yaml", "task: translate\ndata:\n\tsource: dates\n")


class _Planted:
    """Unpickling this calls ``open('PICKLE_RAN', 'w')``: a file appears if anyone unpickles it."""

    def __reduce__(self):
        return (open, ("PICKLE_RAN", "w"))


def predict_inputs(root: Path) -> None:
    """Files for ``heedful predict RUN --input FILE`` (a dates run: one input a line)."""
    write(root / "latin1.txt", "1. Mai 2020\n3. M\xe4rz 2021\n".encode("latin-1"))
    write(root / "utf16.txt", "1. Mai 2020\n".encode("utf-16-le"))
    write(root / "no_text_column.csv", "date,id\n1. Mai 2020,1\n")
    write(root / "broken_row.jsonl", '{"text": "1. Mai 2020"}\n{"text": \n')


def models(root: Path) -> None:
    write(root / "pickle.safetensors", pickle.dumps({"weight": _Planted()}))
    write(root / "truncated.safetensors", struct.pack("<Q", 10_000) + b'{"w": {"dtype"')
    write(root / "not_json_config.json", "{model_type: transformer")


if __name__ == "__main__":
    parallel(HERE / "parallel")
    reviews(HERE / "reviews")
    audio(HERE / "audio")
    images(HERE / "images")
    configs(HERE / "configs")
    models(HERE / "models")
    predict_inputs(HERE / "predict")
