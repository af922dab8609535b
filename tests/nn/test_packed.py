"""Float32 Linears on oneDNN's prepacked kernels (heedful.nn.packed): the same outputs as
F.linear up to rounding, the packed path really taken, and the ordinary path wherever the packed
one would compute something else."""

import threading
import unittest.mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heedful.decode import beam_search, greedy_decode
from heedful.models import TransformerConfig, TransformerEncoderDecoder
from heedful.nn import packed
from heedful.nn.packed import packed_linears

pytestmark = pytest.mark.skipif(not packed.available(), reason="torch without oneDNN, or not an x86-64 CPU")


def mlp() -> nn.Sequential:
    """Large enough for the packed kernels at 16 rows (packed.PACKED_MIN_MACS)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256, bias=False)).eval()


def plain(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return F.linear(F.linear(x, model[0].weight, model[0].bias).relu(), model[2].weight)


def test_packed_linears_compute_f_linear_on_the_packed_kernels():
    model, x = mlp(), torch.randn(4, 4, 256)
    with torch.no_grad(), packed_linears(model):
        out = model(x)
        assert all(layer in packed._PACKS for layer in (model[0], model[2]))  # the packed path was taken
    torch.testing.assert_close(out, plain(model, x), atol=1e-5, rtol=1e-5)


def test_unchanged_weights_are_packed_once_for_many_blocks():
    model, x = mlp(), torch.randn(16, 256)
    with unittest.mock.patch.object(packed, "_pack", wraps=packed._pack) as packing:
        for _ in range(3):
            with torch.no_grad(), packed_linears(model):
                model(x)
                model(x)
    assert packing.call_count == 2  # one per layer, for all three blocks


def test_blocks_on_other_thread_counts_reuse_the_packing():
    """The fingerprint is the same number on any number of torch threads, so a block in a
    one-thread decoding worker after one on the caller's threads packs nothing again (with one
    float32 dot product over the weight, the Multi30k-sized layer below was packed twice)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(256, 8000, bias=False), nn.Linear(8000, 256)).eval()
    x = torch.randn(16, 256)
    threads = torch.get_num_threads()
    fingerprints = []

    def block(n_threads: int) -> None:
        torch.set_num_threads(n_threads)
        fingerprints.append([packed._fingerprint(layer.weight) for layer in model])
        with torch.no_grad(), packed_linears(model):
            model(x)

    with unittest.mock.patch.object(packed, "_pack", wraps=packed._pack) as packing:
        try:
            block(2)
            worker = threading.Thread(target=block, args=(1,))  # as decode.workers runs its batches
            worker.start()
            worker.join()
            block(1)
            block(3)
        finally:
            torch.set_num_threads(threads)
    assert all(f == fingerprints[0] for f in fingerprints)
    assert packing.call_count == 2  # each layer once


def test_the_layers_get_their_own_forward_back_and_blocks_nest():
    model = mlp()
    with packed_linears(model), packed_linears(model):
        assert "forward" in model[0].__dict__
    assert "forward" not in model[0].__dict__ and model not in packed._OPEN
    model[2].forward = own = lambda x: x  # a forward of the user's own is neither replaced nor removed
    with packed_linears(model):
        assert model[2].forward is own
    assert model[2].forward is own
    with packed_linears(model, enabled=False):
        assert "forward" not in model[0].__dict__


def test_a_block_open_in_another_thread_keeps_the_layers_packed():
    model, entered, release = mlp(), threading.Event(), threading.Event()

    def other():
        with packed_linears(model):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait(10)
    with packed_linears(model):
        pass
    assert "forward" in model[0].__dict__  # the other thread's block is still open
    release.set()
    thread.join()
    assert "forward" not in model[0].__dict__


def test_the_smallest_products_keep_f_linear():
    model = mlp()
    with torch.no_grad(), packed_linears(model), unittest.mock.patch.object(packed, "_pack") as packing:
        x = torch.randn(3, 256)  # 3 · 256 · 512 multiply-adds: below PACKED_MIN_MACS
        assert torch.equal(model[0](x), F.linear(x, model[0].weight, model[0].bias))
        assert not packing.called


def test_weights_changed_between_blocks_are_packed_again():
    model, x = mlp(), torch.randn(16, 256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)  # moves no version counter
    for _ in range(2):  # validation, a training step, validation: each block sees the weights of its time
        with torch.no_grad(), packed_linears(model):
            torch.testing.assert_close(model(x), plain(model, x), atol=1e-5, rtol=1e-5)
        model(x).square().sum().backward()
        optimizer.step()
    with torch.no_grad(), packed_linears(model):
        model(x)
        model[2].weight = nn.Parameter(torch.randn(256, 512) / 512**0.5)  # a parameter replaced inside the block
        torch.testing.assert_close(model(x), plain(model, x), atol=1e-5, rtol=1e-5)


def test_gradients_autocast_and_other_dtypes_take_the_ordinary_path():
    model, x = mlp(), torch.randn(16, 256)
    with packed_linears(model):
        out = model(x)  # gradients enabled: training must see autograd's F.linear
        out.sum().backward()
        assert model[0].weight.grad is not None and model[0] not in packed._PACKS
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16  # autocast still applies
        with torch.no_grad():
            assert model.double()(x.double()).dtype == torch.float64
    assert model[0] not in packed._PACKS


def test_parametrized_weights_and_models_that_are_not_modules_are_left_alone():
    layer = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8)).eval()
    with packed_linears(layer):
        assert "forward" not in layer.__dict__
    with packed_linears(object()) as same:  # a decoding-protocol object, not an nn.Module
        assert same is not None


def transformer() -> TransformerEncoderDecoder:
    torch.manual_seed(0)
    config = TransformerConfig(
        src_vocab_size=1000, tgt_vocab_size=1000, d_model=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
        d_ff=256,
    )  # fmt: skip
    return TransformerEncoderDecoder(config).eval()


def test_decoding_with_prepacked_linears_finds_what_f_linear_finds():
    model = transformer()
    src = torch.randint(4, 1000, (6, 9))
    with unittest.mock.patch.object(packed, "_pack", wraps=packed._pack) as packing:
        fast = beam_search(model, src, bos_id=1, eos_id=2, beam_size=4, max_len=12)
        packed_weights = {id(call.args[0]) for call in packing.call_args_list}
        assert id(model.decoder.output.weight) in packed_weights  # the search ran on the packed kernels
        packing.reset_mock()
        slow = beam_search(model, src, bos_id=1, eos_id=2, beam_size=4, max_len=12, prepacked=False)
        assert not packing.called
    assert [[h.tokens for h in hyps] for hyps in fast] == [[h.tokens for h in hyps] for hyps in slow]
    for a, b in zip(fast, slow, strict=True):
        assert a[0].score == pytest.approx(b[0].score, abs=1e-4)
    tokens, log_prob = greedy_decode(model, src, bos_id=1, eos_id=2, max_len=12)
    tokens_plain, log_prob_plain = greedy_decode(model, src, bos_id=1, eos_id=2, max_len=12, prepacked=False)
    assert torch.equal(tokens, tokens_plain)
    torch.testing.assert_close(log_prob, log_prob_plain, atol=1e-4, rtol=0)
    assert "forward" not in model.decoder.output.__dict__
