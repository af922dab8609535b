"""Weights files: tied parameters stored once, views into one buffer (cuDNN's flattened RNN
weights on a GPU) stored apart, and both loaded back into modules laid out either way."""

import pytest
import safetensors.torch
import torch
from torch import nn

from heedful.nn.weights import load_weights, save_weights, weights_for_saving


class FlatBuffer(nn.Module):
    """Parameters that are views into one buffer none of them covers, as cuDNN lays out an
    ``nn.GRU``'s weights after ``flatten_parameters`` (which is a no-op on the CPU)."""

    def __init__(self):
        super().__init__()
        buffer = torch.randn(10)
        self.a = nn.Parameter(buffer[:4].view(2, 2))
        self.b = nn.Parameter(buffer[4:])


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight  # tied: one parameter under two names


def test_views_into_one_buffer_save_and_load_back(tmp_path):
    source = FlatBuffer()
    # the library's own save refuses this layout (what broke a BiGRU trained on CUDA)
    with pytest.raises(RuntimeError, match="no suitable name"):
        safetensors.torch.save_model(source, str(tmp_path / "refused.safetensors"))
    # stored apart: older safetensors releases refuse any two tensors on one storage
    stored = weights_for_saving(source)
    assert len({t.untyped_storage().data_ptr() for t in stored.values()}) == 2
    save_weights(source, tmp_path / "w.safetensors")
    target = FlatBuffer()
    shared_before = target.a.untyped_storage().data_ptr()
    assert load_weights(target, tmp_path / "w.safetensors") == ([], [])
    assert torch.equal(target.a, source.a) and torch.equal(target.b, source.b)
    # values were copied into the module's own buffer, which stays shared
    assert target.a.untyped_storage().data_ptr() == shared_before == target.b.untyped_storage().data_ptr()


def test_tied_parameter_is_stored_once_and_restored_under_both_names(tmp_path):
    source = Tied()
    save_weights(source, tmp_path / "w.safetensors")
    assert set(safetensors.torch.load_file(str(tmp_path / "w.safetensors"))) == {"embed.weight"}
    target = Tied()
    assert load_weights(target, tmp_path / "w.safetensors") == ([], [])
    assert torch.equal(target.out.weight, source.embed.weight) and target.out.weight is target.embed.weight


def test_files_written_by_safetensors_save_model_still_load(tmp_path):
    source = Tied()
    safetensors.torch.save_model(source, str(tmp_path / "old.safetensors"))  # earlier heedful releases
    target = Tied()
    assert load_weights(target, tmp_path / "old.safetensors") == ([], [])
    assert torch.equal(target.embed.weight, source.embed.weight)


def test_a_bigru_round_trips(tmp_path):
    source = nn.GRU(4, 3, bidirectional=True, batch_first=True)
    save_weights(source, tmp_path / "w.safetensors")
    target = nn.GRU(4, 3, bidirectional=True, batch_first=True)
    load_weights(target, tmp_path / "w.safetensors")
    x = torch.randn(2, 5, 4)
    assert torch.equal(target(x)[0], source(x)[0])


def test_missing_and_unexpected_names_are_reported_when_not_strict(tmp_path):
    save_weights(nn.Linear(2, 2), tmp_path / "w.safetensors")
    missing, unexpected = load_weights(nn.Linear(2, 2, bias=False), tmp_path / "w.safetensors", strict=False)
    assert (missing, unexpected) == ([], ["bias"])
