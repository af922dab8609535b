"""A heedful Transformer translator as a CTranslate2 model (``heedful export RUN --format
ctranslate2 --out DIR``), the inference engine OpenNMT and Marian models are deployed with.

The ``TransformerSpec`` is built from our config — pre-LN (or post-LN), ReLU/GELU, the number of
layers and heads — and filled with our weights as OpenNMT-py's converter fills its own: the
packed self-attention ``qkv_proj`` is CTranslate2's fused ``linear[0]``; cross-attention's q is
``linear[0]`` and k, v fused into ``linear[1]``; the sublayers' LayerNorms sit on the attention
and FFN specs; token embeddings are scaled by √D as ours are. Our sinusoidal table interleaves
sin and cos (CTranslate2's built-in one puts them in halves), so the table itself is stored. The
vocabulary is our tokenizer's pieces, in id order, with our specials (<bos>, <eos>, <unk>).

``Ct2Translator`` decodes with it: the run's tokenizer makes the pieces, CTranslate2 translates
them (float32 or int8, ``compute_type``), the tokenizer detokenizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from heedful.data.tokenizers import content_ids
from heedful.decode.batching import worker_count
from heedful.device import keeping_torch_threads
from heedful.extras import optional_import
from heedful.models.pretrained import WEIGHTS_NAME, read_model_config, recorded_sum, structural_steps
from heedful.optimize.common import (
    EXPORT_RECORD,
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
from heedful.train.rundir import record_written

if TYPE_CHECKING:
    from heedful.runs import Run

RECORD_NAME = EXPORT_RECORD
RUN_FILES = "heedful"  # the folder inside an export that holds the run's config.yaml and tokenizer files


def _np(tensor: torch.Tensor):
    return tensor.detach().float().cpu().contiguous().numpy()


def _linear(spec, linear: torch.nn.Linear) -> None:
    spec.weight = _np(linear.weight)
    if linear.bias is not None:
        spec.bias = _np(linear.bias)


def _norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


def _embeddings(spec, embed, cfg) -> None:
    tables = spec.embeddings if isinstance(spec.embeddings, list) else [spec.embeddings]  # encoder: one per input
    tables[0].weight = _np(embed.embedding.weight)
    spec.scale_embeddings = bool(cfg.embed_scale)
    spec.position_encodings.encodings = _np(embed.positions.table)  # (max_len, D), sin/cos interleaved


def transformer_spec(model: Any, alignment_layer: int = -1):
    """Our ``TransformerEncoderDecoder`` as a ``ctranslate2.specs.TransformerSpec``; the
    attention it returns is ``alignment_layer``'s cross-attention, mean over heads."""
    ct2 = optional_import("ctranslate2", "CTranslate2 conversion")
    from ctranslate2.specs import common_spec
    from ctranslate2.specs import transformer_spec as ts

    cfg = model.config
    unsupported = []
    if cfg.position != "sinusoidal":
        unsupported.append(f"position {cfg.position}")
    if cfg.attention_score != "scaled_dot":
        unsupported.append(f"score {cfg.attention_score}")
    if cfg.embed_norm or cfg.type_vocab_size:
        unsupported.append("BERT-style embeddings")
    heads = {m.n_heads for m in model.modules() if hasattr(m, "n_heads") and hasattr(m, "out_proj")}
    if len(heads) > 1 or (cfg.d_head and cfg.d_head * cfg.n_heads != cfg.d_model):
        unsupported.append("heads of their own width or pruned heads")
    if unsupported:
        raise OptimizeError(f"CTranslate2 conversion supports this Transformer but not: {', '.join(unsupported)}")
    activation = common_spec.Activation.GELU if cfg.activation == "gelu" else common_spec.Activation.RELU
    # The attention CTranslate2 returns (return_attention): the mean over all heads of one
    # decoder layer's cross-attention, the layer ours shows (decode.explain_layer).
    spec = ts.TransformerSpec.from_config(
        (cfg.n_encoder_layers, cfg.n_decoder_layers), cfg.n_heads, pre_norm=cfg.norm_first, activation=activation,
        alignment_layer=alignment_layer, alignment_heads=cfg.n_heads,
    )  # fmt: skip
    spec.config.layer_norm_epsilon = cfg.layer_norm_eps
    encoder, decoder = model.encoder, model.decoder
    _embeddings(spec.encoder, encoder.embed, cfg)
    _embeddings(spec.decoder, decoder.embed, cfg)
    if cfg.norm_first:
        _norm(spec.encoder.layer_norm, encoder.norm)
        _norm(spec.decoder.layer_norm, decoder.norm)
    for layer_spec, layer in zip(spec.encoder.layer, encoder.layers, strict=True):
        _linear(layer_spec.self_attention.linear[0], layer.self_attn.qkv_proj)  # (3·D, D): q, k, v rows
        _linear(layer_spec.self_attention.linear[1], layer.self_attn.out_proj)
        _norm(layer_spec.self_attention.layer_norm, layer.attn_sublayer.norm)
        _linear(layer_spec.ffn.linear_0, layer.ff.linear1)
        _linear(layer_spec.ffn.linear_1, layer.ff.linear2)
        _norm(layer_spec.ffn.layer_norm, layer.ff_sublayer.norm)
    for layer_spec, layer in zip(spec.decoder.layer, decoder.layers, strict=True):
        _linear(layer_spec.self_attention.linear[0], layer.self_attn.qkv_proj)
        _linear(layer_spec.self_attention.linear[1], layer.self_attn.out_proj)
        _norm(layer_spec.self_attention.layer_norm, layer.self_sublayer.norm)
        cross = layer.cross_attn
        _linear(layer_spec.attention.linear[0], cross.q_proj)
        fused = torch.nn.Linear(cross.kdim, 2 * cross.inner_dim, bias=cross.k_proj.bias is not None)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([cross.k_proj.weight, cross.v_proj.weight]))  # (2·D, D): k rows, v rows
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([cross.k_proj.bias, cross.v_proj.bias]))
        _linear(layer_spec.attention.linear[1], fused)
        _linear(layer_spec.attention.linear[2], cross.out_proj)
        _norm(layer_spec.attention.layer_norm, layer.cross_sublayer.norm)
        _linear(layer_spec.ffn.linear_0, layer.ff.linear1)
        _linear(layer_spec.ffn.linear_1, layer.ff.linear2)
        _norm(layer_spec.ffn.layer_norm, layer.ff_sublayer.norm)
    _linear(spec.decoder.projection, decoder.output)
    del ct2
    return spec


def _weights_stamp(run: Run) -> dict[str, Any]:
    """What says a conversion is of the run's current weights and attention layer (the cache test):
    the weights' sha256 that the model folder's config.json records (loading the run checked it
    against the file), or, for a folder written before sums were recorded, the file's size and
    modification time — which weights restored with their old times (``cp -p``, ``rsync -a``,
    ``tar``) of the same size would pass."""
    folder = run.run_dir / "model"
    layer = getattr(getattr(run.cfg, "decode", None), "explain_layer", -1)
    recorded = recorded_sum(read_model_config(folder))
    if recorded:
        return {"sha256": recorded, "alignment_layer": layer}
    stat = (folder / WEIGHTS_NAME).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "alignment_layer": layer}


# The weight types CTranslate2's converter stores (its `Converter.convert` documents these).
STORED_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")


def export_ctranslate2(
    run: Run, out: str | Path, quantization: str | None = None, overwrite: bool = False, *, _cache: bool = False
) -> Path:
    """Convert the run's Transformer translator into the CTranslate2 model folder ``out`` (new or
    empty; ``overwrite``: or an earlier export, replaced once this one is complete);
    ``quantization`` (e.g. "int8") is CTranslate2's own weight type at conversion time."""
    given_run(run, "export_ctranslate2")
    if quantization is not None and quantization not in STORED_TYPES:
        raise OptimizeError(f"{option('quantization', quantization)}: choose from {', '.join(STORED_TYPES)}")
    ct2 = optional_import("ctranslate2", "CTranslate2 conversion")
    from heedful.models import TransformerEncoderDecoder

    model = run.model
    if not isinstance(model, TransformerEncoderDecoder) or structural_steps(model):  # averaged weights convert
        raise OptimizeError(
            f"{run.run_dir}: CTranslate2 conversion takes a Transformer translator as trained: convert before "
            f"other optimizations, and quantize with CTranslate2's own {option('quantization')}"
        )
    spec = transformer_spec(model, getattr(getattr(run.cfg, "decode", None), "explain_layer", -1))
    src_tok, tgt_tok = run.task.src_tok, run.task.tgt_tok
    spec.register_source_vocabulary([src_tok.id_to_piece(i) for i in range(len(src_tok))])
    spec.register_target_vocabulary([tgt_tok.id_to_piece(i) for i in range(len(tgt_tok))])
    spec.config.bos_token = tgt_tok.id_to_piece(tgt_tok.bos_id)
    spec.config.eos_token = tgt_tok.id_to_piece(tgt_tok.eos_id)
    spec.config.unk_token = tgt_tok.id_to_piece(3)
    spec.config.decoder_start_token = spec.config.bos_token
    out = check_out_dir(Path(out), run.run_dir, overwrite, inside_run=_cache)  # the cache is the run's own

    class Converter(ct2.converters.Converter):
        def _load(self):
            return spec

    with staged(out) as tmp:
        Converter().convert(str(tmp), quantization=quantization, force=True)
        # The run's config and tokenizer (to make and undo the pieces), so the folder translates on
        # its own: open_ct2_export, `heedful translate DIR`.
        (tmp / RUN_FILES).mkdir()
        for path in (run.run_dir / "model").iterdir():
            if path.is_file() and path.name != "model.safetensors":
                shutil.copy2(path, tmp / RUN_FILES / path.name)
        write_config_named(run, tmp / RUN_FILES / "config.yaml", "ct2")
        record = {"source": str(run.run_dir), "format": "ctranslate2", "quantization": quantization,
                  "max_len": model.config.max_len, "weights": _weights_stamp(run)}  # fmt: skip
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return out


class Ct2Translator:
    """A converted model in CTranslate2, with the run's tokenizer around it."""

    def __init__(
        self,
        directory: str | Path,
        src_tok,
        tgt_tok,
        compute_type: str | None = None,
        threads: int = 1,
        workers: int = 1,
    ):
        ct2 = optional_import("ctranslate2", "CTranslate2 decoding")
        compute_type = compute_type or "default"  # default: the type the weights were stored in
        # workers > 1: that many batches at once, one thread each — as ours does with decode.workers.
        intra = threads if workers == 1 else 1
        weights = Path(directory) / "model.bin"
        if not weights.is_file():
            raise OptimizeError(f"{weights}: missing; the CTranslate2 model is incomplete (export the run again)")
        try:
            with keeping_torch_threads():
                self.translator = ct2.Translator(str(directory), device="cpu", compute_type=compute_type,
                                                 intra_threads=intra, inter_threads=workers)  # fmt: skip
        except (RuntimeError, ValueError, OSError) as exc:  # a truncated or foreign model.bin, a bad config.json
            # For an export folder and for translate --engine's conversion in the run alike (removed,
            # the latter is converted anew at the next call).
            raise OptimizeError(
                f"{directory}: CTranslate2 cannot load it ({runtime_reason(exc)}); remove it and export the run again"
            ) from None
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        self.tgt_ids = {tgt_tok.id_to_piece(i): i for i in range(len(tgt_tok))}

    def translate_scored(self, src_ids: list[list[int]], beam: int = 5, max_len: int = 200):
        """Each source's best output ids and its log-probability (no length penalty: CTranslate2's
        is length^α, not GNMT's, so compare with decode.alpha=0)."""
        pieces = [[self.src_tok.id_to_piece(i) for i in ids] for ids in src_ids]
        with keeping_torch_threads():
            results = self.translator.translate_batch(pieces, beam_size=beam, max_decoding_length=max_len,
                                                      length_penalty=0.0, return_scores=True)  # fmt: skip
        # As ours: cut at <eos>, specials dropped (content_ids), so the ids are those behind the text.
        eos = self.tgt_tok.eos_id
        return [(content_ids([self.tgt_ids[p] for p in r.hypotheses[0]], eos), r.scores[0]) for r in results]

    def translate_ids(self, src_ids: list[list[int]], beam: int = 5, max_len: int = 200) -> list[list[int]]:
        return [ids for ids, _ in self.translate_scored(src_ids, beam, max_len)]

    def translate(self, lines: list[str], beam: int = 5, max_len: int = 200) -> list[str]:
        ids = self.translate_ids([self.src_tok.encode(line) for line in lines], beam, max_len)
        return [self.tgt_tok.decode(row) for row in ids]


# ------------------------------------------------------------------------ translate --engine
ENGINE_QUANTIZATIONS = ("float32", "int8")
CACHE_NAME = "ctranslate2-{}"  # RUN/ctranslate2-float32, RUN/ctranslate2-int8: conversions kept for reuse


def cached_export(run: Run, quantization: str = "float32") -> Path:
    """The run's CTranslate2 conversion in ``RUN/ctranslate2-<quantization>``: reused when it was
    made from the run's current weights (and attention layer), else (re)made there. A run folder
    that cannot be written to gets its conversion in a temporary folder instead, made anew."""
    if quantization not in ENGINE_QUANTIZATIONS:
        raise OptimizeError(f"{option('quantization', quantization)}: choose from {', '.join(ENGINE_QUANTIZATIONS)}")
    folder = run.run_dir / CACHE_NAME.format(quantization)
    record = folder / RECORD_NAME
    fresh = record.is_file() and (folder / "model.bin").is_file()
    if fresh and json.loads(record.read_text()).get("weights") == _weights_stamp(run):
        return folder
    stored = None if quantization == "float32" else quantization
    try:
        shutil.rmtree(folder, ignore_errors=True)
        made = export_ctranslate2(run, folder, stored, _cache=True)
        record_written(run.run_dir, f"{folder}/")  # heedful's whole: `train --overwrite` removes it
        return made
    except PermissionError:
        import sys
        import tempfile

        where = Path(tempfile.mkdtemp(prefix="heedful-ct2-")) / "model"
        print(f"{run.run_dir}: not writable; converting into {where.parent} (not kept)", file=sys.stderr)
        return export_ctranslate2(run, where, stored)


class Ct2Engine(ExportedTranslator):
    """A run's translator decoded by CTranslate2 (``heedful translate RUN --engine ctranslate2``,
    ``ct2_engine(run)``, or a CTranslate2 export on its own): ``translate`` answers as
    ``run.translate`` does, with ``Translation``s, and ``predict`` as ``run.predict``.

    What matches ours: the tokenizer, the beam size (decode.beam_size), greedy decoding exactly
    (outputs, log-probabilities, attention). What differs:

    - the length penalty. Ours (decode.alpha) divides a finished hypothesis' log-probability by
      GNMT's ((5 + |y|) / 6)^α, |y| its tokens without <eos>; CTranslate2's ``length_penalty``
      divides it by (|y| + 1)^α, <eos> counted. The same α is passed, so with α = 0 (``--set
      decode.alpha=0``) or beam 1 the two searches rank alike; with α > 0 they can pick
      different hypotheses. ``.score`` is the raw log-probability either way.
    - which hypotheses end, and when a sentence stops. Both rank 2·beam candidates a step, but
      CTranslate2 lets only the ``beam`` best of them end (an <eos> ranked below is dropped),
      where ours keeps up to ``beam`` ended ones from all 2·beam. CTranslate2 stops a sentence
      once ``beam`` hypotheses have ended (ours: decode.early_stopping), and with no length
      penalty as soon as its best candidate ends (no live beam can beat it then); ours by
      default goes on while a live beam could still win. At α = 0 ours finds the more probable
      output more often — often a shorter or empty one, which BLEU punishes
      (benchmarks/search_errors.py; docs/RESULTS.md, "Search errors or model errors").
    - decode.min_len: CTranslate2's min_decoding_length removes <eos> before the softmax (the
      other tokens share its probability), ours after it (the model's own log-probabilities), so
      beam search may rank differently; greedy outputs are the same.
    - the output limit: CTranslate2 takes one per call, the longest of the batch's sentences'
      (decode.max_len, decode.max_len_ratio); a longer output is cut at its own limit afterwards,
      where ours ranks the cut hypothesis inside the search.
    - ``attention``: decode.explain_layer's cross-attention, mean over heads, as CTranslate2
      returns it for each output piece; ours adds a row for <eos>, CTranslate2 does not return
      one, so the last row is zeros.
    """

    runtime = "ctranslate2"

    def __init__(
        self, task: Any, cfg: Any, max_len: int, folder: Path, threads: int | None = None,
        workers: int | None = None, compute_type: str | None = None, files: Path | None = None,
    ) -> None:  # fmt: skip
        """``task`` with its tokenizers loaded, the run's ``cfg``, the model's positions ``max_len``
        (the output limits, as ours), the CTranslate2 model ``folder``; ``files``: where the
        tokenizer files ``task`` was loaded from (default ``FOLDER/heedful``)."""
        self.task, self.cfg, self.folder, self.max_len = task, cfg, folder, max_len
        self.files = files or folder / RUN_FILES
        self.decode_cfg = cfg.decode
        threads = threads or torch.get_num_threads()
        workers = worker_count(workers or cfg.decode.workers, torch.device("cpu"), threads)  # "auto": one per thread
        self.translator = Ct2Translator(folder, task.src_tok, task.tgt_tok, compute_type=compute_type,
                                        threads=threads, workers=workers)  # fmt: skip

    @classmethod
    def for_run(cls, run: Run, folder: Path, threads: int | None = None, workers: int | None = None) -> Ct2Engine:
        """``run``'s translator converted into ``folder``."""
        return cls(run.task, run.cfg, run.model.config.max_len, folder, threads, workers, files=run.run_dir / "model")

    def translate(
        self, lines: list[str], *, beam: int | None = None, batch_tokens: int | None = None,
        attention: bool = False, n_best: int = 1,
    ) -> list:  # fmt: skip
        from heedful.tasks.translate import Translation

        d, task, tgt = self.decode_cfg, self.task, self.task.tgt_tok
        beam = beam or d.beam_size
        if not 1 <= n_best <= beam:
            raise OptimizeError(f"n-best {n_best}: needs a beam of at least {n_best} (the beam is {beam})")
        texts = input_list(lines, "translate")
        src_ids = [task.src_tok.encode(t)[: self.max_len] if t.strip() else [] for t in texts]
        # A blank input is not decoded: an empty output and no score, as our own search answers it.
        out = [Translation(t, "", None, [], alternatives=[("", None)] if n_best > 1 else None) for t in texts]
        if attention:
            for t in out:
                t.source_pieces, t.output_pieces, t.attention = [], ["<eos>"], torch.zeros(1, 0)
        filled = [i for i, ids in enumerate(src_ids) if ids]
        limits = {i: task._output_limit(len(src_ids[i]), self.max_len) for i in filled}
        # CTranslate2 takes one output limit per call: the batch's longest; an output past its
        # own sentence's limit is cut there below (ours ends it at the limit inside the search).
        with keeping_torch_threads():
            results = self.translator.translator.translate_batch(
                [[task.src_tok.id_to_piece(j) for j in src_ids[i]] for i in filled],
                beam_size=beam, num_hypotheses=n_best, length_penalty=d.alpha,
                max_decoding_length=max(limits.values(), default=1), min_decoding_length=d.min_len,
                return_scores=True, return_attention=attention,
                max_batch_size=max(1, (batch_tokens or d.batch_tokens) // beam), batch_type="tokens",
            )  # fmt: skip
        for i, result in zip(filled, results, strict=True):
            ranked, limit = [], limits[i]
            for hyp, score in zip(result.hypotheses, result.scores, strict=True):
                ended = len(hyp) < max(limits.values())  # CTranslate2 leaves <eos> out; a cut one has none
                ids = content_ids([self.translator.tgt_ids[p] for p in hyp[:limit]], tgt.eos_id)
                ranked.append((ids, score * (len(hyp) + ended) ** d.alpha))  # undo its (|y|+1)^α
            (ids, score), alternatives = ranked[0], None
            if n_best > 1:
                alternatives = [(task._detokenize(other), s) for other, s in ranked]
            t = out[i] = Translation(texts[i], task._detokenize(ids), score, ids, alternatives=alternatives)
            if attention:
                rows = torch.tensor(result.attention[0], dtype=torch.float32).reshape(len(result.hypotheses[0]), -1)
                t.source_pieces = task.src_tok.pieces(texts[i])[: len(src_ids[i])]
                t.output_pieces = [*map(tgt.id_to_piece, ids), "<eos>"]
                t.attention = torch.cat([rows[: len(ids), : len(src_ids[i])], torch.zeros(1, len(src_ids[i]))])
        return out


# What ct2_engine is, in Python and on the command line (the CLI's translate --engine ctranslate2).
ENGINE = "CTranslate2 decoding (ct2_engine, --engine ctranslate2)"


def ct2_engine(run: Run, quantization: str = "float32", threads: int | None = None) -> Ct2Engine:
    """``run``'s Transformer translator decoded by CTranslate2 (its conversion cached in the run
    folder, see ``cached_export``): ``ct2_engine(run, "int8").translate(lines, beam=5)``."""
    from heedful.models import TransformerEncoderDecoder

    optional_import("ctranslate2", ENGINE)
    if not isinstance(run.model, TransformerEncoderDecoder):
        raise OptimizeError(f"{run.run_dir}: {ENGINE} takes a Transformer translator, not an RNN one")
    if structural_steps(run.model):
        steps = ", ".join(step["method"].replace("_", "-") for step in structural_steps(run.model))
        raise OptimizeError(
            f"{run.run_dir}: {ENGINE} takes a Transformer translator as trained, not one made by {steps}; "
            f"convert the run it came from, and quantize with CTranslate2's own {option('quantization')}"
        )
    return Ct2Engine.for_run(run, cached_export(run, quantization), threads)


def open_ct2_export(
    folder: str | Path, overrides: list[str] | None = None, compute_type: str | None = None, threads: int | None = None
) -> Ct2Engine:
    """A folder ``heedful export --format ctranslate2`` wrote, on its own: the run's config and
    tokenizer from ``FOLDER/heedful/``, CTranslate2 on the weights (``compute_type``: as stored, or
    float32 / int8 converted on loading). ``overrides`` change decoding, as for a run."""
    folder = Path(folder)
    record = read_export_record(folder)
    if record.get("format") != "ctranslate2":
        raise OptimizeError(f"{folder}: an export in {record.get('format')!r}, not a CTranslate2 one")
    files = folder / RUN_FILES
    if not (files / "config.yaml").is_file() or "max_len" not in record:
        raise OptimizeError(f"{folder}: exported before exports kept the run's files in {RUN_FILES}/; export again")
    if compute_type not in (None, *ENGINE_QUANTIZATIONS):
        choice = option("compute_type", compute_type, flag="--quantization")
        raise OptimizeError(f"{choice}: choose from {', '.join(ENGINE_QUANTIZATIONS)}")
    optional_import("ctranslate2", "CTranslate2 decoding")
    cfg, task = exported_task(files, overrides)
    return Ct2Engine(task, cfg, int(record["max_len"]), folder, threads, compute_type=compute_type)
