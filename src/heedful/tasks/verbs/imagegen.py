"""The imagegen task's verb: `heedful generate RUN --n 64 --class 3 --out threes.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from heedful.tasks.verbs import DeviceOption, run_loader


def generate(
    ctx: typer.Context,
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
    run = run_loader(ctx).load_run(run_dir, device, task="imagegen", verb="generate")
    path = out or run.run_dir / "plots" / "generated.png"
    run.generate(n, class_name, seed, out=path)
    typer.echo(f"{n} images: {path}")
    if show_attention:
        inputs = [class_name] * 3 if class_name is not None else (run.task.classes[:3] or ["image"] * 3)
        for figure in run.show_attention(inputs, out.parent if out else None):
            typer.echo(f"attention overlay: {figure}")
