"""The multi-view diffusion UNet (SD-2.1 / MVDream family) in Flax NNX.

Built from a `see3d_core.unet_config.UNetConfig`. The module tree mirrors the LDM/MVDream
layout, so a parameter's dotted path *is* its name in the released checkpoints (see the
table in `see3d_core.unet_config`), e.g. ``input_blocks.1.1.transformer_blocks.0.attn1.to_q``.
Activation slots of LDM's `nn.Sequential`s are kept as parameter-free modules (`SiLU`,
`Identity`) so the indices match (``time_embed.2``, ``out_layers.3``, ``ff.net.2``, ...).

Layout: images are channels-last. `UNet.__call__` takes the concatenated input of all views
``x: [B, V, H, W, in_channels]``, one timestep per sample ``t: [B]`` (all views share it) and a
context ``[B, T, context_dim]``; it returns ``[B, V, H, W, out_channels]``.

3D self-attention: in every transformer block the first attention sees the tokens of all
views of a sample, ``(B*V, HW, C) -> (B, V*HW, C)``; cross-attention and the GEGLU
feed-forward act per view. Attention goes through `see3d_jax.attention.dot_product_attention`
(`attention_implementation`: "auto" picks cuDNN flash attention on NVIDIA GPUs, the Pallas
kernel on TPU, and a memory-efficient blockwise attention elsewhere, so the 3D attention never
materialises its [V*HW, V*HW] scores).

Precision: parameters are float32; `dtype` sets the compute dtype (bfloat16 or float32);
norms and the timestep embedding are computed in float32.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from see3d_core.unet_config import UNetConfig
from see3d_jax.attention import check_implementation, dot_product_attention
from see3d_jax.sharding import constrain

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute each block in the backward pass
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# Parameters are initialised on the host with numpy (`initial_parameters`): on CPU, jax's RNG
# compiles once per parameter shape, which made building even the tiny model take ~40 s. The
# jax initialisers below only give `nnx.eval_shape` its shapes; the "init" metadata says how
# `initial_parameters` fills each parameter.
_shape_only = nnx.initializers.zeros


def _meta(axes, init):
    return {"logical_axes": axes, "init": init}


def linear(in_features: int, out_features: int, axes: tuple[str, str], rngs: nnx.Rngs, *, dtype, use_bias: bool = True, zero: bool = False) -> nnx.Linear:
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=_shape_only, kernel_metadata=_meta(axes, "zeros" if zero else "fan_in_normal"),
        bias_metadata=_meta((axes[1],), "zeros"), rngs=rngs,
    )


def conv(in_features: int, out_features: int, rngs: nnx.Rngs, *, dtype, kernel: int = 3, stride: int = 1, zero: bool = False) -> nnx.Conv:
    pad = kernel // 2  # torch-style symmetric padding (SAME would pad (0, 1) for stride 2)
    return nnx.Conv(
        in_features, out_features, kernel_size=(kernel, kernel), strides=(stride, stride),
        padding=((pad, pad), (pad, pad)), dtype=dtype, param_dtype=jnp.float32, kernel_init=_shape_only,
        kernel_metadata=_meta((None, None, "conv_in", "conv_out"), "zeros" if zero else "fan_in_normal"),
        bias_metadata=_meta(("conv_out",), "zeros"), rngs=rngs,
    )


class GroupNorm32(nnx.GroupNorm):
    """GroupNorm computed in float32 whatever the compute dtype (as the LDM code does)."""

    def __call__(self, x, *args, **kwargs):
        return super().__call__(x.astype(jnp.float32), *args, **kwargs).astype(x.dtype)


def group_norm(channels: int, groups: int, eps: float, rngs: nnx.Rngs) -> GroupNorm32:
    return GroupNorm32(
        channels, num_groups=groups, epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
        scale_metadata=_meta(("norm",), "ones"), bias_metadata=_meta(("norm",), "zeros"), rngs=rngs,
    )


class SiLU(nnx.Module):
    """Parameter-free slot keeping LDM's Sequential indices."""

    def __call__(self, x):
        return jax.nn.silu(x)


class Identity(nnx.Module):
    """Parameter-free slot for LDM's Dropout layers (the released models use dropout 0)."""

    def __call__(self, x):
        return x


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding `cat(cos, sin)` of (possibly fractional) timesteps, float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class ResBlock(nnx.Module):
    def __init__(self, in_ch: int, emb_dim: int, out_ch: int, cfg: UNetConfig, dtype, rngs: nnx.Rngs):
        g, eps = cfg.norm_num_groups, cfg.resblock_norm_eps
        self.in_layers = nnx.List([group_norm(in_ch, g, eps, rngs), SiLU(), conv(in_ch, out_ch, rngs, dtype=dtype)])
        self.emb_layers = nnx.List([SiLU(), linear(emb_dim, out_ch, ("embed", "conv_out"), rngs, dtype=dtype)])
        self.out_layers = nnx.List([
            group_norm(out_ch, g, eps, rngs), SiLU(), Identity(), conv(out_ch, out_ch, rngs, dtype=dtype, zero=True)
        ])
        self.skip_connection = conv(in_ch, out_ch, rngs, dtype=dtype, kernel=1) if in_ch != out_ch else None

    def __call__(self, x, emb):
        h = x
        for layer in self.in_layers:
            h = layer(h)
        e = emb
        for layer in self.emb_layers:
            e = layer(e)
        h = h + e[:, None, None, :].astype(h.dtype)
        for layer in self.out_layers:
            h = layer(h)
        skip = x if self.skip_connection is None else self.skip_connection(x)
        return skip + h


class Attention(nnx.Module):
    """Multi-head attention; `to_q/to_k/to_v` have no bias (as released)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int, dtype, rngs: nnx.Rngs, implementation: str):
        inner = heads * head_dim
        self.heads, self.head_dim, self.implementation = heads, head_dim, implementation
        self.to_q = linear(query_dim, inner, ("embed", "heads"), rngs, dtype=dtype, use_bias=False)
        self.to_k = linear(context_dim, inner, ("embed", "heads"), rngs, dtype=dtype, use_bias=False)
        self.to_v = linear(context_dim, inner, ("embed", "heads"), rngs, dtype=dtype, use_bias=False)
        self.to_out = nnx.List([linear(inner, query_dim, ("heads", "embed"), rngs, dtype=dtype), Identity()])

    def __call__(self, x, context=None):
        context = x if context is None else context
        split = lambda a: a.reshape(a.shape[0], a.shape[1], self.heads, self.head_dim)  # noqa: E731
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        k, v = k.astype(q.dtype), v.astype(q.dtype)
        out = dot_product_attention(q, k, v, implementation=self.implementation)
        out = out.reshape(out.shape[0], out.shape[1], self.heads * self.head_dim)
        for layer in self.to_out:
            out = layer(out)
        return out


class GEGLU(nnx.Module):
    def __init__(self, dim: int, inner: int, dtype, rngs: nnx.Rngs):
        self.proj = linear(dim, 2 * inner, ("embed", "mlp"), rngs, dtype=dtype)

    def __call__(self, x):
        x, gate = jnp.split(self.proj(x), 2, axis=-1)
        return x * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    def __init__(self, dim: int, dtype, rngs: nnx.Rngs, mult: int = 4):
        self.net = nnx.List([GEGLU(dim, mult * dim, dtype, rngs), Identity(), linear(mult * dim, dim, ("mlp", "embed"), rngs, dtype=dtype)])

    def __call__(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, cfg: UNetConfig, dtype, rngs: nnx.Rngs, implementation):
        eps = cfg.layer_norm_eps
        ln = lambda: nnx.LayerNorm(dim, epsilon=eps, dtype=jnp.float32, scale_metadata=_meta(("norm",), "ones"), bias_metadata=_meta(("norm",), "zeros"), rngs=rngs)  # noqa: E731
        self.multiview = cfg.multiview_attention
        self.norm1, self.norm2, self.norm3 = ln(), ln(), ln()
        self.attn1 = Attention(dim, dim, heads, head_dim, dtype, rngs, implementation)
        self.attn2 = Attention(dim, cfg.context_dim, heads, head_dim, dtype, rngs, implementation)
        self.ff = FeedForward(dim, dtype, rngs)

    def __call__(self, x, context, num_views: int):
        bv, length, dim = x.shape
        h = self.norm1(x).astype(x.dtype)
        if self.multiview:  # 3D self-attention: every token sees all views of its sample
            h = self.attn1(h.reshape(bv // num_views, num_views * length, dim)).reshape(bv, length, dim)
        else:
            h = self.attn1(h)
        x = x + h
        x = x + self.attn2(self.norm2(x).astype(x.dtype), context)
        x = x + self.ff(self.norm3(x).astype(x.dtype))
        return x


class SpatialTransformer(nnx.Module):
    def __init__(self, channels: int, cfg: UNetConfig, dtype, rngs: nnx.Rngs, implementation):
        heads = channels // cfg.num_head_channels
        self.use_linear_proj = cfg.use_linear_proj
        self.norm = group_norm(channels, cfg.norm_num_groups, cfg.transformer_norm_eps, rngs)
        if cfg.use_linear_proj:
            self.proj_in = linear(channels, channels, ("embed", "heads"), rngs, dtype=dtype)
            self.proj_out = linear(channels, channels, ("heads", "embed"), rngs, dtype=dtype, zero=True)
        else:
            self.proj_in = conv(channels, channels, rngs, dtype=dtype, kernel=1)
            self.proj_out = conv(channels, channels, rngs, dtype=dtype, kernel=1, zero=True)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(channels, heads, cfg.num_head_channels, cfg, dtype, rngs, implementation)
            for _ in range(cfg.transformer_depth)
        ])

    def __call__(self, x, context, num_views: int):
        n, hgt, wid, c = x.shape
        h = self.norm(x)
        if self.use_linear_proj:
            h = self.proj_in(h.reshape(n, hgt * wid, c))
        else:
            h = self.proj_in(h).reshape(n, hgt * wid, c)
        for block in self.transformer_blocks:
            h = block(h, context, num_views)
        if self.use_linear_proj:
            h = self.proj_out(h).reshape(n, hgt, wid, c)
        else:
            h = self.proj_out(h.reshape(n, hgt, wid, c))
        return x + h


class Downsample(nnx.Module):
    def __init__(self, channels: int, dtype, rngs: nnx.Rngs):
        self.op = conv(channels, channels, rngs, dtype=dtype, stride=2)

    def __call__(self, x):
        return self.op(x)


class Upsample(nnx.Module):
    def __init__(self, channels: int, dtype, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, rngs, dtype=dtype)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _apply_layers(layers, h, emb, context, num_views: int):
    for layer in layers:
        if isinstance(layer, ResBlock):
            h = layer(h, emb)
        elif isinstance(layer, SpatialTransformer):
            h = layer(h, context, num_views)
        else:
            h = layer(h)
    return constrain(h, ("batch", None, None, None))


class UNet(nnx.Module):
    """The multi-view UNet. `seed` draws the initial parameters (`initial_parameters`; nothing
    is drawn under `nnx.eval_shape`); `dtype` is the compute dtype; `remat` one of
    `REMAT_POLICIES`; `attention_implementation` one of `see3d_jax.attention.IMPLEMENTATIONS`."""

    def __init__(self, config: UNetConfig, *, seed: int = 0, dtype: Any = jnp.float32, remat: str = "none",
                 attention_implementation: str = "auto"):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"UNet: remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
        check_implementation(attention_implementation, "UNet")
        cfg = self.config = config
        self.dtype, self.remat = dtype, remat
        rngs = nnx.Rngs(0)  # unused by the shape-only initialisers; see `initial_parameters`
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        block = lambda *a: nnx.List(list(a))  # noqa: E731
        st = lambda ch: SpatialTransformer(ch, cfg, dtype, rngs, attention_implementation)  # noqa: E731
        res = lambda i, o: ResBlock(i, ted, o, cfg, dtype, rngs)  # noqa: E731

        self.time_embed = nnx.List([
            linear(mc, ted, ("embed", "mlp"), rngs, dtype=jnp.float32), SiLU(),
            linear(ted, ted, ("mlp", "embed"), rngs, dtype=jnp.float32),
        ])
        inputs = [block(conv(cfg.in_channels, mc, rngs, dtype=dtype))]
        skip_channels, ch = [mc], mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if cfg.level_has_attention(level):
                    layers.append(st(ch))
                inputs.append(block(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                inputs.append(block(Downsample(ch, dtype, rngs)))
                skip_channels.append(ch)
        self.input_blocks = nnx.List(inputs)
        self.middle_block = block(res(ch, ch), st(ch), res(ch, ch))
        outputs = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if cfg.level_has_attention(level):
                    layers.append(st(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, dtype, rngs))
                outputs.append(block(*layers))
        self.output_blocks = nnx.List(outputs)
        self.out = nnx.List([
            group_norm(ch, cfg.norm_num_groups, cfg.resblock_norm_eps, rngs), SiLU(),
            conv(mc, cfg.out_channels, rngs, dtype=dtype, zero=True),
        ])
        params = nnx.state(self, nnx.Param)
        if all(type(x) is not jax.ShapeDtypeStruct and not isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params)):
            nnx.replace_by_pure_dict(params, initial_parameters(self, seed))
            nnx.update(self, params)

    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
        cfg = self.config
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet: x must be [B, V, H, W, {cfg.in_channels}], got shape {x.shape}")
        b, v, hgt, wid, _ = x.shape
        if hgt % 2 ** (len(cfg.channel_mult) - 1) or wid % 2 ** (len(cfg.channel_mult) - 1):
            raise ValueError(f"UNet: height and width must be divisible by {2 ** (len(cfg.channel_mult) - 1)}, got {hgt}x{wid}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != cfg.context_dim:
            raise ValueError(f"UNet: context must be [B={b}, T, {cfg.context_dim}], got shape {context.shape}")
        t = jnp.broadcast_to(jnp.asarray(t), (b,))

        emb = timestep_embedding(jnp.repeat(t, v), cfg.model_channels, cfg.timestep_max_period)
        for layer in self.time_embed:
            emb = layer(emb)
        context = jnp.repeat(context.astype(self.dtype), v, axis=0)
        h = constrain(x.reshape(b * v, hgt, wid, cfg.in_channels).astype(self.dtype), ("batch", None, None, None))

        policy = REMAT_POLICIES[self.remat]
        apply = _apply_layers
        if self.remat != "none":
            apply = nnx.remat(_apply_layers, policy=policy, static_argnums=(4,))

        skips = []
        for layers in self.input_blocks:
            h = apply(layers, h, emb, context, v)
            skips.append(h)
        h = apply(self.middle_block, h, emb, context, v)
        for layers in self.output_blocks:
            h = apply(layers, jnp.concatenate([h, skips.pop()], axis=-1), emb, context, v)
        for layer in self.out:
            h = layer(h)
        return h.astype(jnp.float32).reshape(b, v, hgt, wid, cfg.out_channels)


def initial_parameters(model: nnx.Module, seed: int = 0) -> dict:
    """Fresh parameters for `model` (concrete or from `nnx.eval_shape`) as a pure dict of numpy
    float32 arrays: fan-in-scaled normal kernels, zero biases, unit norm scales and zero output
    layers (as LDM's `zero_module`). Each parameter's draw depends only on `seed` and its name,
    so every host of a multi-host job computes the same values."""
    import zlib

    import numpy as np

    params: dict = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = tuple(var.get_value().shape)
        kind = var.get_metadata().get("init", "fan_in_normal")
        name = ".".join(map(str, path))
        if kind == "zeros":
            value = np.zeros(shape, np.float32)
        elif kind == "ones":
            value = np.ones(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1]))
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            value = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return params


def count_parameters(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def forward_flops(config: UNetConfig, num_views: int, height: int, width: int, context_tokens: int | None = None) -> float:
    """Analytic FLOPs (2 per multiply-add) of one forward pass of one sample of `num_views`
    views at `height` x `width` (model resolution): convolutions, linear layers and attention
    matmuls; norms and pointwise ops are ignored (they are < 1%). Training is ~3x this."""
    return _flop_counts(config, num_views, height, width, context_tokens)[0]


def attention_matmul_flops(config: UNetConfig, num_views: int, height: int, width: int, context_tokens: int | None = None) -> float:
    """The part of `forward_flops` in the attention score and value matmuls (self and cross):
    what flash-style attention recomputes in the backward pass, and remat `dots_no_batch`
    recomputes (batched matmuls are not saved)."""
    return _flop_counts(config, num_views, height, width, context_tokens)[1]


def _flop_counts(config: UNetConfig, num_views: int, height: int, width: int, context_tokens: int | None) -> tuple[float, float]:
    cfg = config
    attention = 0.0
    ctx_len = cfg.context_tokens if context_tokens is None else context_tokens
    v = num_views

    def conv_f(h, w, cin, cout, k=3):
        return 2.0 * h * w * k * k * cin * cout

    def res_f(h, w, cin, cout):
        f = conv_f(h, w, cin, cout) + conv_f(h, w, cout, cout) + 2.0 * cfg.time_embed_dim * cout
        return f + (conv_f(h, w, cin, cout, 1) if cin != cout else 0.0)

    def st_f(h, w, c):
        nonlocal attention
        n = h * w
        f = 2 * 2.0 * n * c * c  # proj_in, proj_out
        for _ in range(cfg.transformer_depth):
            f += 4 * 2.0 * n * c * c  # attn1 q, k, v, out
            scores = 2 * 2.0 * (v * n if cfg.multiview_attention else n) * n * c  # attn1 scores + values
            scores += 2 * 2.0 * n * ctx_len * c  # attn2 scores + values
            f += scores + 2 * 2.0 * n * c * c + 2 * 2.0 * ctx_len * cfg.context_dim * c  # attn2 q, out; k, v
            f += 2.0 * n * c * 8 * c + 2.0 * n * 4 * c * c  # GEGLU proj, ff out
            attention += scores * v
        return f

    mc, levels = cfg.model_channels, len(cfg.channel_mult)
    total = 2.0 * (mc * cfg.time_embed_dim + cfg.time_embed_dim**2)
    h, w, ch = height, width, mc
    total += conv_f(h, w, cfg.in_channels, mc)
    skips = [mc]
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            total += res_f(h, w, ch, mult * mc)
            ch = mult * mc
            if cfg.level_has_attention(level):
                total += st_f(h, w, ch)
            skips.append(ch)
        if level != levels - 1:
            h, w = h // 2, w // 2
            total += conv_f(h, w, ch, ch)
            skips.append(ch)
    total += 2 * res_f(h, w, ch, ch) + st_f(h, w, ch)
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            total += res_f(h, w, ch + skips.pop(), mult * mc)
            ch = mult * mc
            if cfg.level_has_attention(level):
                total += st_f(h, w, ch)
            if level and i == cfg.num_res_blocks:
                h, w = h * 2, w * 2
                total += conv_f(h, w, ch, ch)
    total += conv_f(h, w, mc, cfg.out_channels)
    return total * v, attention
