"""``heedful`` — the command line. Each command has a Python twin in :mod:`heedful.runs`.

The generic verbs (train, evaluate, predict) live here; every other verb, and the flags a task
adds to ``train``, come from the tasks themselves (``Task.commands()``, ``Task.train_options()``,
see ``heedful/tasks/verbs``), mounted when the command line is read — so this file names no task.

A mistake the user can fix (unknown config key, wrong type, missing file) prints one line to
stderr and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # typer ≥ 0.22 parses with its own copy of click; before, with click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from heedful.errors import UserError, a_run, article, say, torchrun_world
from heedful.outputs import check_output, check_output_folder, written_whole
from heedful.tasks.verbs import DeviceOption, RunSetOption, SetOption, TrainOption


class Commands(TyperGroup):
    """heedful's verbs: train, evaluate and predict, then each task's own (``Task.commands()``);
    ``train`` also takes every task's flags (``Task.train_options()``). Task modules are imported
    only when a verb or a flag of theirs may be needed (not for ``evaluate`` or ``predict``)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return ["train", *super().list_commands(ctx), *self._task_verbs()]

    def get_command(self, ctx: Any, name: str) -> Any:
        command = (
            _train_command() if name == "train" else super().get_command(ctx, name) or self._task_verbs().get(name)
        )
        if command is not None and command.short_help is None and command.help:
            # The Commands box shows a help's first paragraph with its line breaks kept (typer's
            # rich mode): wrapped docstrings came out as ragged half-lines. One line per paragraph.
            command.short_help = " ".join(command.help.split("\n\n")[0].split())
        if command is not None:
            _untyped_flags(command.get_params(ctx))
        return command

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # typer suggests only from ``self.commands``, which lacks train and every task's verb
        # (``heedful traslate`` got "Did you mean 'evaluate'?"): suggest from all the verbs.
        try:
            return self._click_resolve_command(ctx, args)
        except click_errors.UsageError as exc:
            matches = difflib.get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if matches:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {' or '.join(map(repr, matches))}?"
            raise

    def _task_verbs(self) -> dict[str, Any]:
        if not hasattr(self, "_verbs"):
            from heedful.tasks.registry import all_task_classes

            verbs, functions = typer.Typer(add_completion=False), {}
            for cls in all_task_classes():
                for function in cls.commands():  # a subclass may inherit its parent's verbs
                    name = function.__name__.replace("_", "-")
                    if name == "train" or name in self.commands or functions.get(name, function) is not function:
                        raise RuntimeError(f"task {cls.name!r}: the verb {name!r} is taken")
                    if name not in functions:
                        functions[name] = verbs.command(name)(function)
            self._verbs = dict(typer.main.get_group(verbs).commands) if functions else {}
        return self._verbs


def _untyped_flags(params: list[Any]) -> list[Any]:
    """typer 0.29's help prints a flag's Python type beside it (``--overwrite <bool>``, even
    ``--help <bool>``), as if it took a value; an empty metavar leaves its type column blank.
    Help texts are plain text: typer's rich mode reads ``'heedful[export]'`` as a markup tag and
    drops it, so brackets are escaped (once: this runs each time a command is looked up)."""
    from rich.markup import escape

    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        if getattr(param, "is_bool_flag", False) and param.secondary_opts and param.default is False:
            param.secondary_opts = []  # --no-overwrite would only say the default again, and widen the help
        if getattr(param, "help", None) and not getattr(param, "help_escaped", False):
            param.help, param.help_escaped = escape(param.help), True
    return params


app = typer.Typer(
    cls=Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="heedful: attention-based prediction you can see into. Train, evaluate, predict, explain.",
)


class RunLoader:
    """How a task's verb opens run directories (``heedful.tasks.verbs.RunLoader``)."""

    def load_run(self, run_dir: Path, device: str, overrides: list[str] | None = None, *, task: str, verb: str):
        from heedful.runs import load_run

        run = load_run(run_dir, device, overrides)
        if run.cfg.task != task:
            raise UserError(f"{run_dir}: is {a_run(run.cfg.task)}; {verb} needs {article(task)} {task} run")
        return run

    def with_ensemble(self, run, others: list[Path] | None, device: str, overrides: list[str] | None = None):
        return _with_ensemble(run, others, device, overrides)

    def ct2_engine(self, run, quantization: str):
        from heedful.optimize.ct2 import ct2_engine

        return ct2_engine(run, quantization)

    def is_export(self, folder: Path) -> bool:
        from heedful.optimize.common import is_export

        return is_export(folder)

    def open_export(self, folder: Path, overrides: list[str] | None, quantization: str | None, device: str):
        from heedful.optimize.export import open_export

        return open_export(folder, overrides, quantization, device)


def _print_version(value: bool) -> None:
    if value:
        from heedful import __version__

        typer.echo(f"heedful {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print heedful's version and exit."),
    ] = False,
) -> None:
    ctx.obj = RunLoader()  # every verb's context inherits it
    world = torchrun_world()
    if ctx.invoked_subcommand not in (None, "train") and world > 1:
        # Each process would do the whole job and write the same files at once.
        raise UserError(f"heedful {ctx.invoked_subcommand} runs in one process; torchrun is for `heedful train` "
                        f"(this is one of {world} processes)")  # fmt: skip


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
    **task_options: Any,
) -> None:
    """Train the model a config describes; writes config, checkpoints, metrics and plots to the run dir."""
    from heedful.runs import load_config
    from heedful.train.distributed import is_main_process
    from heedful.train.trainer import fit

    overrides = _task_overrides(config, {k: v for k, v in task_options.items() if v is not None})
    overrides += list(set_ or [])
    if device is not None:
        overrides.append(f"device={device}")
    cfg = load_config(config, overrides)  # a run directory as CONFIG trains in that directory
    if run_dir is not None:
        cfg.run_dir = run_dir  # a path as given, never read as YAML
    try:
        history = fit(cfg, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: say what is kept, then exit 130 (143: SIGTERM)
        import signal

        from heedful.train.checkpoint import list_checkpoints
        from heedful.train.resume import resume_command
        from heedful.train.stopping import TrainingStopped

        out = cfg.resolved_run_dir()
        if is_main_process():
            kept = list_checkpoints(out / "checkpoints")
            typer.echo(
                f"heedful: interrupted; `{resume_command(out)}` continues from {kept[-1].name}"
                if kept
                else "heedful: interrupted before the first checkpoint; nothing was kept",
                err=True,
            )
        if isinstance(exc, TrainingStopped) and exc.signum == signal.SIGTERM:
            raise typer.Exit(128 + signal.SIGTERM) from None
        raise
    if not is_main_process():  # one of several torchrun processes: rank 0 reports
        return
    out = cfg.resolved_run_dir()
    best = history.epochs[history.best_epoch - 1] if history.best_epoch else history.last()
    typer.echo(
        f"best epoch {history.best_epoch}: "
        + ", ".join(f"{k} {v:.4g}" for k, v in best.items() if k.startswith("val_"))
    )
    typer.echo(f"run directory: {out}  (model in {out / 'model'}, curves in {out / 'plots' / 'history.png'})")


def _train_command() -> Any:
    """``train`` as a command, with every task's flags added to its own (two tasks may share a
    flag: classify and mlm read the same files)."""
    import inspect

    from heedful.tasks.registry import all_task_classes

    offered: dict[str, list[str]] = {}
    options: dict[str, TrainOption] = {}
    for cls in all_task_classes():
        for option in cls.train_options():
            options.setdefault(option.flag, option)
            offered.setdefault(option.flag, []).append(cls.name)
    own = [p for p in inspect.signature(train, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    flags = [
        inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                option.type | None,
                typer.Option(option.flag, help=f"{', '.join(offered[flag])}: {option.help} (sets {option.key})."),
            ],
        )
        for flag, option in options.items()
    ]

    def train_command(**kwargs: Any) -> None:
        train(**kwargs)

    train_command.__signature__ = inspect.Signature([*own, *flags])  # type: ignore[attr-defined]
    train_command.__annotations__ = {p.name: p.annotation for p in [*own, *flags]}
    train_command.__doc__ = train.__doc__
    command = typer.Typer(add_completion=False)
    command.command("train")(train_command)
    return typer.main.get_command(command)


def _task_overrides(config: Path, given: dict[str, object]) -> list[str]:
    """The task flags given to ``train`` (--data, --text-column, …) as config overrides; refused
    in one line when the config's task does not take them."""
    from heedful.runs import load_config
    from heedful.tasks.registry import all_task_classes, get_task

    if not given:
        return []
    task = get_task(load_config(config).task)
    own = {option.name: option for option in task.train_options()}
    if not set(given) <= set(own):
        named = ", ".join("--" + k.replace("_", "-") for k in given)
        offering = [c for c in all_task_classes() if set(given) <= {o.name for o in c.train_options()}]
        options = [o for c in offering[:1] for o in c.train_options() if o.name in given]
        if not options:
            raise UserError(f"{config}: {named}: no task takes these flags together — use --set KEY=VALUE")
        names = " and ".join(c.name for c in offering)
        about = " and ".join(dict.fromkeys(o.about for o in options))
        section = options[0].key.split(".")[0]
        flags = "flags" if len(given) > 1 else "a flag"
        raise UserError(f"{config}: {named}: {flags} for {about} (task{'s' if len(offering) > 1 else ''} {names}); "
                        f"this config's task ({task.name}) reads none — use --set {section}.<field>=…")  # fmt: skip
    return [f"{own[k].key}={v}" for k, v in given.items()]


@app.command()
def evaluate(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory written by `heedful train`, or an export of one (`heedful export`), scored "
            "from its own predictions: a translator's loss, token accuracy and alignment scores need the weights and "
            "are left out."
        ),
    ],
    split: Annotated[str, typer.Option(help="Which held-out split to score.")] = "test",
    set_: RunSetOption = None,
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            metavar="RUN",
            help="Another run of the same task to average with RUN_DIR (classifiers: digits, reviews): the mean "
            "of their class probabilities is scored, each member's accuracy too. The runs must hold out the same "
            "examples. Translation runs of one vocabulary decode together (log-probabilities averaged). "
            "Repeat for more runs; writes RUN_DIR/eval-<split>-ensemble.json.",
        ),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Score a trained run (or an --ensemble of runs) on a held-out split; writes eval-<split>.json
    (and, for text outputs, hyps-<split>.txt) into the run directory. Given an export (`heedful
    export`), scores what it ships from its own predictions and writes nothing. --set changes
    decoding, e.g. decode.beam_size=1."""
    from heedful.runs import load_run

    if RunLoader().is_export(run_dir):
        run = _open_export(run_dir, list(set_ or []), device, ensemble)
        result = run.evaluate(split)
    else:
        run = load_run(run_dir, device, list(set_ or []))
        if ensemble:
            result = _with_ensemble(run, ensemble, device, list(set_ or [])).evaluate(split, progress=True)
        else:
            result = run.evaluate(split)
    for key, value in result.items():
        typer.echo(f"{split} {key}: {value:.4f}")
    for line in run.task.describe(result, split):  # the task's notes and tables, its baselines
        typer.echo(line)
    if "eval" in result.artifacts:
        typer.echo(f"written: {result.artifacts['eval']}")
    else:
        typer.echo(f"(an export, scored from its {run.runtime} predictions: nothing written)")


@app.command()
def predict(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory written by `heedful train`, or an export of one (`heedful export`: ONNX or "
            "CTranslate2), which predicts on the CPU without the run's weights."
        ),
    ],
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON lines instead of text (heatmap paths go to stderr).")
    ] = False,
    set_: RunSetOption = None,
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            metavar="RUN",
            help="Another run of the same task to average with RUN_DIR: a classifier reads the inputs its own "
            "way, the mean of their class probabilities decides; translation runs of one vocabulary decode "
            "together, log-probabilities averaged. Repeat for more runs. --explain and "
            "--show-attention still show RUN_DIR's attention.",
        ),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Predict outputs for the given inputs (or every row of --input) with a trained run, or with an
    export of one (`heedful export`), which then predicts on its own. --set changes how inputs are
    read or decoded, e.g. data.truncation=windows."""
    from heedful.runs import load_run

    if not inputs and input_file is None:
        raise UserError("give inputs to predict, or --input FILE")
    if inputs and input_file is not None:
        raise UserError("give inputs to predict or --input FILE, not both")
    if output_file is not None and input_file is None:
        raise UserError("--output needs --input (predictions for single inputs are printed)")
    if output_file is not None and as_json:
        raise UserError("--json prints the predictions; --output writes them as CSV: give one")
    for flag, given, needs, needed in (
        ("--html", html_file, explain, "--explain"),
        ("--out-dir", out_dir, show_attention, "--show-attention"),
    ):
        if given is not None and not needs:
            raise UserError(f"{flag} needs {needed}")
    shown = [flag for flag, given in (("--explain", explain), ("--show-attention", show_attention)) if given]
    if input_file is not None and shown:  # a file's rows go to --output; their explanations had nowhere to go
        raise UserError(f"{' and '.join(shown)}: explain texts given on the command line, not the rows of --input")
    if input_file is not None and not input_file.is_file():
        problem = "is a folder; give a file" if input_file.is_dir() else "file not found"
        raise UserError(f"--input {input_file}: {problem}")
    runs = [run_dir, *(ensemble or [])]
    if output_file is not None:
        check_output(output_file, "--output", inputs=[input_file], runs=runs)
    if html_file is not None:
        check_output(html_file, "--html", runs=runs)
    check_output_folder(out_dir, "--out-dir")
    if RunLoader().is_export(run_dir):
        wanted = [flag for flag, given in (("--explain", explain), ("--show-attention", show_attention)) if given]
        if wanted:
            raise UserError(f"{' and '.join(wanted)}: {run_dir} is an export, which keeps no attention; "
                            "give the run it came from")  # fmt: skip
        run = predictor = _open_export(run_dir, list(set_ or []), device, ensemble)
    else:
        run = load_run(run_dir, device, list(set_ or []))
        predictor = _with_ensemble(run, ensemble, device, list(set_ or []))
    if input_file is not None:
        _predict_file(run, predictor, input_file, output_file, text_column, batch_size, as_json)
        return
    inputs = list(inputs or [])
    # Explained before anything is printed or drawn: an input the task cannot explain (a blank
    # one) is refused in one line, not after the other inputs' predictions have been shown.
    explanations = run.explain(inputs) if explain or show_attention else []
    for p in predictor.predict(inputs):
        if as_json:
            typer.echo(json.dumps(p.record(), ensure_ascii=False))
        elif p.probabilities is not None:
            probs = "  ".join(f"{k} {v:.2f}" for k, v in p.probabilities.items())
            typer.echo(f"{p.input}  →  {p.output}  ({probs})")
        else:
            typer.echo(f"{p.input}  →  {p.output}")
    if explain:
        from heedful.explain.text import ansi_tokens, html_tokens

        rows = [(e.title, e.key_tokens, e.summary.mean(0).tolist()) for e in explanations]
        for _, tokens, weights in rows:  # --json: stdout holds only JSON lines, the weights go to stderr
            shaded = (sys.stderr if as_json else sys.stdout).isatty()
            typer.echo(ansi_tokens(tokens, weights) if shaded else _plain_weights(tokens, weights), err=as_json)
        if html_file is not None:
            typer.echo(f"explanation page: {html_tokens(rows, html_file, f'heedful: {run_dir}')}", err=as_json)
    if show_attention:
        for path in run.plot_explanations(explanations, out_dir):
            typer.echo(f"attention heatmap: {path}", err=as_json)  # --json: stdout holds only JSON lines


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `heedful train`.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where the HTML goes (default: RUN_DIR/report.html).")
    ] = None,
    inputs: Annotated[
        list[str] | None, typer.Option("--input", help="A sample to predict and explain in the report (repeatable).")
    ] = None,
    set_: RunSetOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Write one self-contained HTML report of a run (no network needed to view it): config, training
    curves, metrics beside baselines, sample predictions with attention and rollout, faithfulness."""
    from heedful.runs import load_run

    if out is not None:
        check_output(out, "--out", runs=[run_dir])
    run = load_run(run_dir, device, list(set_ or []))
    typer.echo(f"report: {run.report(out, list(inputs or []) or None)}")


@app.command("optimize")
def optimize_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `heedful train` (or by optimize).")],
    method: Annotated[
        str,
        typer.Option(help="int8 | average | low-rank | prune-heads | distill (docs/OPTIMIZE.md).", show_default=False),
    ],
    out: Annotated[Path, typer.Option(help="The optimized run directory to write (new or empty).")],
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace OUT when an earlier optimize or export wrote it (it holds optimize.json or "
            "export.json); nothing else is replaced, and the old folder goes only once the new one is complete.",
        ),
    ] = False,
    last: Annotated[int | None, typer.Option(help="average: how many of the last checkpoints (default 5).")] = None,
    energy: Annotated[
        float | None, typer.Option(help="low-rank: keep this share of each layer's Σσ² (e.g. 0.9).")
    ] = None,
    size: Annotated[
        float | None, typer.Option(help="low-rank: each factorized layer's parameters as this share (e.g. 0.5).")
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="low-rank: only Linear layers whose name contains this (e.g. ff).")
    ] = None,
    untie: Annotated[
        bool,
        typer.Option(
            "--untie",
            help="low-rank: factorize a projection tied to an embedding too (a decoder's output), untying them.",
        ),
    ] = False,
    fraction: Annotated[float | None, typer.Option(help="prune-heads: share of all heads to remove (0.5).")] = None,
    rounds: Annotated[int | None, typer.Option(help="prune-heads: prune in this many rounds (1).")] = None,
    batches: Annotated[
        int | None, typer.Option(help="prune-heads: training batches that measure head importance (8).")
    ] = None,
    fine_tune_steps: Annotated[
        int | None, typer.Option(help="low-rank, prune-heads: Adam steps of fine-tuning after each change (0).")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="The fine-tuning learning rate (1e-4).")] = None,
    beam: Annotated[
        int | None,
        typer.Option(help="distill: the teacher's beam over its training sources (1 = greedy; decode.beam_size)."),
    ] = None,
    student_set: Annotated[
        list[str] | None,
        typer.Option(
            "--student-set",
            metavar="KEY=VALUE",
            help="distill: a change to the teacher's config for the student, e.g. model.d_model=192 or "
            "train.max_minutes=20. Repeat for more.",
        ),
    ] = None,
) -> None:
    """Make a trained run cheaper to run; writes OUT as a run directory that translate, predict and
    evaluate read like any other (and OUT/optimize.json: what was done)."""
    from heedful.optimize import count_parameters, optimize
    from heedful.runs import load_run

    run = load_run(run_dir, "cpu")
    options = {"last": last, "energy": energy, "size": size, "layers": layers, "untie": untie or None,
               "fraction": fraction, "rounds": rounds, "batches": batches, "fine_tune_steps": fine_tune_steps, "lr": lr,
               "beam": beam, "student_set": student_set}  # fmt: skip
    written = optimize(run, method, out, overwrite=overwrite, **options)
    optimized = load_run(written, "cpu")
    before, after = count_parameters(run.model), count_parameters(optimized.model)
    size_before = (run_dir / "model" / "model.safetensors").stat().st_size
    size_after = (written / "model" / "model.safetensors").stat().st_size
    typer.echo(f"{method}: {before:,} → {after:,} parameters, model file {size_before:,} → {size_after:,} bytes")
    typer.echo(f"optimized run directory: {written}")


@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory: a Transformer translator or text classifier.")],
    out: Annotated[Path, typer.Option(help="The folder to write (new or empty).")],
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace OUT when an earlier export or optimize wrote it (it holds export.json or "
            "optimize.json); nothing else is replaced, and the old folder goes only once the new one is complete.",
        ),
    ] = False,
    format_: Annotated[
        str, typer.Option("--format", help="onnx (run with onnxruntime) | ctranslate2 (a Transformer translator).")
    ] = "onnx",
    quantization: Annotated[
        str | None, typer.Option(help="ctranslate2: store the weights as this type (int8, int8_float32, float16).")
    ] = None,
) -> None:
    """Export a run's model for another runtime: ONNX — a classifier as classifier.onnx, a translator as
    encoder.onnx + decoder_step.onnx (the cache as explicit inputs and outputs) — or a CTranslate2 model
    folder; see docs/OPTIMIZE.md."""
    from heedful.runs import load_run

    if format_ not in ("onnx", "ctranslate2"):
        raise UserError(f"--format {format_!r}: unknown; choose from onnx, ctranslate2")
    if quantization is not None and format_ != "ctranslate2":
        raise UserError("--quantization is for --format ctranslate2 (ONNX exports float32)")
    run = load_run(run_dir, "cpu")
    if format_ == "ctranslate2":
        from heedful.optimize.ct2 import export_ctranslate2

        typer.echo(f"exported a CTranslate2 model: {export_ctranslate2(run, out, quantization, overwrite)}")
        return
    from heedful.optimize.export import export_onnx

    written = export_onnx(run, out, overwrite)
    typer.echo(f"exported: {', '.join(sorted(p.name for p in written.glob('*.onnx')))} in {written}")


def _open_export(folder: Path, overrides: list[str], device: str, ensemble: list[Path] | None):
    """An export folder for `predict` and `evaluate`: onnxruntime or CTranslate2 computes, on the
    CPU, with the run's config and tokenizer from inside the folder (``open_export``)."""
    if ensemble:
        raise UserError("--ensemble needs run directories (an export is one model)")
    return RunLoader().open_export(folder, overrides, None, device)


def _with_ensemble(run, others: list[Path] | None, device: str, overrides: list[str] | None = None):
    """``run`` alone, or with ``others`` an ``Ensemble`` that averages their class probabilities."""
    if not others:
        return run
    from heedful.runs import Ensemble, load_run

    seen = {Path(run.run_dir).resolve(): Path(run.run_dir)}
    for other in others:  # the same run twice is that run weighted twice, not a second opinion: a slip
        if Path(other).resolve() in seen:
            raise UserError(f"--ensemble {other}: is {seen[Path(other).resolve()]}, already in the ensemble; "
                            "give each run once")  # fmt: skip
        seen[Path(other).resolve()] = Path(other)
    members = [load_run(other, device, overrides) for other in others]
    for member in members:
        if member.cfg.task != run.cfg.task:
            raise UserError(f"{member.run_dir}: is {a_run(member.cfg.task)}; --ensemble needs {run.cfg.task!r} runs")
    return Ensemble([run, *members])


def _plain_weights(tokens: list[str], weights: list[float]) -> str:
    """Without a terminal (a pipe, a file), the weights as numbers; a piece that is only
    sentencepiece's word-start mark keeps it, so that no weight is shown without its token."""
    return "  ".join(f"{t.replace('▁', '') or '▁'}:{w:.2f}" for t, w in zip(tokens, weights, strict=True))


def _score_cell(score: float | None) -> str:
    """A score to 4 places; none (a translation's blank input, not decoded) is a blank cell."""
    return "" if score is None else f"{score:.4f}"


def _predict_file(
    run, predictor, path: Path, output: Path | None, text_column: str | None, batch_size: int, as_json: bool = False
) -> None:
    """Every row's text (in ``run``'s text column unless given), predicted by ``predictor`` (the
    run, or an ensemble) in batches with a progress bar; CSV out (or lines to stdout). The CSV
    keeps the input's text column under its own name and its other columns after the predictions,
    so a product or an id stays beside its row (a column named like one of ours gets " (input)"
    added). Row N of the output is line N of a text or JSONL file and record N of a CSV/TSV file;
    a row without text (a blank line, a blank or missing text cell) gets an empty row — the
    record's other columns kept — or, on stdout, an empty line or JSON with null fields."""
    import csv

    from tqdm.auto import tqdm

    from heedful.data.text import read_text_rows

    column = text_column or getattr(getattr(run.cfg, "data", None), "text_column", None)
    rows = read_text_rows(path, column)
    texts = rows.texts
    width = ours_width = 0  # the CSV's columns (and ours among them), known from the first prediction's classes
    written = 0  # the rows written so far

    def write_blank_rows(upto: int) -> None:
        """Empty rows for the rows without text before row ``upto`` (a record's other columns kept)."""
        nonlocal written
        for row in range(written + 1, upto):
            if writer is not None:
                theirs = rows.blank_values.get(row, [""] * (width - ours_width))
                writer.writerow([row, *[""] * (ours_width - 1), *theirs])
            else:
                typer.echo(json.dumps({"input": "", "output": None, "score": None}) if as_json else "")
        written = max(written, upto - 1)

    with written_whole(output, "--output", newline="") if output else contextlib.nullcontext() as handle:
        writer = csv.writer(handle) if handle else None
        with tqdm(total=len(texts), desc="predicting", unit="text", disable=handle is None) as bar:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                for index, p in zip(range(start, start + len(chunk)), predictor.predict(chunk), strict=True):
                    probs = p.probabilities or {}
                    if writer is not None and not width:
                        # The text column keeps the input's name ("text" for a file of lines).
                        named = rows.text_column or "text"
                        if named in ("row", "prediction", "score", *probs):
                            named += " (input)"
                        ours = ["row", named, "prediction", "score", *probs]
                        theirs = [f"{c} (input)" if c in ours else c for c in rows.columns]
                        writer.writerow([*ours, *theirs])
                        width, ours_width = len(ours) + len(theirs), len(ours)
                    write_blank_rows(rows.rows[index])
                    written = rows.rows[index]
                    if writer is None:
                        shown = (
                            json.dumps(p.record(), ensure_ascii=False)
                            if as_json
                            else f"{p.output}\t{_score_cell(p.score)}"
                        )
                        typer.echo(shown)
                        continue
                    writer.writerow(
                        [written, p.input, p.output, _score_cell(p.score), *(f"{v:.4f}" for v in probs.values()),
                         *rows.values[index]]
                    )  # fmt: skip
                bar.update(len(chunk))
        write_blank_rows(rows.count + 1)
    if output:
        blank = rows.count - len(texts)
        kept = f" (and {blank} empty, for rows without text)" if blank else ""
        typer.echo(f"{len(texts)} predictions written{kept}: {output}")


@app.command()
def serve(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories to serve, each named by its run name; an export of a run (`heedful export`) "
            "serves as RUN-onnx or RUN-ct2, without attention."
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to bind; a non-local one needs --api-key or --insecure.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="HEEDFUL_API_KEY", help="Required on every route but /healthz, /readyz and the explorer's page."
        ),
    ] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-local --host without an API key.")] = False,
    threads: Annotated[
        int, typer.Option(help="Torch threads for inference; above 1, every model runs in one inference thread.", min=1)
    ] = 1,
    device: DeviceOption = "cpu",
    no_batching: Annotated[
        bool,
        typer.Option(
            "--no-batching",
            help="Answer each request on its own (by default concurrent requests to one model are batched).",
        ),
    ] = False,
    max_batch_tokens: Annotated[
        int, typer.Option(help="A batch's budget: characters of text, 10-ms frames of audio, 64 per image.", min=1)
    ] = 4096,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch's first request waits for others.", min=0)] = 5.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.", min=1)] = 1_000_000,
    max_texts: Annotated[int, typer.Option(help="Texts per request.", min=1)] = 32,
    max_text_chars: Annotated[int, typer.Option(help="Characters per text.", min=1)] = 2000,
    max_audio_files: Annotated[int, typer.Option(help="Audio files per request.", min=1)] = 8,
    max_audio_seconds: Annotated[float, typer.Option(help="Seconds per audio file.", min=0)] = 30.0,
    max_sample_rate: Annotated[int, typer.Option(help="Highest audio sample rate, Hz.", min=1)] = 48_000,
    max_images: Annotated[int, typer.Option(help="Images per request.", min=1)] = 16,
) -> None:
    """Serve runs over HTTP: POST /v1/models/NAME/predict, GET /v1/models, /healthz, /readyz, /docs, and the
    attention explorer at /."""
    from heedful.serve import Batching, Limits
    from heedful.serve import serve as serve_runs

    limits = Limits(
        max_body_bytes=max_body_bytes, max_texts=max_texts, max_text_chars=max_text_chars,
        max_audio_files=max_audio_files, max_audio_seconds=max_audio_seconds, max_sample_rate=max_sample_rate,
        max_images=max_images,
    )  # fmt: skip
    serve_runs(
        run_dirs, host=host, port=port, api_key=api_key, insecure=insecure, limits=limits, threads=threads,
        batching=Batching(enabled=not no_batching, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms),
        device=device,
    )  # fmt: skip


@app.command("config")
def config_command(
    config: Annotated[Path, typer.Argument(help="YAML config (e.g. configs/dates.yaml) or a run directory.")],
    set_: SetOption = None,
    fields: Annotated[
        bool,
        typer.Option(
            "--fields", help="List every key --set can change: its value, what it may be, its default, what it does."
        ),
    ] = False,
) -> None:
    """Show a config as training reads it: every field, defaults filled in and --set applied, as YAML
    (or with --fields, one line per key). Checks it as train would; trains and writes nothing."""
    from heedful.config import REQUIRED, describe_fields, to_yaml
    from heedful.runs import load_config

    cfg = load_config(config, list(set_ or []))
    if not fields:
        typer.echo(to_yaml(cfg), nl=False)
        return
    rows = describe_fields(cfg)
    key_width = max(len(row.key) for row in rows)
    for row in rows:
        line = f"{row.key:<{key_width}}  {_flow(row.value)}  ({row.kind}"
        if row.default is REQUIRED:
            line += "; required"
        elif row.default != row.value:
            line += f"; default {_flow(row.default)}"
        typer.echo(f"{line})" + (f"  {row.description}" if row.description else ""))


def _flow(value: Any) -> str:
    """A value as one line of YAML, as --set takes it: ``null``, ``true``, ``[0.9, 0.98]``."""
    import yaml

    return (
        yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _command_path(exc: Any) -> str:
    """``heedful VERB`` of the command a usage error is about. Some errors carry no context
    (``--out`` given no value); the root takes no option with a value, so the verb is then
    the first argument that is not an option."""
    if exc.ctx is not None:
        return exc.ctx.command_path
    verb = next((argument for argument in sys.argv[1:] if not argument.startswith("-")), None)
    return f"heedful {verb}" if verb in app_commands() else "heedful"


def app_commands() -> list[str]:
    return typer.main.get_command(app).list_commands(None)


def _error(line: str, rank_specific: bool = False) -> None:
    """``heedful: error: LINE`` on stderr, once per machine of a torchrun job: every process meets
    a bad config or flag alike, so the first process of each machine (local rank 0) says it —
    once in all on one machine, and an error that only another machine meets (its data path, its
    disk) is still said there. What befell one process only (out of memory, its peer gone) each
    process says itself. A rank other than 0 is named (``errors.say``, as warnings are)."""
    say("error", line, rank_specific)


def main() -> None:
    # Every mistake the user can fix is one line on stderr and exit code 2: our own UserErrors
    # propagate out of the command, and so do click's usage errors (unknown option, missing
    # argument), which typer's standalone mode would draw as a five-line box. Under torchrun
    # the other ranks exit with the same code, silently (``_error``).
    try:
        for argument in sys.argv[1:]:  # bytes the terminal's encoding could not decode (surrogates)
            try:
                argument.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{argument!a}: is not UTF-8 text (the terminal's encoding?)") from None
        # One name whatever started it (the script, ``python -m heedful``, torchrun): click would
        # otherwise print ``python -m heedful`` in usage lines.
        code = app(prog_name="heedful", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool):  # typer.Exit, --help, Ctrl-C (130)
            sys.exit(code)
    except click_errors.NoArgsIsHelpError:  # bare ``heedful``: typer printed the help already
        sys.exit(2)
    except click_errors.UsageError as exc:
        _error(f"{exc.format_message().rstrip('.')} (try '{_command_path(exc)} --help')")
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        typer.echo("heedful: aborted", err=True)
        sys.exit(1)
    except UserError as exc:
        if not getattr(exc, "already_said", False):  # another process of this torchrun job said it
            _error(str(exc), rank_specific=getattr(exc, "rank_specific", False))
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        with contextlib.suppress(OSError):  # stdout may be what is full: say it once, on stderr
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _error(f"{where}{exc.strerror} while writing the output", rank_specific=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as exc:
        said = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, MemoryError) and "allocate memory" not in said and "out of memory" not in said:
            raise
        _error(f"out of memory ({said}): try a smaller --beam or smaller batches", rank_specific=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # a package of an optional extra, imported where it is used
        from heedful.extras import EXTRAS, install_hint

        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        _error(f"this needs {top}: {install_hint(top)}")
        sys.exit(2)


if __name__ == "__main__":
    main()
