"""The VAE in the train step: its parameters are arguments of the jitted step (not constants
baked into the program), and bfloat16 encoding stays within bfloat16 rounding of float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from see3d_jax.sharding import activation_sharding
from see3d_jax.train import Trainer
from see3d_jax.train_config import preset
from see3d_jax.vae import AutoencoderKL, VAEConfig, latent_encoder

# four levels: 8x downsampling, as the trainer assumes for latent models
VAE = VAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8)
LATENT = ["unet.pixel_space=false", "unet.in_channels=9", "unet.out_channels=4", "unet.sample_size=4", "batch_size=2"]


@pytest.fixture(scope="module")
def vae():
    return AutoencoderKL(VAE, rngs=nnx.Rngs(0))


def _views(cfg, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (cfg.batch_size, cfg.num_views, cfg.image_size, cfg.image_size, 3)).astype(np.float32)


@pytest.mark.slow
def test_vae_parameters_are_step_arguments_not_constants(vae):
    cfg = preset("tiny", LATENT)
    encoder = latent_encoder(vae)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(encoder.params))
    as_arguments = Trainer(cfg, encode_fn=encoder)
    baked = Trainer(cfg, encode_fn=lambda pixels: encoder(pixels))  # closes over the weights
    state = as_arguments.init_state()
    batch = as_arguments.global_batch({"views": _views(cfg)})
    sizes = {}
    for name, trainer in (("arguments", as_arguments), ("baked", baked)):
        with activation_sharding(trainer.mesh, trainer.rules):
            sizes[name] = len(trainer.train_step.lower(state, batch, trainer.encoder_params).as_text())
    # constants are printed as hex (2 characters per byte): the baked program carries the weights
    assert sizes["baked"] - sizes["arguments"] >= param_bytes, sizes
    key = jax.random.PRNGKey(0)
    loss_arguments = jax.jit(as_arguments.loss)(state["params"], batch, key, as_arguments.encoder_params)[0]
    loss_baked = jax.jit(baked.loss)(state["params"], batch, key)[0]
    assert float(loss_arguments) == pytest.approx(float(loss_baked), rel=1e-6)  # the same loss either way


@pytest.mark.slow
def test_bfloat16_encoding_is_within_bfloat16_rounding(vae):
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32, 3)), jnp.float32)
    exact = np.asarray(jax.jit(latent_encoder(vae).apply)(latent_encoder(vae).params, images), np.float64)
    reference = vae.sample_latents(images.reshape(6, 32, 32, 3)).reshape(exact.shape)
    np.testing.assert_allclose(exact, np.asarray(reference), atol=1e-5 * float(np.abs(exact).max()))
    half = latent_encoder(vae, jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(half.params))
    got = np.asarray(jax.jit(half.apply)(half.params, images), np.float64)
    assert got.dtype == np.float64 and got.shape == exact.shape
    # each conv/linear layer rounds its input and weights to bfloat16 (u = 2^-8) and accumulates
    # in float32: at most ~u of relative error per layer, summed over the encoder's layers
    layers = sum(1 for path, _ in nnx.to_flat_state(nnx.state(vae.encoder, nnx.Param)) if path[-1] == "kernel") + 1
    relative_rms = np.sqrt(np.mean((got - exact) ** 2) / np.mean(exact**2))
    assert 0 < relative_rms <= layers * 2.0**-8, (relative_rms, layers)
