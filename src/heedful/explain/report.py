"""``heedful report RUN``: one self-contained HTML page about a run.

It holds the config, the training curves, the metrics of every evaluated split beside their
baselines, sample predictions with their attention map, (for encoder–decoder Transformers) the
encoder's attention rollout and (for Transformers) the decision path — the logit lens — and
the faithfulness table when one was measured
(``faithfulness.json`` in the run directory, see ``benchmarks/faithfulness_reviews.py``).
Nothing is fetched: images are PNGs inlined as ``data:`` URIs, the style sheet is inline, there
is no script — the file can be mailed, archived or opened offline.

The run is anything with ``run_dir``, ``cfg``, ``task`` and ``model`` (``heedful.runs.Run``);
this module is below ``runs`` and imports none of it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

import torch

from heedful.errors import UserError
from heedful.explain.capture import capture
from heedful.explain.plots import plot_history
from heedful.explain.rollout import attention_rollout, classifier_logit_lens, decoder_logit_lens
from heedful.outputs import write_whole

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; } caption { text-align: left; font-weight: 600; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 13px; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #555; } img { max-width: 100%; }
.note { color: #555; font-style: italic; }
"""


def write_report(run: Any, path: Path | None = None, inputs: list[Any] | None = None, samples: int = 3) -> Path:
    """Write the report of ``run`` to ``path`` (default ``run_dir/report.html``). ``inputs``: the
    sample predictions to show (default: up to ``samples`` of the task's test inputs where the
    run's data is already loaded, e.g. after ``run.evaluate()`` — a report reads no dataset — and
    where the task lists them; else none)."""
    run_dir = Path(run.run_dir)
    path = Path(path) if path is not None else run_dir / "report.html"
    sections = [
        _config(run_dir),
        _curves(run_dir, run.cfg.train.monitor),
        _metrics(run_dir, run.task),
        _samples(run, _sample_inputs(run, inputs, samples)),
        _faithfulness(run_dir),
    ]
    title = f"heedful report: {run_dir.name} ({run.cfg.task})"
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    return write_whole(path, "--out", page)


# ------------------------------------------------------------------------------ pieces
def png_data_uri(figure_or_path: Any) -> str:
    """A matplotlib figure (closed afterwards) or a PNG file as a ``data:image/png;base64,…`` URI."""
    if isinstance(figure_or_path, str | Path):
        data = Path(figure_or_path).read_bytes()
    else:
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        figure_or_path.savefig(buffer, format="png", dpi=100)
        plt.close(figure_or_path)
        data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(uri: str, caption: str) -> str:
    alt = html.escape(caption, quote=True)
    return f'<figure><img src="{uri}" alt="{alt}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _table(caption: str, header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def _config(run_dir: Path) -> str:
    text = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    return f'<h2 id="config">Config</h2><pre>{html.escape(text) or "(no config.yaml)"}</pre>'


def _read_json(file: Path) -> dict[str, Any]:
    """A record a command wrote into the run (history, eval, faithfulness); a damaged one is one line."""
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{file} line {exc.lineno}: not valid JSON ({exc.msg}); remove it or write it again") from None
    except UnicodeDecodeError:
        raise UserError(f"{file}: not UTF-8 text; remove it or write it again") from None
    if not isinstance(record, dict):
        raise UserError(f"{file}: not a JSON record heedful wrote (a {type(record).__name__}, not an object)")
    return record


def model_step(run_dir: Path) -> int | None:
    """The step of the weights in ``run_dir/model`` (its best epoch's, from history.json), or None
    (a run without one: optimized, or from elsewhere). ``Run.evaluate`` records it beside a score."""
    try:
        history = json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
        return int(history["epochs"][history["best_epoch"] - 1]["step"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _curves(run_dir: Path, monitor: str | None = None) -> str:
    history = run_dir / "history.json"
    if not history.is_file():
        return (
            '<h2 id="curves">Training curves</h2><p class="note">no history.json: the run has not finished an epoch</p>'
        )
    epochs = _epochs(history, _read_json(history).get("epochs", []))
    # One value per epoch for every metric (NaN where an epoch lacks it), so the curves line up.
    keys = dict.fromkeys(key for r in epochs for key in r)
    curves = {key: [r.get(key, float("nan")) for r in epochs] for key in keys}
    out = ['<h2 id="curves">Training curves</h2>']
    with tempfile.TemporaryDirectory(prefix="heedful-report-") as scratch:  # not the run: it may be read-only
        png = Path(scratch) / "history.png"
        plot_history(curves, png, monitor)
        if png.is_file():
            out.append(
                _figure(
                    png_data_uri(png),
                    f"per epoch, train and validation{f' ({monitor} judges the run)' if monitor else ''}",
                )
            )
    # Every figure an epoch recorded but time: the loss, then what validation measured (val_bleu, val_fid, …).
    shown = [k for k in curves if k.startswith("train_loss")] + [k for k in curves if k.startswith("val_")]
    rows = [[r.get("epoch"), *(r.get(k, float("nan")) for k in shown)] for r in epochs]
    out.append(_table("per epoch", ["epoch", *(k.replace("_", " ", 1) for k in shown)], rows))
    return "".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _a(value: Any) -> str:
    """``a list``, ``an int``, ``null``: what a hand-edited record holds instead."""
    if value is None:
        return "null"
    name = {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _epochs(file: Path, epochs: Any) -> list[dict[str, Any]]:
    """history.json's ``epochs``: one record of numbers per epoch; anything else one line."""
    again = "remove it or write it again"
    if not isinstance(epochs, list):
        raise UserError(f'{file}: "epochs" is {_a(epochs)}, not a list of per-epoch records; {again}')
    for i, record in enumerate(epochs, 1):
        if not isinstance(record, dict):
            raise UserError(f"{file}: epoch {i} is {_a(record)}, not a record of its metrics; {again}")
        for key, value in record.items():
            if not _is_number(value):
                raise UserError(f'{file}: epoch {i}: "{key}" is {_a(value)}, not a number; {again}')
    return epochs


def _baselines(file: Path, baselines: Any) -> dict[str, dict[str, Any]]:
    """An eval record's ``baselines``: each baseline's metrics by name; anything else one line."""
    again = "remove it or write it again"
    if not isinstance(baselines, dict):
        raise UserError(f'{file}: "baselines" is {_a(baselines)}, not the metrics of each baseline by name; {again}')
    for name, metrics in baselines.items():
        if not isinstance(metrics, dict):
            raise UserError(f'{file}: baseline "{name}" is {_a(metrics)}, not a record of its metrics; {again}')
        for key, value in metrics.items():
            if not _is_number(value) and value is not None:  # null: a metric undefined there (NaN when measured)
                raise UserError(f'{file}: baseline "{name}": "{key}" is {_a(value)}, not a number; {again}')
    return baselines


def _metrics(run_dir: Path, task: Any) -> str:
    out = ['<h2 id="metrics">Metrics</h2>']
    files = sorted(run_dir.glob("eval-*.json"))
    if not files:  # a command to copy: quoted for the shell (`runs/exp #2` is two words and a comment)
        command = html.escape(f"heedful evaluate {shlex.quote(str(run_dir))}")
        out.append(f'<p class="note">no split evaluated yet: <code>{command}</code></p>')
    for file in files:
        record = _read_json(file)
        split = file.stem.removeprefix("eval-")
        baselines = _baselines(file, record.pop("baselines", {}) or {})
        metrics = {k: v for k, v in record.items() if _is_number(v)}
        keys = list(metrics)
        members = record.get("members")  # `heedful evaluate RUN --ensemble …` names its runs
        scored = record.get("model", {}).get("step") if isinstance(record.get("model"), dict) else None
        now = model_step(run_dir)
        ours = "the ensemble" if isinstance(members, list) else "this model"
        rows = [[ours, *(float(metrics[k]) for k in keys)]]
        rows += [[name, *(float(b[k]) if b.get(k) is not None else "" for k in keys)] for name, b in baselines.items()]
        caption = split + (f" (the ensemble of {', '.join(map(str, members))})" if isinstance(members, list) else "")
        caption += " (beside baselines fit on the same training data)" if baselines else ""
        if scored is not None and now is not None and scored != now:  # a resumed run saved a newer best model
            caption += f" — scored on the model of step {scored}; the run's model is now step {now}: evaluate again"
        out.append(_table(caption, ["", *keys], rows))
    return "".join(out)


def _sample_inputs(run: Any, inputs: list[Any] | None, samples: int) -> list[Any]:
    if inputs:
        return list(inputs)
    if getattr(run.task, "data", None) is None:  # data not loaded (a run opened to predict): no samples
        return []
    try:
        return list(run.task.split_inputs("test"))[:samples]
    except UserError:  # a task that cannot list its test inputs (translate gives pairs): none
        return []


def _samples(run: Any, inputs: list[Any]) -> str:
    out = ['<h2 id="samples">Sample predictions</h2>']
    if not inputs:
        out.append('<p class="note">no sample inputs (give some: <code>heedful report RUN --input TEXT</code>)</p>')
        return "".join(out)
    from heedful.explain.plots import attention_heatmap

    with tempfile.TemporaryDirectory(prefix="heedful-report-") as scratch:  # not the run: it may be read-only
        tmp = Path(scratch) / "figure.png"
        for i, explanation in enumerate(run.task.explain(run.model, inputs)):
            p = explanation.prediction
            out.append(f"<h3>{i + 1}. {html.escape(str(p.input))} → {html.escape(str(p.output))}</h3>")
            run.task.plot_explanation(explanation, tmp)
            out.append(_figure(png_data_uri(tmp), explanation.title or "attention"))
            rollout = encoder_rollout(run, explanation.key_tokens, inputs[i])
            if rollout is not None:
                attention_heatmap(rollout, explanation.key_tokens, explanation.key_tokens, tmp,
                                  title="encoder attention rollout (Abnar & Zuidema 2020)",
                                  labels=("input position", "position at the encoder's top"))  # fmt: skip
                out.append(_figure(png_data_uri(tmp), "encoder attention rollout: row = position at the top, "
                                                      "column = the input position that flows into it"))  # fmt: skip
            path = decision_path(run, explanation, inputs[i])
            if path is not None:
                weights, rows, columns, caption = path
                axis = "token finally chosen" if "decoder" in caption else "class"
                attention_heatmap(
                    weights, rows, columns, tmp, title="decision path: the logit lens", labels=(axis, "layer")
                )
                out.append(_figure(png_data_uri(tmp), caption))
    return "".join(out)


def decision_path(run: Any, explanation: Any, text: Any) -> tuple[torch.Tensor, list[str], list[str], str] | None:
    """The logit lens of one prediction as a (layers, outputs) map, its labels and a caption: for
    an encoder–decoder Transformer, the probability each decoder layer's read-out gives the
    token finally output at each step; for a Transformer-encoder classifier, each layer's class
    probabilities. None for other models."""
    model, task = run.model, run.task
    device = next(model.parameters()).device
    prediction = explanation.prediction
    output_ids = getattr(prediction, "output_ids", None)
    tokenizer = getattr(task, "src_tok", None)
    if output_ids is not None and tokenizer is not None and hasattr(getattr(model, "decoder", None), "norm"):
        src = torch.tensor([tokenizer.encode(text)[: model.config.max_len]], device=device)
        bos, eos = task.tgt_tok.bos_id, task.tgt_tok.eos_id
        tgt_in = torch.tensor([[bos, *output_ids]], device=device)  # (1, T + 1)
        chosen = torch.tensor([*output_ids, eos], device=device)  # what each step finally output
        lens = decoder_logit_lens(model, src, tgt_in)  # per layer (1, T + 1, V)
        probs = torch.stack([layer[0].float().softmax(-1)[torch.arange(len(chosen)), chosen] for layer in lens])
        rows = [f"layer {i}" for i in range(len(lens))]
        return (
            probs.cpu(),
            rows,
            explanation.query_tokens,
            "decision path: per decoder layer, the probability its "
            "read-out (final norm and output projection) gives the token finally chosen at each step",
        )
    encode, config = getattr(task, "encode", None), getattr(model, "config", None)
    if encode is not None and getattr(config, "encoder_type", None) == "transformer" and hasattr(model, "head"):
        tokens = torch.tensor([encode(text)], device=device)
        lens = classifier_logit_lens(model, tokens)  # per layer (1, C)
        probs = torch.stack([layer[0].float().softmax(-1) for layer in lens])  # (L, C)
        classes = list(prediction.probabilities or {}) or [str(c) for c in range(probs.shape[1])]
        rows = [f"layer {i}" for i in range(len(lens))]
        return (
            probs.cpu(),
            rows,
            classes,
            "decision path: per encoder layer, the class probabilities its states "
            "give through the final norm, the pooling and the head",
        )
    return None


def encoder_rollout(run: Any, key_tokens: list[str], text: Any) -> torch.Tensor | None:
    """The rollout (S, S) of an encoder–decoder Transformer's encoder self-attention over one
    source text; None for models without one (or a tokenization that does not match the labels)."""
    model, tokenizer = run.model, getattr(run.task, "src_tok", None)
    if tokenizer is None or not hasattr(model, "encode") or not isinstance(text, str):
        return None
    ids = tokenizer.encode(text)[: model.config.max_len]
    if len(ids) != len(key_tokens):
        return None
    device = next(model.parameters()).device
    with torch.no_grad(), capture(model) as seen:
        model.encode(torch.tensor([ids], device=device))
    pattern = re.compile(r"encoder\.layers\.(\d+)\.self_attn")
    names = sorted((n for n in seen if pattern.fullmatch(n)), key=lambda n: int(pattern.fullmatch(n)[1]))
    if not names:
        return None
    return attention_rollout([seen[n][0] for n in names])  # (S, S)


def _faithfulness(run_dir: Path) -> str:
    out = ['<h2 id="faithfulness">Faithfulness</h2>']
    file = run_dir / "faithfulness.json"
    if not file.is_file():
        out.append('<p class="note">not measured for this run (no faithfulness.json)</p>')
        return "".join(out)
    table = _read_json(file)
    rows = [[name, v.get("comprehensiveness", ""), v.get("comprehensiveness_sd", ""), v.get("sufficiency", ""),
             v.get("comp_vs_random", "")] for name, v in table.get("methods", table).items()]  # fmt: skip
    out.append(_table("ERASER AOPC over the top 1/5/10/20/50 % of units (random: mean and sd over draws)",
                      ["method", "comprehensiveness", "sd", "sufficiency", "× random"], rows))  # fmt: skip
    return "".join(out)
