"""PyTorch multi-view UNet with the LDM / MVDream parameter names, built from a `UNetConfig`.

The module tree is the one documented in `see3d_core.unet_config` (`input_blocks.N...`,
`middle_block`, `output_blocks`, `time_embed.0/2`, `out.0/2`), so the released See3D UNets
(`unet/{single,sparse,SR}/ema-checkpoint`) load with zero missing or unexpected keys, and so
do checkpoints converted from the Flax twin (`see3d_jax.unet`) by `see3d-convert`.

Multi-view ("3D") self-attention: the first attention of every transformer block attends over
the tokens of all V views of a sample, `(b v) l c -> b (v l) c`; cross-attention and the GEGLU
feed-forward act per view. Tensors are [B, V, C, H, W]; every view of a sample shares one
timestep and one context.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from see3d_core.released_layout import CONFIG_FILE, WEIGHTS_FILE, model_folder_files, read_unet_config
from see3d_core.unet_config import UNetConfig
from see3d_core.weights import WeightsError, safetensors_header



def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding `cat(cos(t f), sin(t f))`, f_i = max_period^(-i / (dim/2)); [N, dim]
    in `dtype` (float32 as LDM, whatever the model's precision; float64 only for a float64 model,
    the exact reference the parity tests compare float32 against)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=timesteps.device) / half)
    args = timesteps.to(dtype)[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, plus the timestep embedding, GroupNorm-SiLU-Dropout-Conv, plus skip."""

    def __init__(self, channels: int, out_channels: int, config: UNetConfig):
        super().__init__()
        groups, eps = config.norm_num_groups, config.resblock_norm_eps
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, channels, eps=eps), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(config.time_embed_dim, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels, eps=eps),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v and a biased output projection (`to_out.0`)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b = x.shape[0]

        def split_heads(t):
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(context)), split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, x.shape[1], -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Multi-view self-attention, per-view cross-attention, per-view GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, config: UNetConfig):
        super().__init__()
        eps = config.layer_norm_eps
        self.multiview = config.multiview_attention
        self.attn1 = Attention(dim, dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, config.context_dim, heads, head_dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_views: int) -> torch.Tensor:
        bv, tokens, channels = x.shape
        if self.multiview:  # (b v) l c -> b (v l) c: every token sees every view of its sample
            x = x.reshape(bv // num_views, num_views * tokens, channels)
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(bv, tokens, channels)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        heads, head_dim = channels // config.num_head_channels, config.num_head_channels
        inner = heads * head_dim
        self.use_linear = config.use_linear_proj
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=config.transformer_norm_eps)
        self.proj_in = nn.Linear(channels, inner) if self.use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(inner, heads, head_dim, config) for _ in range(config.transformer_depth)]
        )
        self.proj_out = nn.Linear(inner, channels) if self.use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_views: int) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x)
        if self.use_linear:
            tokens = self.proj_in(tokens.flatten(2).transpose(1, 2))
        else:
            tokens = self.proj_in(tokens).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, num_views)
        if self.use_linear:
            out = self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)
        else:
            out = self.proj_out(tokens.transpose(1, 2).reshape(b, -1, h, w))
        return out + x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """Runs its layers in order, handing each the inputs it needs (embedding or context)."""

    def forward(self, x, emb, context, num_views):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, num_views)
            else:
                x = layer(x)
        return x


class MultiViewUNet(nn.Module):
    """The See3D multi-view diffusion UNet (LDM layout).

    `camera_dim` only exists to load MVDream-style checkpoints whose config declares a camera
    embedding (`camera_embed.0/2`); See3D never feeds cameras, so the embedding is unused.
    """

    def __init__(self, config: UNetConfig, camera_dim: int | None = None):
        super().__init__()
        self.config = config
        self.camera_dim = camera_dim
        mc, emb_dim = config.model_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if camera_dim is not None:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels, ch = [mc], mc
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc, config)]
                ch = mult * mc
                if config.level_has_attention(level):
                    layers.append(SpatialTransformer(ch, config))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepSequential(ResBlock(ch, ch, config), SpatialTransformer(ch, config), ResBlock(ch, ch, config))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), mult * mc, config)]
                ch = mult * mc
                if config.level_has_attention(level):
                    layers.append(SpatialTransformer(ch, config))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(config.norm_num_groups, ch, eps=config.resblock_norm_eps),
            nn.SiLU(),
            nn.Conv2d(mc, config.out_channels, 3, padding=1),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """sample [B, V, in_channels, H, W], timesteps [B] (one per sample), context [B, T, context_dim]
        -> [B, V, out_channels, H, W]."""
        cfg = self.config
        if sample.ndim != 5 or sample.shape[2] != cfg.in_channels:
            raise ValueError(f"sample: expected [B, V, {cfg.in_channels}, H, W], got {tuple(sample.shape)}")
        b, v, _, h, w = sample.shape
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if h % factor or w % factor:
            raise ValueError(f"sample: height and width must be multiples of {factor}, got {h}x{w}")
        timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1)
        if timesteps.shape[0] == 1:
            timesteps = timesteps.expand(b)
        if timesteps.shape[0] != b:
            raise ValueError(f"timesteps: expected one per sample ({b}), got {tuple(timesteps.shape)}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context: expected [{b}, T, {cfg.context_dim}], got {tuple(context.shape)}")

        x = sample.reshape(b * v, cfg.in_channels, h, w)
        t_emb = timestep_embedding(timesteps.repeat_interleave(v), cfg.model_channels, cfg.timestep_max_period,
                                   torch.float64 if x.dtype == torch.float64 else torch.float32)
        emb = self.time_embed(t_emb.to(x.dtype))
        context = context.to(x.dtype).repeat_interleave(v, dim=0)

        skips = []
        for block in self.input_blocks:
            x = block(x, emb, context, v)
            skips.append(x)
        x = self.middle_block(x, emb, context, v)
        for block in self.output_blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), emb, context, v)
        out = self.out(x)
        return out.reshape(b, v, cfg.out_channels, h, w)

    # ------------------------------------------------------------------ files

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model folder (`see3d_core.released_layout`): `config.json` (UNetConfig
        fields) and `WEIGHTS_FILE`, which `see3d_jax.convert.from_pretrained` reads too."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / CONFIG_FILE)
        state = {k: t.detach().contiguous().cpu() for k, t in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, torch_dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> "MultiViewUNet":
        """Load a model folder with `config.json` (ours or the released MVDream-style one) and
        `WEIGHTS_FILE`, written by either framework. Every key must match: missing, unexpected
        and mismatched keys are reported by name; an old Flax folder gets the command that
        converts it."""
        from safetensors.torch import load_file

        config_path, weights = model_folder_files(folder)
        config, camera_dim = read_unet_config(config_path)
        safetensors_header(weights)  # truncated / corrupt files are named before loading
        with torch.device("meta"):  # no second copy of the weights in memory
            model = cls(config, camera_dim=camera_dim)
        state = load_file(str(weights), device=str(device))
        check_state_dict(model, state, source=str(weights))
        if torch_dtype is not None:
            state = {k: t.to(torch_dtype) for k, t in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a ValueError naming every missing, unexpected and shape-mismatched key."""
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or mismatched:
        stem = "input_blocks.0.0.weight"
        channels = ""
        if stem in state and stem in expected and state[stem].ndim == 4 and state[stem].shape[1] != expected[stem][1]:
            channels = (f"the weights take {state[stem].shape[1]} input channels, the config says "
                        f"in_channels={expected[stem][1]}; ")
        raise WeightsError(
            f"{source} does not match the UNet built from its config: {channels}"
            f"missing {missing}, unexpected {unexpected}, mismatched {mismatched}"
        )


def unet_key_shapes(config: UNetConfig, camera_dim: int | None = None) -> dict[str, list[int]]:
    """Every parameter name and shape of the UNet for `config`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = MultiViewUNet(config, camera_dim=camera_dim)
    return {k: list(t.shape) for k, t in model.state_dict().items()}


__all__ = [
    "MultiViewUNet",
    "UNetConfig",
    "check_state_dict",
    "timestep_embedding",
    "unet_key_shapes",
]
