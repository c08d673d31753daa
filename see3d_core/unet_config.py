"""The multi-view diffusion UNet's architecture as a framework-free dataclass.

Both the Flax model (`see3d_jax.unet`) and its PyTorch twin are built from a `UNetConfig`, and
it round-trips through `config.json` (`save` / `load`), so a checkpoint folder says what it is.

The architecture is the SD-2.1 / MVDream latent-diffusion UNet (LDM layout) with See3D's
input: noisy sample + visual condition + mask concatenated on channels.

Module tree (identical names on both sides; a parameter's dotted path is its LDM name)::

    time_embed.{0,2}                       Linear(model_channels -> 4*mc), SiLU, Linear
    input_blocks.0.0                       Conv3x3(in_channels -> mc)
    input_blocks.i.0                       ResBlock: in_layers.{0: GroupNorm, 2: Conv3x3},
                                           emb_layers.1: Linear, out_layers.{0: GroupNorm,
                                           3: Conv3x3}, skip_connection: Conv1x1 (only when
                                           the channel count changes)
    input_blocks.i.1                       SpatialTransformer (levels in attention_resolutions):
                                           norm (GroupNorm eps 1e-6), proj_in (Linear if
                                           use_linear_proj else Conv1x1),
                                           transformer_blocks.d.{norm1, attn1, norm2, attn2,
                                           norm3, ff}, proj_out
                                           attn*: to_q, to_k, to_v (no bias), to_out.0
                                           ff: net.0.proj (GEGLU, 2*4*C outputs), net.2
    input_blocks.i.0.op                    Downsample: Conv3x3 stride 2
    middle_block.{0,1,2}                   ResBlock, SpatialTransformer, ResBlock
    output_blocks.i.{0,1[,2]}              ResBlock on cat(h, skip), [SpatialTransformer],
                                           [Upsample: .conv Conv3x3 after nearest 2x]
    out.{0,2}                              GroupNorm, SiLU, Conv3x3(mc -> out_channels)

Parameter layouts differ only by framework convention: Flax `Conv.kernel` is HWIO (torch
`weight` is OIHW), `Linear.kernel` is (in, out) (torch `weight` is (out, in)), GroupNorm /
LayerNorm `scale` is torch `weight`; `bias` is `bias` everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from see3d_core.dataclass_json import from_json_dict, read_json_object, to_json_dict

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Every architectural field of the multi-view UNet.

    `attention_resolutions` are downsampling factors as in the LDM configs: a level whose
    factor 2**level is listed gets a SpatialTransformer after each ResBlock.
    """

    in_channels: int = 9  # noisy sample + condition + mask
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    use_linear_proj: bool = True
    norm_num_groups: int = 32
    resblock_norm_eps: float = 1e-5
    transformer_norm_eps: float = 1e-6  # GroupNorm before proj_in
    layer_norm_eps: float = 1e-5  # LayerNorms inside the transformer blocks (torch default)
    timestep_max_period: float = 10000.0  # embedding is cat(cos, sin)
    multiview_attention: bool = True  # the first attention spans the tokens of all views
    pixel_space: bool = False  # no VAE: RGB noisy sample + RGB condition + mask (3 + 3 + 1)
    prediction_type: str = "v_prediction"
    sample_size: int = 64  # training height/width of the UNet input (latents or pixels)
    context_tokens: int = 77  # length of the context the model is trained with

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(a) for a in self.attention_resolutions))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"UNetConfig.prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"UNetConfig.channel_mult must be non-empty positive integers, got {self.channel_mult}")
        for m in self.channel_mult:
            if (self.model_channels * m) % self.norm_num_groups:
                raise ValueError(
                    f"UNetConfig: channels {self.model_channels * m} are not divisible by norm_num_groups {self.norm_num_groups}"
                )
            if self.num_head_channels <= 0 or (self.model_channels * m) % self.num_head_channels:
                raise ValueError(
                    f"UNetConfig: channels {self.model_channels * m} are not divisible by num_head_channels {self.num_head_channels}"
                )
        if self.pixel_space and self.in_channels != 7:
            raise ValueError(f"UNetConfig: a pixel-space model takes 3 + 3 + 1 = 7 input channels, got in_channels={self.in_channels}")
        if self.sample_size % (2 ** (len(self.channel_mult) - 1)):
            raise ValueError(
                f"UNetConfig.sample_size {self.sample_size} must be divisible by {2 ** (len(self.channel_mult) - 1)} (one halving per level)"
            )

    @property
    def sample_channels(self) -> int:
        """Channels of the denoised sample (RGB in pixel space, latent channels otherwise)."""
        return 3 if self.pixel_space else (self.in_channels - 1) // 2

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def level_has_attention(self, level: int) -> bool:
        return 2**level in self.attention_resolutions

    def replace(self, **changes: Any) -> "UNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "UNetConfig":
        """The fields of `to_dict`; `_class_name` and `architecture` (format markers) are ignored."""
        return from_json_dict(cls, d, source, ignore=("_class_name", "architecture"))

    def save(self, path: str | os.PathLike) -> Path:
        """Write `config.json` (into `path` if it is a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        path.write_text(json.dumps({"architecture": "see3d-mv-unet", **self.to_dict()}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UNetConfig":
        """Read `config.json` (in `path` if it is a directory) in the kit's dialect."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_dict(read_json_object(path, "UNet config"), source=str(path))

def tiny() -> UNetConfig:
    """For tests: pixel space, two levels, attention at the coarse one; ~0.2M parameters."""
    return UNetConfig(
        in_channels=7, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(2,), num_head_channels=16, context_dim=16, norm_num_groups=8,
        pixel_space=True, sample_size=16, context_tokens=4,
    )


def small() -> UNetConfig:
    """For CPU experiments (the demo checkpoint): pixel space, 32x32 views, 1.4M parameters
    (~6.6 GFLOP per training sample of 4 views: trainable in minutes on a laptop CPU).

    Attention (3D across views) only at the 8x8 level: the 16x16 level's 1024-token attention
    doubled the CPU step time, and at equal training time the model without it is better
    (benchmarks/RESULTS.md, issue 5)."""
    return UNetConfig(
        in_channels=7, out_channels=3, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(4,), num_head_channels=32, context_dim=64, norm_num_groups=32,
        pixel_space=True, sample_size=32, context_tokens=4,
    )


def sd21() -> UNetConfig:
    """The released See3D / MVDream SD-2.1-base architecture (SPEC.md section 2): 9 inputs."""
    return UNetConfig()


PRESETS = {"tiny": tiny, "small": small, "sd21": sd21}


def preset(name: str) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
