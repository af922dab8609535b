"""SAGAN: spectral norm bounds the largest singular value, the attention block starts as the
identity and is captured, output shapes for each resolution and attention placement, and the
Fréchet distance against a NumPy/SciPy reference."""

import numpy as np
import pytest
import torch

from heedful.explain import capture
from heedful.metrics import feature_statistics, frechet_distance
from heedful.models.sagan import SAGAN, SAGANConfig, SelfAttention2d


def test_spectral_norm_keeps_the_largest_singular_value_near_one():
    torch.manual_seed(0)
    model = SAGAN(SAGANConfig(image_size=16, width=16, attention_resolution=8)).train()
    conv = model.discriminator.blocks[1].conv1
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(3.0)  # a raw weight far from norm 1
    z = torch.randn(8, 128)
    for _ in range(30):  # each training-mode forward runs one power iteration per weight
        model.discriminator(model(z))
    weight = conv.weight.reshape(conv.weight.shape[0], -1)  # the normalised weight, as a matrix
    assert torch.linalg.svdvals(weight)[0].item() == pytest.approx(1.0, abs=0.02)
    raw = conv.parametrizations.weight.original.reshape(weight.shape[0], -1)
    assert torch.linalg.svdvals(raw)[0] > 2.0  # what the layer would use without the normalisation


def test_the_attention_block_with_gamma_zero_is_the_identity_and_reports_its_weights():
    torch.manual_seed(0)
    block = SelfAttention2d(32, use_sn=False).eval()
    x = torch.randn(2, 32, 8, 8)
    with capture(block) as seen:
        assert torch.equal(block(x), x)
    weights = seen[""]  # (B, 1, N, N)
    assert weights.shape == (2, 1, 64, 64)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 1, 64))
    with torch.no_grad():
        block.gamma.fill_(0.5)
    assert not torch.allclose(block(x), x)


@pytest.mark.parametrize(
    ("size", "attention", "classes"), [(8, 4, 0), (16, 8, 10), (32, 16, 10), (32, 8, 0), (32, None, 10)]
)
def test_generator_and_discriminator_shapes(size, attention, classes):
    cfg = SAGANConfig(image_size=size, width=16, n_classes=classes, attention_resolution=attention)
    model = SAGAN(cfg)
    y = torch.randint(0, classes, (3,)) if classes else None
    with capture(model) if attention else torch.no_grad() as seen:
        images = model(torch.randn(3, 128), y)
        scores = model.discriminator(images, y)
    assert images.shape == (3, 1, size, size) and images.abs().max() <= 1
    assert scores.shape == (3,)
    if attention:
        n = attention * attention
        assert seen["generator.attention"].shape == (3, 1, n, n)


def test_an_attention_resolution_the_model_does_not_have_is_refused():
    with pytest.raises(ValueError, match="attention_resolution 32 is not an inner feature-map side"):
        SAGANConfig(image_size=32, attention_resolution=32)
    with pytest.raises(ValueError, match="image_size must be 4"):
        SAGANConfig(image_size=28)


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    b = rng.normal(loc=0.3, scale=1.2, size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.5
    ours = frechet_distance(*feature_statistics(torch.from_numpy(a)), *feature_statistics(torch.from_numpy(b)))
    assert ours == pytest.approx(_reference_fid(a, b), abs=1e-6, rel=1e-9)
    same = feature_statistics(torch.from_numpy(a))
    assert frechet_distance(*same, *same) == pytest.approx(0.0, abs=1e-9)
