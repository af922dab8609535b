import pickle
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from heedful.errors import CheckpointError
from heedful.explain import capture
from heedful.models import (
    TransformerConfig,
    TransformerEncoderDecoder,
    TransformerEncoderModel,
    load_pretrained,
)
from heedful.models.pretrained import CONFIG_NAME, WEIGHTS_NAME

POSITIONS = ["sinusoidal", "learned", "rope", "alibi", "relative", "none"]


def small_config(**kw) -> TransformerConfig:
    base = dict(
        src_vocab_size=40,
        tgt_vocab_size=30,
        d_model=32,
        n_heads=4,
        n_encoder_layers=2,
        n_decoder_layers=2,
        d_ff=64,
        dropout=0.0,
        max_len=64,
    )
    base.update(kw)
    return TransformerConfig(**base)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 40, (3, 9), generator=g)
    src[1, 6:] = 0  # padded
    src[2, 4:] = 0
    tgt = torch.randint(4, 30, (3, 7), generator=g)
    return src, tgt


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_decoding_matches_full_decoding(position, norm_first):
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(small_config(position=position, norm_first=norm_first)).eval()
    src, tgt = batch()
    full = model(src, tgt)  # (B, T, V)
    memory, padding = model.encode(src)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, padding, cache) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", POSITIONS)
def test_padded_source_positions_do_not_change_outputs(position):
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(small_config(position=position)).eval()
    src, tgt = batch()
    out = model(src, tgt)
    wider = torch.cat([src, torch.zeros(3, 5, dtype=torch.long)], dim=1)  # more padding
    torch.testing.assert_close(model(wider, tgt), out, atol=1e-5, rtol=0)
    # padding *content* is irrelevant too: the encoder never lets real tokens see it
    _, padding = model.encode(src)
    assert torch.equal(padding, src != 0)


@pytest.mark.parametrize("position", POSITIONS)
def test_decoder_is_causal(position):
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(small_config(position=position)).eval()
    src, tgt = batch()
    out = model(src, tgt)
    changed = tgt.clone()
    changed[:, 4:] = torch.randint(4, 30, changed[:, 4:].shape)
    out2 = model(src, changed)
    torch.testing.assert_close(out2[:, :4], out[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(out2[:, 4:], out[:, 4:])


def test_capture_sees_every_attention_module_with_expected_shapes():
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(small_config()).eval()
    src, tgt = batch()
    plain = model(src, tgt)
    with capture(model) as seen:
        captured = model(src, tgt)
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=0)
    B, S, T, H = 3, src.shape[1], tgt.shape[1], 4
    expected = {}
    for i in range(2):
        expected[f"encoder.layers.{i}.self_attn"] = (B, H, S, S)
        expected[f"decoder.layers.{i}.self_attn"] = (B, H, T, T)
        expected[f"decoder.layers.{i}.cross_attn"] = (B, H, T, S)
    assert {k: tuple(v.shape) for k, v in seen.items()} == expected
    cross = seen["decoder.layers.1.cross_attn"]
    torch.testing.assert_close(cross.sum(-1), torch.ones(B, H, T))
    assert cross[1, :, :, 6:].abs().max() == 0  # padded source keys get no weight
    self_attn = seen["decoder.layers.0.self_attn"]
    assert torch.triu(self_attn, diagonal=1).abs().max() == 0  # nothing from the future


def test_save_and_load_round_trip_is_exact_and_never_unpickles(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(small_config(position="relative", share_embeddings=False)).eval()
    src, tgt = batch()
    expected = model(src, tgt)
    model.save_pretrained(tmp_path)
    assert (tmp_path / CONFIG_NAME).is_file() and (tmp_path / WEIGHTS_NAME).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("loading must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = load_pretrained(tmp_path).eval()
    assert isinstance(loaded, TransformerEncoderDecoder)
    assert torch.equal(loaded(src, tgt), expected)
    # tied embeddings survive the round trip as one tensor
    assert loaded.decoder.output.weight is loaded.decoder.embed.embedding.weight


def test_shared_source_target_embeddings():
    model = TransformerEncoderDecoder(small_config(src_vocab_size=30, share_embeddings=True))
    assert model.encoder.embed.embedding is model.decoder.embed.embedding


def test_loading_a_folder_that_does_not_fit_is_a_clear_error(tmp_path):
    model = TransformerEncoderDecoder(small_config())
    model.save_pretrained(tmp_path)
    config = (tmp_path / CONFIG_NAME).read_text().replace('"d_model": 32', '"d_model": 64')
    (tmp_path / CONFIG_NAME).write_text(config)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("null", "expected a JSON object of model settings, found null"),
        ("[1, 2]", "expected a JSON object of model settings, found a list"),
        ("{}", "has no model_type; it was not written by heedful"),
        ('{"model_type": "gpt"}', "unknown model_type 'gpt'"),
        ('{"model_type": "transformer-encoder-decoder", "d_modl": 3}', "unknown config key 'd_modl' .did you mean"),
        ('{"model_type": "transformer-encoder-decoder", "d_model": true}', "config key 'd_model': expected a number"),
        ('{"model_type": ', r"line 1: not valid JSON"),
    ],
)
def test_a_config_json_written_by_hand_is_one_line_naming_the_file(tmp_path, text, message):
    TransformerEncoderDecoder(small_config()).save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path / CONFIG_NAME))}:? .*{message}"):
        load_pretrained(tmp_path)


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="divisible"):
        small_config(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="position"):
        small_config(position="spiral")
    with pytest.raises(ValueError, match="share_embeddings"):
        small_config(share_embeddings=True)


def test_encoder_only_model_ignores_padding_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = TransformerEncoderModel(small_config(position="rope")).eval()
    src, _ = batch()
    hidden = model(src)
    assert hidden.shape == (3, 9, 32)
    wider = torch.cat([src, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(wider)[:, :9][src != 0], hidden[src != 0], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    assert torch.equal(load_pretrained(tmp_path).eval()(src), hidden)


def test_keep_returns_exactly_the_kept_positions_logits():
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(
        TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, d_ff=32, dropout=0.0)
    ).eval()
    src, tgt = torch.randint(3, 20, (2, 6)), torch.randint(3, 20, (2, 5))
    keep = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    torch.testing.assert_close(model(src, tgt, keep=keep), model(src, tgt)[keep])


def test_a_model_saved_with_the_packed_in_proj_layout_still_loads():
    """tests/models/data/transformer-packed-in-proj was saved by the code before q/k/v became
    separate projections (commit 18813b1): one packed ``in_proj`` (3D, D) per attention module and
    the general score's ``score.W`` on the module. It loads, strictly, and computes the logits that
    code computed."""
    folder = Path(__file__).parent / "data" / "transformer-packed-in-proj"
    saved = safetensors.torch.load_file(str(folder / WEIGHTS_NAME))
    assert {"encoder.layers.0.self_attn.in_proj.weight", "decoder.layers.0.cross_attn.score.W.weight"} <= set(saved)
    expected = safetensors.torch.load_file(str(folder / "expected.safetensors"))
    model = load_pretrained(folder).eval()  # raises on any missing or unexpected tensor
    with torch.no_grad():
        torch.testing.assert_close(model(expected["src"], expected["tgt_in"]), expected["logits"], atol=1e-6, rtol=0)
    # Self-attention keeps the packed matrix (now qkv_proj); cross-attention splits it into its
    # three row blocks, q, k, v in that order.
    self_attn = model.decoder.layers[0].self_attn
    assert torch.equal(self_attn.qkv_proj.weight, saved["decoder.layers.0.self_attn.in_proj.weight"])
    q, k, v = saved["decoder.layers.0.cross_attn.in_proj.weight"].chunk(3)
    attn = model.decoder.layers[0].cross_attn
    for projection, block in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)):
        assert torch.equal(projection.weight, block)


def test_an_explicit_head_width_sets_the_inner_width_and_round_trips(tmp_path):
    """d_head need not divide d_model: inner_dim = n_heads · d_head (what head pruning leaves)."""
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(small_config(d_model=30, n_heads=3, d_head=8, position="rope")).eval()
    attn = model.decoder.layers[0].self_attn
    assert (attn.inner_dim, attn.qkv_proj.weight.shape, attn.out_proj.weight.shape) == (24, (72, 30), (30, 24))
    assert model.decoder.layers[0].cross_attn.k_proj.weight.shape == (24, 30)
    src, tgt = batch()
    full = model(src, tgt)
    memory, padding = model.encode(src)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, padding, cache) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    assert torch.equal(load_pretrained(tmp_path).eval()(src, tgt), full)


def run_under_bf16_autocast(model, src, tgt) -> tuple[list[torch.dtype], torch.Tensor]:
    """The dtype of the stream each layer takes, then of the memory the decoder takes; the logits
    (a backward pass done through them)."""
    seen: list[torch.dtype] = []
    layers = [*model.encoder.layers, *model.decoder.layers]
    hooks = [layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype)) for layer in layers]
    hooks.append(model.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[1].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, tgt)
        logits.float().logsumexp(-1).sum().backward()
    for hook in hooks:
        hook.remove()
    return seen, logits


@pytest.mark.parametrize("norm_first", [True, False])
def test_the_residual_stream_is_bf16_under_autocast_only_when_the_config_says(norm_first):
    """``residual_dtype: autocast``: under bf16 autocast every layer takes (and the encoder hands the
    decoder) a bf16 stream; the default keeps it float32. Without autocast the setting changes
    nothing, to the bit, and under it both give the float32 model's logits to bf16's precision."""
    torch.manual_seed(0)
    base = TransformerEncoderDecoder(small_config(norm_first=norm_first)).eval()
    lean = TransformerEncoderDecoder(small_config(norm_first=norm_first, residual_dtype="autocast")).eval()
    lean.load_state_dict(base.state_dict())
    src, tgt = batch()
    with torch.no_grad():
        reference = base(src, tgt)
        assert torch.equal(lean(src, tgt), reference)
    for model, stream in ((base, torch.float32), (lean, torch.bfloat16)):
        seen, logits = run_under_bf16_autocast(model, src, tgt)
        assert seen == [stream] * (len(model.encoder.layers) + len(model.decoder.layers) + 1)
        torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and bool(g.isfinite().all()) for g in grads)
