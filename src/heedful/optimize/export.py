"""Export to ONNX, run with onnxruntime (``heedful export RUN --format onnx --out DIR``).

What is exported depends on the model, not the task:

* a text classifier (``EncoderClassifier``): ``classifier.onnx``, tokens (B, S) int64 → logits
  (B, C);
* a Transformer encoder–decoder: ``encoder.onnx`` — src (B, S) int64 → its padding mask (B, S)
  bool and, for every decoder layer l, the cross-attention keys and values of the memory,
  ``cross_k_l``/``cross_v_l`` (B, H, S, D_h), computed once per sentence; and
  ``decoder_step.onnx`` — one decoding step with its cache as explicit inputs and outputs:
  token (B, 1) int64, offset (1,) int64 (tokens decoded so far), the padding mask, the cross
  keys/values and ``self_k_l``/``self_v_l`` (B, H, t, D_h) of the t earlier steps → logits
  (B, V) and the self-attention keys/values grown to t + 1.

``OnnxSeq2Seq`` drives the two sessions through heedful's decoding protocol (``encode``,
``new_cache``, ``decode``), so our greedy and beam search decode with onnxruntime unchanged.

The legacy TorchScript exporter is used (``dynamo=False``): the torch.export one needs
onnxscript, which the ``export`` extra would otherwise add for no gain on these models.
Decoder steps support what the step re-implements: the scaled dot-product score and input
positions (sinusoidal, learned, none); other attention positions are refused in one line.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heedful.extras import optional_import
from heedful.optimize.common import (
    EXPORT_RECORD,
    ExportedModel,
    ExportedTranslator,
    OptimizeError,
    check_out_dir,
    exported_task,
    given_run,
    option,
    read_export_record,
    runtime_reason,
    staged,
    write_config_named,
)
from heedful.tasks.base import input_list

if TYPE_CHECKING:
    from heedful.runs import Run

OPSET = 17
RECORD_NAME = EXPORT_RECORD


def _split(x: Tensor, n_heads: int, d_head: int) -> Tensor:
    B, T, _ = x.shape
    return x.view(B, T, n_heads, d_head).transpose(1, 2)  # (B, T, H·D_h) -> (B, H, T, D_h)


def _merge(x: Tensor) -> Tensor:
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, H, T, D_h) -> (B, T, H·D_h)


class EncoderExport(nn.Module):
    """src (B, S) -> padding (B, S) and every decoder layer's cross keys and values (B, H, S, D_h)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> tuple[Tensor, ...]:
        memory, padding = self.model.encode(src)  # (B, S, D), (B, S)
        out = [padding]
        for layer in self.model.decoder.layers:
            a = layer.cross_attn
            out += [_split(a.k_proj(memory), a.n_heads, a.d_head), _split(a.v_proj(memory), a.n_heads, a.d_head)]
        return tuple(out)


class DecoderStepExport(nn.Module):
    """One step of the decoder with its cache as tensors (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, token: Tensor, offset: Tensor, padding: Tensor, *caches: Tensor) -> tuple[Tensor, ...]:
        decoder = self.model.decoder
        embed = decoder.embed
        y = embed.embedding(token) * embed.scale  # (B, 1, D)
        positions = embed.positions
        if positions is not None and hasattr(positions, "table"):  # sinusoidal
            y = y + positions.table.index_select(0, offset)[None].to(y.dtype)
        elif positions is not None:  # learned
            y = y + positions.embedding(offset)[None].to(y.dtype)
        y = embed.norm(y)
        grown: list[Tensor] = []
        key_mask = padding[:, None, None, :]  # (B, 1, 1, S), True = may attend
        for i, layer in enumerate(decoder.layers):
            self_k, self_v, cross_k, cross_v = caches[4 * i : 4 * i + 4]

            def self_attention(h: Tensor, a=layer.self_attn, past_k=self_k, past_v=self_v) -> Tensor:
                q, k, v = (_split(x, a.n_heads, a.d_head) for x in a.qkv_proj(h).chunk(3, dim=-1))
                k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H, t + 1, D_h)
                grown.extend([k, v])
                return a.out_proj(_merge(F.scaled_dot_product_attention(q, k, v)))  # the new token sees all

            def cross_attention(h: Tensor, a=layer.cross_attn, k=cross_k, v=cross_v) -> Tensor:
                q = _split(a.q_proj(h), a.n_heads, a.d_head)
                return a.out_proj(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)))

            y = layer.self_sublayer(y, self_attention)
            y = layer.cross_sublayer(y, cross_attention)
            y = layer.ff_sublayer(y, layer.ff)
        logits = decoder.output(decoder.norm(y))[:, -1]  # (B, V)
        return (logits, *grown)


def _check_seq2seq(model: nn.Module) -> None:
    cfg = model.config
    if getattr(cfg, "arch", None) != "transformer":
        raise OptimizeError(f"ONNX export of a {getattr(cfg, 'arch', type(model).__name__)} encoder–decoder "
                            "is not supported (Transformer only)")  # fmt: skip
    if cfg.attention_score != "scaled_dot" or cfg.position not in ("sinusoidal", "learned", "none"):
        raise OptimizeError(
            f"ONNX export supports the scaled_dot score with sinusoidal, learned or no input positions; this model "
            f"has {cfg.attention_score} and {cfg.position}"
        )


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    # The exporter restores the wrapper's training flag afterwards, recursively: a fresh wrapper
    # (training=True) would leave the run's model with dropout on.
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)  # fmt: skip


def export_onnx(run: Run, out: str | Path, overwrite: bool = False) -> Path:
    """Write the run's model as ONNX into ``out`` (new or empty; ``overwrite``: or an earlier
    export, replaced once this one is complete), with the vocabulary files and ``export.json``
    (what each file takes and gives). Float32, on the CPU."""
    given_run(run, "export_onnx")
    optional_import("onnx", "ONNX export")
    from heedful.models import EncoderClassifier, TransformerEncoderDecoder

    model = run.model
    if getattr(model, "optimized", []) and any(s.get("method") == "int8" for s in model.optimized):
        raise OptimizeError(f"{run.run_dir}: its model is int8; export the float model (onnxruntime quantizes its own)")
    if not isinstance(model, EncoderClassifier | TransformerEncoderDecoder):
        raise OptimizeError(f"{run.run_dir}: ONNX export takes text classifiers and Transformer translators, "
                            f"not a {type(model).__name__}")  # fmt: skip
    if isinstance(model, TransformerEncoderDecoder):
        _check_seq2seq(model)
    out = check_out_dir(Path(out), run.run_dir, overwrite)
    model = model.cpu().eval()
    with staged(out) as tmp:
        pad = model.config.pad_id
        tokens = torch.full((2, 7), 5, dtype=torch.long)
        tokens[1, 5:] = pad
        if isinstance(model, EncoderClassifier):
            if model.config.encoder_type != "transformer":
                raise OptimizeError(f"{run.run_dir}: ONNX export of a {model.config.encoder_type} classifier is not "
                                    "supported (packed sequences); Transformer encoders only")  # fmt: skip
            _export(model, (tokens,), tmp / "classifier.onnx", ["tokens"], ["logits"],
                    {"tokens": {0: "batch", 1: "length"}, "logits": {0: "batch"}})  # fmt: skip
            record: dict[str, Any] = {"kind": "classifier", "files": {"classifier.onnx": {
                "inputs": {"tokens": "(B, S) int64"}, "outputs": {"logits": "(B, C) float32"}}}}  # fmt: skip
        else:
            n_layers = len(model.decoder.layers)
            cross = [f"cross_{kv}_{i}" for i in range(n_layers) for kv in "kv"]
            self_in = [f"self_{kv}_{i}" for i in range(n_layers) for kv in "kv"]
            self_out = [f"new_self_{kv}_{i}" for i in range(n_layers) for kv in "kv"]
            axes = {"src": {0: "batch", 1: "source"}, "padding": {0: "batch", 1: "source"}}
            axes |= {name: {0: "batch", 2: "source"} for name in cross}
            _export(EncoderExport(model), (tokens,), tmp / "encoder.onnx", ["src"], ["padding", *cross], axes)
            encoded = EncoderExport(model)(tokens)
            # Each layer's own head count: a pruned model's layers differ (self_in is layer-major, k then v).
            past = [
                torch.zeros(2, layer.self_attn.n_heads, 3, layer.self_attn.d_head)
                for layer in model.decoder.layers
                for _ in "kv"
            ]
            step_caches = [
                t for i in range(n_layers) for t in (*past[2 * i : 2 * i + 2], *encoded[1 + 2 * i : 3 + 2 * i])
            ]
            names = [
                n for i in range(n_layers) for n in (self_in[2 * i], self_in[2 * i + 1], cross[2 * i], cross[2 * i + 1])
            ]
            step_axes = {"token": {0: "batch"}, "padding": {0: "batch", 1: "source"}, "logits": {0: "batch"}}
            step_axes |= {n: {0: "batch", 2: "source"} for n in cross}
            step_axes |= {n: {0: "batch", 2: "past"} for n in self_in} | {n: {0: "batch", 2: "now"} for n in self_out}
            args = (torch.full((2, 1), 1, dtype=torch.long), torch.tensor([3]), encoded[0], *step_caches)
            _export(DecoderStepExport(model), args, tmp / "decoder_step.onnx", ["token", "offset", "padding", *names],
                    ["logits", *self_out], step_axes)  # fmt: skip
            heads = [(layer.self_attn.n_heads, layer.self_attn.d_head) for layer in model.decoder.layers]
            files = {  # what each graph takes and gives, by name (docs/OPTIMIZE.md)
                "encoder.onnx": {"inputs": ["src"], "outputs": ["padding", *cross]},
                "decoder_step.onnx": {
                    "inputs": ["token", "offset", "padding", *names],
                    "outputs": ["logits", *self_out],
                },
            }
            record = {"kind": "seq2seq", "layers": n_layers, "self_heads": heads, "pad_id": pad,
                      "max_len": model.config.max_len, "files": files}  # fmt: skip
        for path in (run.run_dir / "model").iterdir():  # the vocabulary, to tokenize as the run does
            if path.is_file() and path.name != "model.safetensors":
                shutil.copy2(path, tmp / path.name)
        write_config_named(run, tmp / "config.yaml", "onnx")
        (tmp / RECORD_NAME).write_text(
            json.dumps({"source": str(run.run_dir), "format": "onnx", "opset": OPSET, **record}, indent=2) + "\n"
        )
    return out


def _session(path: Path, threads: int):
    """An onnxruntime session of the graph at ``path``; a missing or unreadable file is one line."""
    ort = optional_import("onnxruntime", "running an ONNX export")
    if not path.is_file():
        raise OptimizeError(f"{path}: missing; the export is incomplete (export the run again)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own kinds (InvalidProtobuf, Fail, …) share no base but Exception
        reason = runtime_reason(exc)
        raise OptimizeError(f"{path}: onnxruntime cannot load it ({reason}); export the run again") from None


class _OnnxGraphs:
    """What the tasks and the searches ask of a model besides its forward: its device (through its
    first parameter; the sessions take CPU tensors) and eval mode (an exported model is always in it)."""

    def parameters(self) -> Iterator[Tensor]:
        yield torch.empty(0)

    def eval(self) -> _OnnxGraphs:
        return self


class OnnxClassifier(_OnnxGraphs):
    """``classifier.onnx`` in onnxruntime: ``logits(tokens)`` as the model's forward, so the
    classify task's ``predict`` and ``evaluate`` take it in the model's place."""

    def __init__(self, directory: str | Path, threads: int = 1):
        self.session = _session(Path(directory) / "classifier.onnx", threads)

    def __call__(self, tokens: Tensor) -> Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"tokens": tokens.numpy()})[0])


class OnnxCache:
    """The decoder step's self-attention keys/values, per layer (B, H, t, D_h), and the offset."""

    def __init__(self, n_layers: int, heads: list[tuple[int, int]]):
        self.tensors: list[Tensor] | None = None
        self.heads, self.n_layers, self.offset = heads, n_layers, 0

    def reorder(self, index: Tensor, sources_unchanged: bool = False) -> None:
        if self.tensors is not None:
            self.tensors = [t[index] for t in self.tensors]


class OnnxSeq2Seq(_OnnxGraphs):
    """The exported encoder and decoder step in onnxruntime, speaking heedful's decoding protocol
    (``beam_search(OnnxSeq2Seq(dir), src, …)``). The memory the searches carry is every layer's
    cross keys/values side by side, (B, S, L·2·H·D_h), so that their row selection moves them."""

    def __init__(self, directory: str | Path, threads: int = 1):
        self.directory = directory = Path(directory)
        record = json.loads((directory / RECORD_NAME).read_text())
        self.encoder = _session(directory / "encoder.onnx", threads)
        self.step = _session(directory / "decoder_step.onnx", threads)
        self.n_layers, self.heads = record["layers"], [tuple(h) for h in record["self_heads"]]
        self._shapes: list[tuple[int, int]] = []

        class Config:  # what the searches read
            pad_id = record["pad_id"]
            max_len = record["max_len"]

        self.config = Config()

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        padding, *cross = self.encoder.run(None, {"src": src.numpy()})
        cross_t = [torch.from_numpy(c) for c in cross]  # (B, H, S, D_h) each
        self._shapes = [(c.shape[1], c.shape[3]) for c in cross_t]
        memory = torch.cat([_merge(c) for c in cross_t], dim=-1)  # (B, S, Σ H·D_h)
        return memory, torch.from_numpy(padding)

    def new_cache(self) -> OnnxCache:
        return OnnxCache(self.n_layers, self.heads)

    def decode(self, tokens: Tensor, memory: Tensor, padding: Tensor, cache: OnnxCache) -> Tensor:
        """tokens (B, 1) -> logits (B, 1, V); the cache grows by one step."""
        if tokens.shape[1] != 1:
            raise ValueError("the exported decoder step takes one token at a time")
        B = tokens.shape[0]
        widths = [h * d for h, d in self._shapes]
        cross = [_split(part, h, d) for part, (h, d) in zip(memory.split(widths, dim=-1), self._shapes, strict=True)]
        if cache.tensors is None:
            cache.tensors = [torch.zeros(B, h, 0, d) for h, d in self.heads for _ in "kv"]
        feeds: dict[str, Any] = {"token": tokens.numpy(), "offset": torch.tensor([cache.offset]).numpy(),
                                 "padding": padding.numpy()}  # fmt: skip
        for i in range(self.n_layers):  # the memory holds k_0, v_0, k_1, v_1, …
            feeds[f"self_k_{i}"], feeds[f"self_v_{i}"] = cache.tensors[2 * i].numpy(), cache.tensors[2 * i + 1].numpy()
            feeds[f"cross_k_{i}"] = cross[2 * i].contiguous().numpy()
            feeds[f"cross_v_{i}"] = cross[2 * i + 1].contiguous().numpy()
        wanted = {i.name for i in self.step.get_inputs()}  # the exporter drops inputs a model never reads
        logits, *grown = self.step.run(None, {k: v for k, v in feeds.items() if k in wanted})
        cache.tensors = [torch.from_numpy(t) for t in grown]
        cache.offset += 1
        return torch.from_numpy(logits)[:, None]


class _OnnxExport(ExportedModel):
    """An ONNX export on its own: the run's config and tokenizer from the folder, its graphs
    (``graphs``: ``OnnxClassifier`` or ``OnnxSeq2Seq``) in the model's place."""

    runtime = "onnxruntime"
    graphs: type[_OnnxGraphs]

    def __init__(self, folder: Path, overrides: list[str] | None = None, threads: int | None = None):
        self.folder = self.files = folder
        self.cfg, self.task = exported_task(folder, overrides)
        self.model = self.graphs(folder, threads or torch.get_num_threads())


class OnnxTextClassifier(_OnnxExport):
    """An ONNX export of a text classifier, on its own (``heedful predict DIR``, ``heedful serve
    DIR``): ``OnnxClassifier`` in the model's place; ``predict`` as ``run.predict`` (long texts in
    windows, as the run reads them)."""

    graphs = OnnxClassifier

    def predict(self, inputs: list[Any]) -> list[Any]:
        return self.task.predict(self.model, input_list(inputs, "predict"))

    def _scored(self, split: str) -> Any:
        return self.task.evaluate(self.model, split)  # the graph stands in for the model: every metric


class OnnxTranslator(_OnnxExport, ExportedTranslator):
    """An ONNX export of a translator, on its own (``heedful translate DIR``, ``heedful predict
    DIR``, ``heedful serve DIR``): our search over ``OnnxSeq2Seq``; ``translate`` as
    ``run.translate``."""

    graphs = OnnxSeq2Seq
    returns_attention = False  # the exported decoder step gives logits and the cache only

    def translate(
        self, lines: list[str], *, beam: int | None = None, batch_tokens: int | None = None,
        attention: bool = False, n_best: int = 1,
    ) -> list:  # fmt: skip
        if attention:
            raise OptimizeError(f"{self.folder}: the ONNX decoder step returns no attention; translate the run for it")
        return self.task.translate(self.model, lines, beam=beam, batch_tokens=batch_tokens, n_best=n_best)


def open_export(
    folder: str | Path, overrides: list[str] | None = None, quantization: str | None = None, device: str = "cpu"
) -> Any:
    """An export folder, ready to predict on its own (an ``ExportedModel``: ``.predict(inputs)``
    as ``run.predict``, ``.cfg`` the run's config with ``overrides``, ``.runtime`` what computes).
    A translator's — CTranslate2 (``heedful.optimize.ct2.open_ct2_export``; ``quantization``: the
    type it computes in) or ONNX (``OnnxTranslator``) — also translates: ``.translate(lines,
    beam=5)`` gives ``Translation``s. A classifier's ONNX export is an ``OnnxTextClassifier``.
    ``device``: what a caller asked for (``--device``); an export computes on the CPU only."""
    from heedful.optimize.ct2 import ENGINE_QUANTIZATIONS, open_ct2_export

    folder = Path(folder)
    if device not in ("auto", "cpu"):
        raise OptimizeError(
            f"{option('device', device)}: an export computes on the CPU (onnxruntime or CTranslate2), "
            f"and {folder} is one"
        )
    record = read_export_record(folder)
    if record.get("format") == "ctranslate2":
        if quantization not in (None, *ENGINE_QUANTIZATIONS):  # said here, where it is called quantization
            raise OptimizeError(
                f"{option('quantization', quantization)}: choose from {', '.join(ENGINE_QUANTIZATIONS)}"
            )
        return open_ct2_export(folder, overrides, quantization)
    if record.get("kind") not in ("seq2seq", "classifier"):
        raise OptimizeError(f"{folder}: an export of a {record.get('kind', 'model')}, which heedful cannot open")
    if quantization is not None:
        raise OptimizeError(f"{option('quantization')} is for CTranslate2 exports (an ONNX export computes in float32)")
    optional_import("onnxruntime", "running an ONNX export")
    if record["kind"] == "classifier":
        return OnnxTextClassifier(folder, overrides)
    return OnnxTranslator(folder, overrides)
