"""The imagegen task's verb: `heedful generate RUN --n 64 --class 3 --out threes.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from heedful.errors import UserError
from heedful.explain.plots import image_format
from heedful.outputs import check_output
from heedful.tasks.verbs import DeviceOption, run_loader

MAX_GRID = 1024  # images in one grid PNG


def generate(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="An imagegen run directory written by `heedful train`.")],
    n: Annotated[int, typer.Option("--n", help="How many images (one grid: at most 1,024).", min=1)] = 64,
    class_name: Annotated[
        str | None, typer.Option("--class", help="Only this class (class-conditional models; default: all in turn).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="The grid PNG (default: RUN_DIR/plots/generated.png).")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise seed (default: the config's gan.sample_seed).")] = None,
    show_attention: Annotated[
        bool,
        typer.Option(
            help="Also save, for the grid's first three images, where query pixels attend (OUT-attention-I.png "
            "beside the grid)."
        ),
    ] = False,
    device: DeviceOption = "auto",
) -> None:
    """Generate images with a trained GAN and save them as one grid."""
    if n > MAX_GRID:  # 100,000 made an 11,416-pixel PNG and took 2.4 GB
        raise UserError(f"--n {n}: one grid holds at most {MAX_GRID:,} images; more, from Python: run.generate(n)")
    run = run_loader(ctx).load_run(run_dir, device, task="imagegen", verb="generate")
    path = check_output(out or run.run_dir / "plots" / "generated.png", "--out", runs=[run.run_dir])
    image_format(path, "--out")
    # The overlays' explanations first: a model without attention is refused before anything is written.
    explanations = run.task.explain_grid(run.model, n, class_name, seed) if show_attention else []
    run.generate(n, class_name, seed, out=path)
    typer.echo(f"{n} image{'s' if n != 1 else ''}: {path}")
    for i, explanation in enumerate(explanations):
        figure = run.task.plot_explanation(explanation, path.with_name(f"{path.stem}-attention-{i}.png"))
        typer.echo(f"attention overlay: {figure}")
