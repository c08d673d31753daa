"""Flax AutoencoderKL against diffusers' AutoencoderKL (torch) with converted weights."""

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from see3d_jax.convert import from_pretrained  # noqa: E402
from see3d_jax.vae import AutoencoderKL, VAEConfig  # noqa: E402


def _diffusers_vae(config: VAEConfig, folder):
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    torch.manual_seed(0)
    model = TorchAutoencoderKL(**{k: v for k, v in config.to_diffusers_config().items() if k != "_class_name"}).eval()
    with torch.no_grad():  # break the symmetric init so every weight matters
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p)).add_(0.01 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("preset, size", [("tiny", 32), ("sd", 32)])
def test_encode_decode_match_diffusers(preset, size, tmp_path):
    config = VAEConfig.preset(preset)
    reference = _diffusers_vae(config, tmp_path)
    flax_vae = from_pretrained(tmp_path)
    assert isinstance(flax_vae, AutoencoderKL) and flax_vae.config == config
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        posterior = reference.encode(torch.from_numpy(images)).latent_dist
        decoded = reference.decode(posterior.mean).sample.numpy()
    from flax import nnx

    encode, decode = nnx.jit(lambda m, x: m.encode(x)), nnx.jit(lambda m, z: m.decode(z))  # one compile, not per op
    mean, logvar = encode(flax_vae, jnp.asarray(images.transpose(0, 2, 3, 1)))
    nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731
    np.testing.assert_allclose(nchw(mean), posterior.mean.numpy(), atol=1e-4)
    np.testing.assert_allclose(nchw(logvar), posterior.logvar.numpy(), atol=1e-4)
    flax_decoded = nchw(decode(flax_vae, jnp.asarray(posterior.mean.numpy().transpose(0, 2, 3, 1))))
    assert flax_decoded.shape == (2, 3, size, size)
    np.testing.assert_allclose(flax_decoded, decoded, atol=1e-4)


def test_config_round_trip_and_errors():
    config = VAEConfig.preset("sd")
    assert VAEConfig.from_diffusers_config(config.to_diffusers_config()) == config
    assert config.downsample_factor == 8
    with pytest.raises(ValueError, match="act_fn"):
        VAEConfig.from_diffusers_config({**config.to_diffusers_config(), "act_fn": "gelu"}, source="vae/config.json")
    with pytest.raises(ValueError, match="unknown VAE preset"):
        VAEConfig.preset("huge")
    from flax import nnx

    vae = nnx.eval_shape(lambda: AutoencoderKL(VAEConfig.preset("tiny"), rngs=nnx.Rngs(0)))  # shape checks only
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(jnp.zeros((1, 15, 16, 3)))
    with pytest.raises(ValueError, match="latents"):
        vae.decode(jnp.zeros((1, 8, 8, 3)))
