"""Flax NNX AutoencoderKL with the Stable Diffusion architecture (encode and decode).

The module tree mirrors diffusers' `AutoencoderKL` attribute for attribute (`encoder.down_blocks[i]
.resnets[j].conv1`, `mid_block.attentions[0].to_q`, `decoder.up_blocks[i].upsamplers[0].conv`,
`quant_conv`, ...), so `see3d_jax.convert` can load diffusers' VAE weights with an explicit map.
Images are NHWC in [-1, 1]; latents are NHWC, unscaled (multiply by `config.scaling_factor`
before diffusion, as diffusers does).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

# diffusers' VAE uses 1e-6 in every GroupNorm (resnets, attention and output norms)
VAE_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of an SD-style AutoencoderKL (the fields of diffusers' config.json we need)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215

    @classmethod
    def preset(cls, name: str) -> "VAEConfig":
        """`sd` (SD 1.x/2.x VAE, 83.7M parameters) or `tiny` (two levels of 32/64 channels, for tests)."""
        presets = {
            "sd": cls(),
            "tiny": cls(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32),
        }
        if name not in presets:
            raise ValueError(f"unknown VAE preset {name!r}; expected one of {sorted(presets)}")
        return presets[name]

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def to_diffusers_config(self) -> dict:
        """The config.json diffusers' `AutoencoderKL.from_pretrained` reads."""
        levels = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels,
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "act_fn": "silu",
            "scaling_factor": self.scaling_factor,
        }

    @classmethod
    def from_diffusers_config(cls, config: dict, source: str = "config") -> "VAEConfig":
        """Read a diffusers AutoencoderKL config dict; refuse variants this module does not build."""
        expectations = {
            "act_fn": "silu",
            "use_quant_conv": True,
            "use_post_quant_conv": True,
            "mid_block_add_attention": True,
        }
        for key, wanted in expectations.items():
            if config.get(key, wanted) != wanted:
                raise ValueError(f"{source}: {key}={config[key]!r} is not supported (expected {wanted!r})")
        for key in ("down_block_types", "up_block_types"):
            kinds = set(config.get(key, []))
            if kinds - {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
                raise ValueError(f"{source}: {key}={config[key]!r} is not supported")
        try:
            return cls(
                in_channels=int(config["in_channels"]),
                out_channels=int(config["out_channels"]),
                latent_channels=int(config["latent_channels"]),
                block_out_channels=tuple(int(c) for c in config["block_out_channels"]),
                layers_per_block=int(config["layers_per_block"]),
                norm_num_groups=int(config.get("norm_num_groups", 32)),
                scaling_factor=float(config.get("scaling_factor", 0.18215)),
            )
        except KeyError as missing:
            raise ValueError(f"{source}: missing key {missing} in the AutoencoderKL config") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "VAEConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VAE config not found: {path}")
        return cls.from_diffusers_config(json.loads(path.read_text()), source=str(path))


def _group_norm(channels: int, groups: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    # exact two-pass variance: the fast E[x^2]-E[x]^2 form costs parity with torch
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=VAE_NORM_EPS, use_fast_variance=False, rngs=rngs)


def _conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, strides: int = 1, padding="SAME") -> nnx.Conv:
    return nnx.Conv(cin, cout, (kernel, kernel), strides=strides, padding=padding, rngs=rngs)


class ResnetBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, groups: int, rngs: nnx.Rngs):
        self.norm1 = _group_norm(cin, groups, rngs)
        self.conv1 = _conv(cin, cout, 3, rngs)
        self.norm2 = _group_norm(cout, groups, rngs)
        self.conv2 = _conv(cout, cout, 3, rngs)
        self.conv_shortcut = _conv(cin, cout, 1, rngs) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class SelfAttention(nnx.Module):
    """Single-head spatial self-attention of the VAE mid block (diffusers' `Attention` there)."""

    def __init__(self, channels: int, groups: int, rngs: nnx.Rngs):
        self.group_norm = _group_norm(channels, groups, rngs)
        self.to_q = nnx.Linear(channels, channels, rngs=rngs)
        self.to_k = nnx.Linear(channels, channels, rngs=rngs)
        self.to_v = nnx.Linear(channels, channels, rngs=rngs)
        self.to_out = nnx.List([nnx.Linear(channels, channels, rngs=rngs)])

    def __call__(self, x):
        b, h, w, c = x.shape
        tokens = self.group_norm(x).reshape(b, h * w, c)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(jnp.asarray(c, q.dtype)), axis=-1)
        out = self.to_out[0](jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + out.reshape(b, h, w, c)


class MidBlock(nnx.Module):
    def __init__(self, channels: int, groups: int, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(channels, channels, groups, rngs) for _ in range(2)])
        self.attentions = nnx.List([SelfAttention(channels, groups, rngs)])

    def __call__(self, x):
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nnx.Module):
    def __init__(self, channels: int, rngs: nnx.Rngs):
        # diffusers pads (0, 1) on the right/bottom, then a 3x3 stride-2 conv without padding
        self.conv = _conv(channels, channels, 3, rngs, strides=2, padding=((0, 1), (0, 1)))

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, rngs)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))  # nearest 2x


class DownEncoderBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, add_downsample: bool, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, groups, rngs) for i in range(layers)])
        self.downsamplers = nnx.List([Downsample(cout, rngs)] if add_downsample else [])

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class UpDecoderBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, add_upsample: bool, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, groups, rngs) for i in range(layers)])
        self.upsamplers = nnx.List([Upsample(cout, rngs)] if add_upsample else [])

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers:
            x = up(x)
        return x


class Encoder(nnx.Module):
    def __init__(self, config: VAEConfig, rngs: nnx.Rngs):
        chans, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = _conv(config.in_channels, chans[0], 3, rngs)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock(chans[max(i - 1, 0)], c, config.layers_per_block, groups, i < len(chans) - 1, rngs)
                for i, c in enumerate(chans)
            ]
        )
        self.mid_block = MidBlock(chans[-1], groups, rngs)
        self.conv_norm_out = _group_norm(chans[-1], groups, rngs)
        self.conv_out = _conv(chans[-1], 2 * config.latent_channels, 3, rngs)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, config: VAEConfig, rngs: nnx.Rngs):
        chans, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = _conv(config.latent_channels, chans[0], 3, rngs)
        self.mid_block = MidBlock(chans[0], groups, rngs)
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock(chans[max(i - 1, 0)], c, config.layers_per_block + 1, groups, i < len(chans) - 1, rngs)
                for i, c in enumerate(chans)
            ]
        )
        self.conv_norm_out = _group_norm(chans[-1], groups, rngs)
        self.conv_out = _conv(chans[-1], config.out_channels, 3, rngs)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """SD VAE. `encode` returns the posterior (mean, logvar); `decode` maps latents to images."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs)
        self.decoder = Decoder(config, rngs)
        self.quant_conv = _conv(2 * config.latent_channels, 2 * config.latent_channels, 1, rngs)
        self.post_quant_conv = _conv(config.latent_channels, config.latent_channels, 1, rngs)

    def encode(self, images):
        """images [B, H, W, in_channels] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, latent_channels]."""
        return _posterior(self.encoder, self.quant_conv, self.config, images)

    def sample_latents(self, images, key: jax.Array | None = None):
        """A posterior sample (or the mean when `key` is None), already scaled by `scaling_factor`."""
        mean, logvar = self.encode(images)
        latents = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return latents * self.config.scaling_factor

    def decode(self, latents):
        """latents [B, h, w, latent_channels] (unscaled) -> images [B, h*f, w*f, out_channels]."""
        if latents.ndim != 4 or latents.shape[-1] != self.config.latent_channels:
            raise ValueError(f"latents: expected [B, h, w, {self.config.latent_channels}], got {latents.shape}")
        return self.decoder(self.post_quant_conv(latents))

    def __call__(self, images):
        mean, _ = self.encode(images)
        return self.decode(mean)


def _posterior(encoder: Encoder, quant_conv: nnx.Conv, config: VAEConfig, images):
    if images.ndim != 4 or images.shape[-1] != config.in_channels:
        raise ValueError(f"images: expected [B, H, W, {config.in_channels}], got {images.shape}")
    f = config.downsample_factor
    if images.shape[1] % f or images.shape[2] % f:
        raise ValueError(f"images: height and width must be multiples of {f}, got {images.shape[1:3]}")
    moments = quant_conv(encoder(images))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)  # diffusers' clamp of the posterior log-variance


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: jax.jit(encoder) keys its cache on it
class LatentEncoder:
    """Images -> scaled posterior-mean latents as a pure function of the encoder's parameters.

    A jitted program that closes over a VAE embeds its weights as constants (the SD VAE grew
    the sd21 train step from 6.8 MB to 280 MB of StableHLO, SPEC.md section 7); passing
    `params` as an argument keeps them out of the program. `apply(params, images)` takes
    ``[..., H, W, 3]`` in [-1, 1] (any leading axes) and returns ``[..., H/f, W/f, C]`` float32;
    calling the encoder itself applies its own parameters."""

    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.apply(self.params, images)


def latent_encoder(model: AutoencoderKL, dtype: Any = jnp.float32) -> LatentEncoder:
    """The encoding half of `model` (encoder and quant_conv; the decoder is left out) as a
    `LatentEncoder` computing in `dtype` (float32 or bfloat16; GroupNorm statistics stay
    float32 either way)."""
    config = model.config
    graphdef, params = nnx.split({"encoder": model.encoder, "quant_conv": model.quant_conv}, nnx.Param)
    params = jax.tree.map(lambda p: jnp.asarray(p, dtype), nnx.to_pure_dict(params))

    def apply(params, images):
        parts = nnx.merge(graphdef, params)
        lead = images.shape[:-3]
        flat = images.reshape((-1,) + images.shape[-3:]).astype(dtype)
        mean, _ = _posterior(parts["encoder"], parts["quant_conv"], config, flat)
        latents = mean.astype(jnp.float32) * config.scaling_factor
        return latents.reshape(lead + latents.shape[1:])

    return LatentEncoder(apply, params)
