"""The translate task's verb: `heedful translate RUN < in.txt > out.txt`."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, get_args

import typer

from heedful.data.text import refuse_nul
from heedful.errors import DataError, UserError, lines_shown, note
from heedful.outputs import check_output, written_whole
from heedful.tasks.verbs import DeviceOption, RunSetOption, run_loader

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
        refuse_nul(raw, f"<stdin> line {number}")
        try:
            return raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as exc:
            raise DataError(f"<stdin> line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})") from None

    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise UserError("stdin is closed: give the lines to translate on stdin")
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


def translate(
    ctx: typer.Context,
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A translate run directory written by `heedful train`, or an export of one (`heedful export`: "
            "CTranslate2 or ONNX), which then decodes on its own."
        ),
    ],
    beam: Annotated[int | None, typer.Option(min=1, help="Beam size (1 = greedy); default: decode.beam_size.")] = None,
    batch_tokens: Annotated[
        int | None, typer.Option(min=1, help="Source tokens × beam per batch; default: decode.batch_tokens.")
    ] = None,
    attention: Annotated[
        Path | None,
        typer.Option(
            help="Also write JSON lines: source pieces, output pieces, cross-attention (mean over heads); the file "
            "appears whole when stdin ends."
        ),
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
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            metavar="RUN",
            help="Another translate run of the same vocabulary to decode with RUN_DIR: their next-token "
            "log-probabilities are averaged inside greedy and beam search. Repeat for more runs.",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="torch (heedful's own search) | ctranslate2: a Transformer run converted to CTranslate2 "
            "(kept in RUN_DIR as ctranslate2-float32 or -int8, remade when the weights change) decodes. It uses the "
            "run's beam and output limits, but its length penalty divides by (|y|+1)^alpha, not GNMT's "
            "((5+|y|)/6)^alpha (decode.alpha=0 or beam 1: the same ranking), only the --beam best candidates of a "
            "step may end, and a sentence stops once --beam hypotheses have ended (with alpha 0: once its best "
            "candidate has; ours searches on while a live one could still win). Needs pip install 'heedful[export]'."
        ),
    ] = "torch",
    quantization: Annotated[
        str | None,
        typer.Option(
            help="With --engine ctranslate2: float32 (default) | int8 (CTranslate2's own int8 weights); for a "
            "CTranslate2 export folder, the type it computes in (default: as exported)."
        ),
    ] = None,
    set_: RunSetOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Translate stdin to stdout, one line for each line, in order (heedful translate RUN < in.txt >
    out.txt). --set changes decoding, e.g. decode.alpha=1.0 or decode.precision=bf16."""
    from tqdm.auto import tqdm

    if engine not in ("torch", "ctranslate2"):
        raise UserError(f"--engine {engine!r}: torch or ctranslate2")
    loader = run_loader(ctx)
    exported = loader.is_export(run_dir)
    if engine == "torch" and quantization is not None and not exported:
        raise UserError("--quantization is for --engine ctranslate2 (int8 for our own search: heedful optimize)")
    if (engine == "ctranslate2" or exported) and ensemble:
        raise UserError("--ensemble needs run directories and --engine torch (an export decodes one model)")
    if attention is not None:  # before any work; stdin too, which writing it would empty
        check_output(attention, "--attention", inputs=[Path("/dev/stdin")], runs=[run_dir, *(ensemble or [])])
    if exported:  # CTranslate2 or onnxruntime decodes it; the run's config and tokenizer travel inside
        translator = loader.open_export(run_dir, list(set_ or []), quantization, device)
        cfg = translator.cfg
        if cfg.task != "translate":
            raise UserError(f"{run_dir}: is an export of a {cfg.task!r} run; translate needs a translate run")
        if engine == "ctranslate2" and translator.runtime != "ctranslate2":
            raise UserError(f"--engine ctranslate2: {run_dir} is an export for {translator.runtime}, which decodes it")
    else:
        run = loader.load_run(run_dir, device, list(set_ or []), task="translate", verb="translate")
        cfg = run.cfg
        if engine == "ctranslate2":
            translator = loader.ct2_engine(run, quantization or "float32")
        else:
            translator = loader.with_ensemble(run, ensemble, device, list(set_ or []))  # the run itself alone
    out = sys.stdout.buffer
    bar = tqdm(unit=" lines", file=sys.stderr, disable=not progress or sys.stdin.isatty(), dynamic_ncols=True)
    if n_best > (beam or cfg.decode.beam_size):
        raise UserError(f"--n-best {n_best}: needs a beam of at least {n_best} (--beam)")
    if attention and not getattr(translator, "returns_attention", True):
        raise UserError(f"--attention: {run_dir} does not return attention (an ONNX export); translate its run")
    done = 0  # input lines answered so far (the n-best line numbers)
    cut = []  # the input lines (from 1) whose source was longer than the model takes
    with written_whole(attention, "--attention") if attention else contextlib.nullcontext() as maps:
        for lines in _stdin_chunks(CHUNK_LINES):
            results = translator.translate(
                lines, beam=beam, batch_tokens=batch_tokens, attention=maps is not None, n_best=n_best
            )
            if n_best > 1:
                text = "".join(  # a blank line's score field is empty: it was not decoded
                    f"{done + i} ||| {output} ||| {'' if score is None else f'{score:.4f}'}\n"
                    for i, t in enumerate(results)
                    for output, score in t.alternatives
                )
            else:
                text = "".join(f"{t.output}\n" for t in results)
            out.write(text.encode("utf-8"))
            out.flush()
            cut += [done + i + 1 for i, t in enumerate(results) if getattr(t, "source_cut", 0)]
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
    if cut:  # said once at the end, on stderr: stdout stays one translation per line
        limit = getattr(cfg.model, "max_len", "model.max_len")
        note(f"sources longer than the model's {limit} tokens were cut to them before translating: {lines_shown(cut)}")


def _positions(text: str, option: str) -> tuple[int, ...] | None:
    """``all`` -> None; ``0,2`` -> (0, 2)."""
    if text.strip() == "all":
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{option} {text!r}: 'all' or numbers separated by commas, e.g. 0,2") from None


def align(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A translate run directory written by `heedful train`.")],
    src: Annotated[Path, typer.Option("--src", help="Source sentences, one per line (.gz: read through gzip).")],
    tgt: Annotated[Path, typer.Option("--tgt", help="Their translations, line for line (forced, not decoded).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the Pharaoh lines here, whole at the end (default: stdout).")
    ] = None,
    layers: Annotated[
        str, typer.Option(help="Decoder layers to average: 'all' or e.g. 0,2 (negative from the top).")
    ] = "all",
    heads: Annotated[str, typer.Option(help="Heads to average: 'all' or e.g. 1,3.")] = "all",
    shift: Annotated[
        bool, typer.Option(help="Read each target word's row at the step that reads it (shift-att).")
    ] = False,
    extract: Annotated[str, typer.Option(help="argmax | threshold: which source words a word links to.")] = "argmax",
    threshold: Annotated[
        float | None, typer.Option(help="With --extract threshold: least share of a row (default 0.5).")
    ] = None,
    direction: Annotated[
        str, typer.Option(help="grow-diag-final | intersection | union | target | source")
    ] = "grow-diag-final",
    batch_tokens: Annotated[
        int | None, typer.Option(min=1, help="Tokens per batch; default: decode.batch_tokens.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Count aligned lines on stderr.")] = False,
    set_: RunSetOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Word alignments from cross-attention: forced decoding of each --tgt line given its --src line,
    one Pharaoh line per pair ('i-j': 0-based source word i, target word j; words split at spaces)."""
    from tqdm.auto import tqdm

    from heedful.explain.alignment import AlignMethod, Direction, Extract, parallel_lines, pharaoh

    # AlignMethod checks these too; here first, in the flags' own words, before any file is read.
    checked = (("--extract", extract, get_args(Extract)), ("--direction", direction, get_args(Direction)))
    for flag, given, allowed in checked:
        if given not in allowed:
            raise UserError(f"{flag} {given!r}: {', '.join(allowed[:-1])} or {allowed[-1]}")
    if threshold is not None and extract != "threshold":  # it would be ignored
        raise UserError(f"--threshold needs --extract threshold (--extract {extract} links each word to its largest)")
    threshold = AlignMethod.threshold if threshold is None else threshold  # the method's default
    if not 0.0 < threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: an attention weight in (0, 1]")
    if out is not None:
        check_output(out, "--out", inputs=[src, tgt], runs=[run_dir])
    method = AlignMethod(
        layers=_positions(layers, "--layers"), heads=_positions(heads, "--heads"), shift=shift,
        extract=extract, threshold=threshold, direction=direction,
    )  # fmt: skip
    pairs = parallel_lines(src, tgt)  # checks both files (line counts, empty lines) before the first pair
    first = next(pairs, None)
    run = run_loader(ctx).load_run(run_dir, device, list(set_ or []), task="translate", verb="align")
    # Empty files: no pairs, an empty --out (a filter's answer to empty input), exit 0.
    sources, targets = _unzip_lazily(first, pairs) if first is not None else (iter(()), iter(()))
    handle = written_whole(out, "--out") if out else contextlib.nullcontext(sys.stdout)
    # The lines (from 1) longer than the model takes, per side: keyed by flag, not by path, since
    # one file may be given as both --src and --tgt and each side is cut on its own.
    cut: dict[str, list[int]] = {"--src": [], "--tgt": []}
    with handle as sink, tqdm(unit=" lines", file=sys.stderr, disable=not progress) as bar:
        for n, links in enumerate(run.align(sources, targets, method=method, batch_tokens=batch_tokens), 1):
            sink.write(pharaoh(links) + "\n")
            bar.update(1)
            for side, tokens in (("--src", links.source_cut), ("--tgt", links.target_cut)):
                if tokens:
                    cut[side].append(n)
    if any(cut.values()):  # said once at the end, on stderr, as translate says it: a note, as there
        paths = {"--src": src, "--tgt": tgt}
        where = "; ".join(f"{side} {paths[side]} {lines_shown(lines)}" for side, lines in cut.items() if lines)
        limit = run.cfg.model.max_len  # a target takes one token fewer: its <bos> holds a position
        note(
            f"sentences longer than the model takes ({limit} tokens a source, {limit - 1} a target) were cut to "
            f"it before aligning, so the words past the cut have no links: {where}"
        )


def _unzip_lazily(first: tuple[str, str], rest: Iterator[tuple[str, str]]) -> tuple[Iterator[str], Iterator[str]]:
    """Two iterators, sources and targets, over one stream of pairs, each pair read once."""
    import itertools

    a, b = itertools.tee(itertools.chain([first], rest))
    return (s for s, _ in a), (t for _, t in b)
