"""``heedful`` — the command line. Each command has a Python twin in :mod:`heedful.runs`.

A mistake the user can fix (unknown config key, wrong type, missing file) prints one line to
stderr and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from heedful.errors import DataError, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="heedful: attention-based prediction you can see into. Train, evaluate, predict, explain.",
)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a config field, e.g. --set train.lr=3e-4 (repeatable).",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]


@app.command()
def train(
    config: Annotated[
        Path, typer.Argument(help="YAML config (e.g. configs/dates.yaml), or a run directory to resume.")
    ],
    set_: SetOption = None,
    run_dir: Annotated[Path | None, typer.Option(help="Where the run goes (default: runs/<name>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run directory's latest checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Discard an earlier run in the run directory: only what heedful wrote there.")
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N (overrides the config).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="classify, mlm: your CSV, TSV or JSONL of labelled texts (sets data.path).")
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Its text column (sets data.text_column).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Its label column (sets data.label_column).")] = None,
    group_column: Annotated[
        str | None, typer.Option(help="Its product column, for product-level scores (sets data.group_column).")
    ] = None,
) -> None:
    """Train the model a config describes; writes config, checkpoints, metrics and plots to the run dir."""
    from heedful.runs import load_config
    from heedful.train.trainer import fit

    overrides = _file_overrides(
        config, {"data": data, "text_column": text_column, "label_column": label_column, "group_column": group_column}
    )
    overrides += list(set_ or [])
    if device is not None:
        overrides.append(f"device={device}")
    cfg = load_config(config, overrides)  # a run directory as CONFIG trains in that directory
    if run_dir is not None:
        cfg.run_dir = run_dir  # a path as given, never read as YAML
    history = fit(cfg, resume=resume, overwrite=overwrite)
    out = cfg.resolved_run_dir()
    best = history.epochs[history.best_epoch - 1] if history.best_epoch else history.last()
    typer.echo(
        f"best epoch {history.best_epoch}: "
        + ", ".join(f"{k} {v:.4g}" for k, v in best.items() if k.startswith("val_"))
    )
    typer.echo(f"run directory: {out}  (model in {out / 'model'}, curves in {out / 'plots' / 'history.png'})")


def _file_overrides(config: Path, given: dict[str, object]) -> list[str]:
    """``train``'s shortcuts for a file of labelled texts (--data, --text-column, …) as ``data.*``
    overrides; refused in one line for a config whose task reads no such file."""
    from heedful.runs import load_config

    flags = {k: v for k, v in given.items() if v is not None}
    if not flags:
        return []
    fields = load_config(config).data.__class__.model_fields
    if "text_column" not in fields:
        named = ", ".join("--" + k.replace("_", "-") for k in flags)
        raise UserError(f"{config}: {named} set the data of a file of labelled texts (tasks classify and mlm); "
                        "this config's task reads none — use --set data.<field>=…")  # fmt: skip
    return [f"data.{'path' if k == 'data' else k}={v}" for k, v in flags.items()]


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `heedful train`.")],
    split: Annotated[str, typer.Option(help="Which held-out split to score.")] = "test",
    set_: SetOption = None,
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            help="Another run (speech digits, classify) to average with RUN_DIR: the mean of their class "
            "probabilities is scored, each member's accuracy too. The runs must hold out the same examples. "
            "Repeat for more runs; writes RUN_DIR/eval-<split>-ensemble.json.",
        ),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Score a trained run (or an --ensemble of runs) on a held-out split; writes eval-<split>.json
    (and, for text outputs, hyps-<split>.txt) into the run directory. --set changes decoding,
    e.g. decode.beam_size=1."""
    from heedful.runs import load_run

    run = load_run(run_dir, device, list(set_ or []))
    if ensemble:
        metrics = _with_ensemble(run, ensemble, device, list(set_ or [])).evaluate(split, progress=True)
        written = run_dir / f"eval-{split}-ensemble.json"
    else:
        metrics = run.evaluate(split)
        written = run_dir / f"eval-{split}.json"
    for key, value in metrics.items():
        typer.echo(f"{split} {key}: {value:.4f}")
    notes = run.task.notes.get(split, {})
    for key, value in notes.items():
        if isinstance(value, str | int | float):  # e.g. the sacreBLEU signatures; tables and plots below
            typer.echo(f"{split} {key}: {value}")
    if "confusion" in notes:
        _echo_confusion(notes["confusion"], notes["classes"])
    if notes.get("groups", {}).get("names"):
        typer.echo(f"{split} per-group predicted and true means: in {written.name} and plots/")
    elif "groups" in notes:
        typer.echo(f"{split}: no group has {notes['groups']['min_size']} held-out examples (data.min_group_size)")
    baselines = json.loads(written.read_text(encoding="utf-8")).get("baselines", {})
    if baselines:
        _echo_baselines(metrics, baselines)
    typer.echo(f"written: {written}")


def _echo_baselines(metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> None:
    """The model beside its baselines (fit on the same training data), on the headline metrics."""
    keys = [k for k in ("accuracy", "macro_f1", "mae", "group_spearman") if k in metrics]
    rows = {"this model": metrics, **baselines}
    width = max(map(len, rows)) + 2
    typer.echo("baselines, fit on the same training texts:")
    typer.echo(" " * width + "".join(f"{k:>16}" for k in keys))
    for name, values in rows.items():
        typer.echo(f"{name:<{width}}" + "".join(f"{values.get(k, float('nan')):>16.4f}" for k in keys))


def _echo_confusion(confusion: list[list[int]], classes: list[str]) -> None:
    """The confusion matrix as a small table: a row per true class, a column per predicted one."""
    width = max(len(str(n)) for n in [*classes, *(c for row in confusion for c in row)]) + 1
    typer.echo("confusion (rows: true, columns: predicted)")
    typer.echo(" " * width + "".join(f"{name:>{width}}" for name in classes))
    for name, row in zip(classes, confusion, strict=True):
        typer.echo(f"{name:>{width}}" + "".join(f"{count:>{width}}" for count in row))


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `heedful train`.")],
    inputs: Annotated[
        list[str] | None, typer.Argument(help='Inputs, e.g. "5. März 2021" or "The battery dies by noon".')
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="Predict every row of a CSV/TSV/JSONL file (its text column) or text file."),
    ] = None,
    output_file: Annotated[
        Path | None, typer.Option("--output", help="With --input: write the predictions here as CSV.")
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help="With --input: the text column (default: the run's data.text_column).")
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show the tokens coloured by attention (and --html writes them).")
    ] = False,
    html_file: Annotated[Path | None, typer.Option("--html", help="With --explain: also write an HTML page.")] = None,
    show_attention: Annotated[bool, typer.Option(help="Save an attention heatmap PNG per input.")] = False,
    out_dir: Annotated[Path | None, typer.Option(help="Where heatmaps go (default: RUN_DIR/plots).")] = None,
    batch_size: Annotated[int, typer.Option(help="With --input: texts per call.", min=1)] = 1024,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of text.")] = False,
    set_: SetOption = None,
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            help="Another classify run to average with RUN_DIR: each reads the texts its own way, the mean of "
            "their class probabilities decides. Repeat for more runs. --explain and --show-attention still show "
            "RUN_DIR's attention.",
        ),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Predict outputs for the given inputs (or every row of --input) with a trained run. --set changes
    how inputs are read or decoded, e.g. data.truncation=windows."""
    from heedful.runs import load_run

    if not inputs and input_file is None:
        raise UserError("give inputs to predict, or --input FILE")
    if output_file is not None and input_file is None:
        raise UserError("--output needs --input (predictions for single inputs are printed)")
    run = load_run(run_dir, device, list(set_ or []))
    predictor = _with_ensemble(run, ensemble, device, list(set_ or []))
    if input_file is not None:
        _predict_file(run, predictor, input_file, output_file, text_column, batch_size)
        return
    inputs = list(inputs or [])
    for p in predictor.predict(inputs):
        if as_json:
            record = {"input": p.input, "output": p.output, "score": p.score}
            if getattr(p, "probabilities", None) is not None:
                record["probabilities"] = p.probabilities
            typer.echo(json.dumps(record, ensure_ascii=False))
        elif getattr(p, "probabilities", None) is not None:
            probs = "  ".join(f"{k} {v:.2f}" for k, v in p.probabilities.items())
            typer.echo(f"{p.input}  →  {p.output}  ({probs})")
        else:
            typer.echo(f"{p.input}  →  {p.output}")
    if explain:
        from heedful.explain.text import ansi_tokens, html_tokens

        explanations = run.explain(inputs)
        rows = [(e.title, e.key_tokens, e.summary.mean(0).tolist()) for e in explanations]
        for _, tokens, weights in rows:
            typer.echo(ansi_tokens(tokens, weights) if sys.stdout.isatty() else _plain_weights(tokens, weights))
        if html_file is not None:
            typer.echo(f"explanation page: {html_tokens(rows, html_file, f'heedful: {run_dir}')}")
    if show_attention:
        for path in run.show_attention(inputs, out_dir):
            typer.echo(f"attention heatmap: {path}")


def _with_ensemble(run, others: list[Path] | None, device: str, overrides: list[str] | None = None):
    """``run`` alone, or with ``others`` an ``Ensemble`` that averages their class probabilities."""
    if not others:
        return run
    from heedful.runs import Ensemble, load_run

    members = [load_run(other, device, overrides) for other in others]
    for member in members:
        if member.cfg.task != run.cfg.task:
            raise UserError(f"{member.run_dir}: is a {member.cfg.task!r} run; --ensemble needs {run.cfg.task!r} runs")
    return Ensemble([run, *members])


def _plain_weights(tokens: list[str], weights: list[float]) -> str:
    """Without a terminal (a pipe, a file), the weights as numbers; a piece that is only
    sentencepiece's word-start mark keeps it, so that no weight is shown without its token."""
    return "  ".join(f"{t.replace('▁', '') or '▁'}:{w:.2f}" for t, w in zip(tokens, weights, strict=True))


def _predict_file(run, predictor, path: Path, output: Path | None, text_column: str | None, batch_size: int) -> None:
    """Every row's text (in ``run``'s text column unless given), predicted by ``predictor`` (the
    run, or an ensemble) in batches with a progress bar; CSV out (or lines to stdout)."""
    import csv

    from tqdm.auto import tqdm

    from heedful.data.text import read_texts

    column = text_column or getattr(getattr(run.cfg, "data", None), "text_column", None)
    texts = read_texts(path, column)
    handle = open(output, "w", newline="", encoding="utf-8") if output else None  # noqa: SIM115
    try:
        writer = csv.writer(handle) if handle else None
        header_written = False
        with tqdm(total=len(texts), desc="predicting", unit="text", disable=handle is None) as bar:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                for line, p in zip(range(start, start + len(chunk)), predictor.predict(chunk), strict=True):
                    probs = getattr(p, "probabilities", None) or {}
                    if writer is None:
                        typer.echo(f"{p.output}\t{p.score:.4f}")
                        continue
                    if not header_written:
                        writer.writerow(["row", "text", "prediction", "score", *probs])
                        header_written = True
                    writer.writerow(
                        [line + 1, p.input, p.output, f"{p.score:.4f}", *(f"{v:.4f}" for v in probs.values())]
                    )
                bar.update(len(chunk))
    finally:
        if handle:
            handle.close()
    if output:
        typer.echo(f"{len(texts)} predictions written: {output}")


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="An imagegen run directory written by `heedful train`.")],
    n: Annotated[int, typer.Option("--n", help="How many images.", min=1)] = 64,
    class_name: Annotated[
        str | None, typer.Option("--class", help="Only this class (class-conditional models; default: all in turn).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="The grid PNG (default: RUN_DIR/plots/generated.png).")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise seed (default: the config's gan.sample_seed).")] = None,
    show_attention: Annotated[
        bool, typer.Option(help="Also save, for three images, where query pixels attend (overlay PNGs).")
    ] = False,
    device: DeviceOption = "auto",
) -> None:
    """Generate images with a trained GAN and save them as one grid."""
    from heedful.runs import load_run

    run = load_run(run_dir, device)
    path = out or run.run_dir / "plots" / "generated.png"
    run.generate(n, class_name, seed, out=path)
    typer.echo(f"{n} images: {path}")
    if show_attention:
        inputs = [class_name] * 3 if class_name is not None else (run.task.classes[:3] or ["image"] * 3)
        for figure in run.show_attention(inputs, out.parent if out else None):
            typer.echo(f"attention overlay: {figure}")


@app.command()
def transcribe(
    run_dir: Annotated[Path, typer.Argument(help="A speech run directory written by `heedful train`.")],
    audio: Annotated[list[Path], typer.Argument(help="WAV or FLAC files (resampled to the model's rate).")],
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            help="Another speech run (classifier head) to average with RUN_DIR: each run hears the files its own "
            "way, the mean of their digit probabilities decides. Repeat for more runs. --show-attention still "
            "shows RUN_DIR's attention.",
        ),
    ] = None,
    show_attention: Annotated[
        bool, typer.Option(help="Save the spectrogram with the frames' self-attention, one PNG per file.")
    ] = False,
    layer: Annotated[int | None, typer.Option(help="Encoder layer to show (default: the config's, -1 = last).")] = None,
    head: Annotated[int | None, typer.Option(help="Attention head to show (default: mean over heads).")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Where figures go (default: RUN_DIR/plots).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of text.")] = False,
    set_: SetOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Transcribe spoken digits: prints the digits and a confidence for each file."""
    from heedful.runs import load_run

    run = load_run(run_dir, device, list(set_ or []))
    if run.cfg.task != "speech":
        raise UserError(f"{run_dir}: is a {run.cfg.task!r} run; transcribe needs a speech run")
    if layer is not None:
        run.cfg.decode.explain_layer = layer
    if head is not None:
        if not 0 <= head < run.cfg.model.n_heads:
            raise UserError(f"--head {head}: this model has heads 0–{run.cfg.model.n_heads - 1}")
        run.cfg.decode.explain_head = head
    files = [str(path) for path in audio]
    for p in _with_ensemble(run, ensemble, device, list(set_ or [])).predict(files):
        if as_json:
            typer.echo(json.dumps({"file": p.input, "digits": p.output, "confidence": p.score}))
        else:
            typer.echo(f"{p.input}: {p.output}  (confidence {p.score:.3f})")
    if show_attention:
        for path in run.show_attention(files, out_dir):
            typer.echo(f"attention figure: {path}")


CHUNK_LINES = 256  # most lines translated together: enough for full token batches


def _stdin_chunks(max_lines: int) -> Iterator[list[str]]:
    """stdin's lines in chunks of up to ``max_lines``: whatever has arrived, so a caller that
    writes one line and waits for its translation gets it, while a file streams in big chunks.

    Reads the file descriptor directly (Python's own buffering would hide how much is waiting);
    where ``select`` cannot tell (not a pipe, file or terminal), it reads until a chunk is full.
    """
    import os
    import select

    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stdin (tests, notebooks): plain lines
        fd = None
    number, chunk, pending, at_end = 0, [], b"", False

    def waiting() -> bool:
        try:
            return bool(select.select([fd], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def decoded(raw: bytes) -> str:
        try:
            return raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as exc:
            raise DataError(f"<stdin> line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})") from None

    if fd is None:
        for line in sys.stdin:
            chunk.append(line.rstrip("\n").removesuffix("\r"))
            if len(chunk) == max_lines:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    while not (at_end and not pending):
        newline = pending.find(b"\n")
        if newline >= 0 or (at_end and pending):
            end = newline if newline >= 0 else len(pending)
            number += 1
            chunk.append(decoded(pending[:end]))
            pending = pending[end + 1 :]
            if len(chunk) == max_lines:
                yield chunk
                chunk = []
            continue
        if chunk and not waiting():  # nothing more has arrived: translate what we have
            yield chunk
            chunk = []
        data = os.read(fd, 1 << 16)
        at_end = not data
        pending += data
    if chunk:
        yield chunk


@app.command()
def translate(
    run_dir: Annotated[Path, typer.Argument(help="A translate run directory written by `heedful train`.")],
    beam: Annotated[int | None, typer.Option(min=1, help="Beam size (1 = greedy); default: decode.beam_size.")] = None,
    batch_tokens: Annotated[
        int | None, typer.Option(min=1, help="Source tokens × beam per batch; default: decode.batch_tokens.")
    ] = None,
    attention: Annotated[
        Path | None,
        typer.Option(help="Also write JSON lines: source pieces, output pieces, cross-attention (mean over heads)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Count translated lines on stderr (when stdin is not a TTY).")] = False,
    n_best: Annotated[
        int,
        typer.Option(
            "--n-best",
            min=1,
            help="Print the beam's N best translations of each line, best first, as 'LINE ||| translation ||| "
            "log-probability' (LINE counts input lines from 0, the Moses n-best format). Needs a beam of at least N.",
        ),
    ] = 1,
    set_: SetOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Translate stdin to stdout, one line for each line, in order: heedful translate RUN < in.txt > out.txt
    --set changes decoding, e.g. decode.alpha=1.0 or decode.precision=bf16."""
    from tqdm.auto import tqdm

    from heedful.runs import load_run

    run = load_run(run_dir, device, list(set_ or []))
    if run.cfg.task != "translate":
        raise UserError(f"{run_dir}: is a {run.cfg.task!r} run; translate needs a translate run")
    out = sys.stdout.buffer
    bar = tqdm(unit=" lines", file=sys.stderr, disable=not progress or sys.stdin.isatty(), dynamic_ncols=True)
    if n_best > (beam or run.cfg.decode.beam_size):
        raise UserError(f"--n-best {n_best}: needs a beam of at least {n_best} (--beam)")
    done = 0  # input lines answered so far (the n-best line numbers)
    with open(attention, "w", encoding="utf-8") if attention else contextlib.nullcontext() as maps:
        for lines in _stdin_chunks(CHUNK_LINES):
            results = run.translate(
                lines, beam=beam, batch_tokens=batch_tokens, attention=maps is not None, n_best=n_best
            )
            if n_best > 1:
                text = "".join(
                    f"{done + i} ||| {output} ||| {score:.4f}\n"
                    for i, t in enumerate(results)
                    for output, score in t.alternatives
                )
            else:
                text = "".join(f"{t.output}\n" for t in results)
            out.write(text.encode("utf-8"))
            out.flush()
            done += len(lines)
            if maps is not None:
                for t in results:
                    record = {
                        "source": t.input,
                        "translation": t.output,
                        "source_pieces": t.source_pieces,
                        "output_pieces": t.output_pieces,
                        "attention": [[round(float(w), 4) for w in row] for row in t.attention],
                    }
                    maps.write(json.dumps(record, ensure_ascii=False) + "\n")
                maps.flush()
            bar.update(len(lines))
    bar.close()


def main() -> None:
    # Typer handles usage mistakes itself (unknown option, missing argument: exit 2); our own
    # UserErrors propagate out of the command and become one line here.
    try:
        app()
    except UserError as exc:
        typer.echo(f"heedful: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
