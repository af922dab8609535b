"""The fused C dropout kernel (attention/dropout_kernel.c) against a reference written in torch ops:
the same splitmix64 words, the same keep law and rounding — to the bit, forward and backward, for
any thread count — and its build: cached per host, and a one-line warning and the PyTorch path
where no compiler is found."""

import pytest
import torch
import torch.nn.functional as F

from heedful.attention import cpu_kernel
from heedful.attention.dropout import LANES, dropout, relu_dropout

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason="no C compiler to build the CPU dropout kernel")

MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 tensors read as uint64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def reference_lanes(seed: int, n: int) -> torch.Tensor:
    """splitmix64's words 1, 2, … after ``seed``, cut into int16 lanes: int64 arithmetic wraps like uint64."""
    words = torch.arange(1, (n + 3) // 4 + 1, dtype=torch.int64)
    z = _signed(seed) + words * _signed(0x9E3779B97F4A7C15)
    z = (z ^ _shr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _signed(0x94D049BB133111EB)
    z = z ^ _shr(z, 31)
    return z.view(torch.int16)[:n]


def reference(x: torch.Tensor, p: float, seed: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, mask) with the mask made in torch ops from the reference lanes, y = x * mask in x's dtype."""
    dropped = round(p * LANES)
    keep = reference_lanes(seed, x.numel()).view(x.shape) >= dropped - LANES // 2
    if relu:
        keep &= x.view({torch.bfloat16: torch.int16, torch.float32: torch.int32}[x.dtype]) > 0
    mask = keep.to(x.dtype) * (1 / (1 - dropped / LANES))  # the Python float, rounded to x's dtype here
    return x * mask, mask


def next_seed(torch_seed: int) -> int:
    torch.manual_seed(torch_seed)
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


@pytest.fixture
def two_threads():
    """The suite runs on one thread (conftest.py); the kernel's parallel split needs two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(3, 7), (129, 1031)])  # one partial block; one parallel run with a tail
def test_kernel_equals_the_torch_reference_to_the_bit_forward_and_backward(dtype, relu, shape):
    x = torch.randn(shape).to(dtype)
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, torch.finfo(dtype).tiny / 4])
    grad = torch.randn(shape).to(dtype)
    want_y, mask = reference(x, 0.3, next_seed(11), relu)
    torch.manual_seed(11)
    leaf = x.clone().requires_grad_()
    y = (relu_dropout if relu else dropout)(leaf, 0.3, True)
    y.backward(grad)
    assert y.dtype == dtype
    assert torch.equal(y.detach().view(torch.uint8), want_y.view(torch.uint8))  # bits, zeros' signs included
    assert torch.equal(leaf.grad, grad * mask)


def test_the_mask_is_the_same_for_any_thread_count():
    x = torch.ones(300_001, dtype=torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        masks = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            torch.manual_seed(4)
            masks.append(dropout(x, 0.1, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


def test_every_lane_keeps_at_the_rate_and_successive_calls_draw_anew():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    first, second = dropout(x, 0.5, True), dropout(x, 0.5, True)
    per_lane = (first != 0).view(-1, 4).float().mean(0)  # (4,)
    assert torch.all((per_lane - 0.5).abs() < 0.005), per_lane
    assert ((first != 0) == (second != 0)).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_relu_dropout_saves_only_its_output_and_equals_dropout_of_relu():
    """ReLU-dropout's backward reads its mask from the output the next layer keeps anyway: the only
    tensor it saves is its own output. dropout(F.relu(x)) with the same seed gives the same bits."""
    x = torch.randn(64, 300, dtype=torch.bfloat16, requires_grad=True)
    torch.manual_seed(2)
    y = relu_dropout(x, 0.2, True)
    saved = list(y.grad_fn.saved_tensors)
    assert len(saved) == 1 and saved[0].data_ptr() == y.data_ptr()
    torch.manual_seed(2)
    assert torch.equal(dropout(F.relu(x), 0.2, True), y)


def test_the_build_is_cached_per_host_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("HEEDFUL_CACHE_DIR", str(tmp_path))
    cpu_kernel.load.cache_clear()
    try:
        assert cpu_kernel.load() is not None
        (built,) = tmp_path.glob("kernels-*.so")
        stamp = built.stat().st_mtime_ns
        cpu_kernel.load.cache_clear()
        assert cpu_kernel.load() is not None
        assert [p.name for p in tmp_path.iterdir()] == [built.name] and built.stat().st_mtime_ns == stamp
    finally:
        cpu_kernel.load.cache_clear()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CC": "no-such-compiler-heedful"}, "no C compiler"),
        ({"CC": "false"}, "false could not build dropout_kernel.c"),  # a compiler that fails
        ({"HEEDFUL_CACHE_DIR": "{tmp}/a-file/cache"}, "cannot build in"),  # no folder can be made there
        ({"HEEDFUL_CPU_KERNELS": "0"}, None),  # switched off: no warning
    ],
)
def test_without_the_kernel_dropout_takes_the_pytorch_path(tmp_path, monkeypatch, recwarn, env, message):
    monkeypatch.setenv("HEEDFUL_CACHE_DIR", str(tmp_path))
    (tmp_path / "a-file").write_text("")
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    cpu_kernel.load.cache_clear()
    try:
        torch.manual_seed(3)
        y = dropout(torch.ones(100_000, dtype=torch.bfloat16), 0.2, True)
        warned = [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]
        if message is None:
            assert warned == []
        else:
            assert len(warned) == 1 and message in warned[0] and "PyTorch paths" in warned[0]
        assert list(tmp_path.rglob("*.so")) == []
        assert abs((y != 0).float().mean().item() - 0.8) < 0.01  # the PyTorch path's mask law
        seed = next_seed(3)
        assert not torch.equal(y, reference(torch.ones(100_000, dtype=torch.bfloat16), 0.2, seed, False)[0])
    finally:
        cpu_kernel.load.cache_clear()
