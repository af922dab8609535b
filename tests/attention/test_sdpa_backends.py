"""Which fused kernels the attention may use: on CUDA every one but cuDNN's (which plans each new
shape anew, and token-count batches bring a new shape nearly every batch)."""

import torch
from torch.nn.attention import SDPBackend

from heedful.attention import attend as attend_module
from heedful.attention.attend import Attend, sdpa_backends
from heedful.attention.scores import ScaledDotScore


def test_cuda_allows_every_fused_kernel_but_cudnn_and_the_cpu_leaves_the_choice_to_torch():
    allowed = sdpa_backends(torch.device("cuda", 0))
    assert SDPBackend.CUDNN_ATTENTION not in allowed
    assert {SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH} <= set(allowed)
    assert sdpa_backends(torch.device("cpu")) is None


class Recorder:
    """``F`` for the attention kernel: notes which backends torch may use when SDPA is called."""

    def __init__(self):
        self.seen = []

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def scaled_dot_product_attention(self, *args, **kwargs):
        self.seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)


def test_the_fused_call_runs_with_cudnn_switched_off_and_switches_it_back(monkeypatch):
    # The CPU stands in for a GPU: the flags are the process's, whatever the device.
    monkeypatch.setattr(attend_module, "sdpa_backends", lambda device: attend_module.CUDA_SDPA_BACKENDS)
    recorder = Recorder()
    monkeypatch.setattr(attend_module, "F", recorder)
    attend = Attend(ScaledDotScore(16), path="fused")
    q, k, v = (torch.randn(2, 4, 5, 16) for _ in range(3))
    context, _ = attend(q, k, v, key_padding_mask=torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))
    assert recorder.seen == [(False, True)]
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the call
    monkeypatch.setattr(attend_module, "sdpa_backends", lambda device: None)
    plain, _ = attend(q, k, v, key_padding_mask=torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))
    assert recorder.seen[-1] == (True, True)
    torch.testing.assert_close(context, plain)
