"""The speech task's verb: `heedful transcribe RUN one.wav two.flac`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from heedful.errors import UserError
from heedful.outputs import check_output_folder
from heedful.tasks.verbs import DeviceOption, RunSetOption, run_loader


def transcribe(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A speech run directory written by `heedful train`.")],
    audio: Annotated[list[Path], typer.Argument(help="WAV or FLAC files (resampled to the model's rate).")],
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            metavar="RUN",
            help="Another speech run (classifier head) to average with RUN_DIR: each run hears the files its own "
            "way, the mean of their digit probabilities decides. Repeat for more runs. --show-attention still "
            "shows RUN_DIR's attention.",
        ),
    ] = None,
    show_attention: Annotated[
        bool, typer.Option(help="Save the spectrogram with the frames' self-attention, one PNG per file.")
    ] = False,
    layer: Annotated[
        int | None, typer.Option(help="Encoder layer to show: decode.explain_layer (default: the config's, -1 = last).")
    ] = None,
    head: Annotated[
        int | None, typer.Option(help="Attention head to show: decode.explain_head (default: mean over heads).")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Where figures go (default: RUN_DIR/plots).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON lines instead of text (figure paths go to stderr).")
    ] = False,
    set_: RunSetOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Transcribe spoken digits: prints the digits and a confidence for each file."""
    if out_dir is not None and not show_attention:
        raise UserError("--out-dir needs --show-attention")
    check_output_folder(out_dir, "--out-dir")  # before any file is transcribed
    runs = run_loader(ctx)
    overrides = list(set_ or [])
    shown = [f"decode.explain_layer={layer}"] if layer is not None else []  # how this run shows attention
    shown += [f"decode.explain_head={head}"] if head is not None else []
    run = runs.load_run(run_dir, device, overrides + shown, task="speech", verb="transcribe")  # checks both
    files = [str(path) for path in audio]
    for p in runs.with_ensemble(run, ensemble, device, overrides).predict(files):
        if as_json:
            typer.echo(json.dumps({"file": p.input, "digits": p.output, "confidence": p.score}))
        else:
            typer.echo(f"{p.input}: {p.output}  (confidence {p.score:.3f})")
    if show_attention:
        for path in run.show_attention(files, out_dir):
            typer.echo(f"attention figure: {path}", err=as_json)  # --json: stdout holds only JSON lines
