"""The Flax multi-view UNet: shapes, the LDM parameter tree, 3D attention, weights on disk, FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from see3d_core import unet_config
from see3d_core.unet_config import UNetConfig
from see3d_jax.convert import from_pretrained, save_pretrained_params
from see3d_jax.unet import UNet, count_parameters, forward_flops, timestep_embedding

TINY = unet_config.tiny()
# one compiled program per model shape instead of hundreds of eagerly dispatched ops
apply = nnx.jit(lambda model, x, t, ctx: model(x, t, ctx))


@pytest.fixture(scope="module")
def tiny_model():
    model = UNet(TINY, seed=0)
    # zero-initialised output layers would hide most of the network: perturb every parameter
    params = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), params)
    nnx.update(model, params)
    return model


def _inputs(b=2, v=3, s=16, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((b, v, s, s, TINY.in_channels)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((b, TINY.context_tokens, TINY.context_dim)), jnp.float32)
    return x, jnp.array([10, 700][:b], jnp.int32), ctx


def test_sd21_matches_the_released_architecture():
    # 865,925,124 = diffusers' UNet2DConditionModel with the SD-2.1 config and 9 input channels
    # (measured with diffusers 0.42.1 on the meta device): same layers, same sizes.
    model = nnx.eval_shape(lambda: UNet(unet_config.sd21()))
    assert count_parameters(model) == 865_925_124
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    for name in [  # LDM/MVDream names of the released checkpoints (Flax leaf names)
        "time_embed.0.kernel", "time_embed.2.bias", "input_blocks.0.0.kernel",
        "input_blocks.1.0.in_layers.2.kernel", "input_blocks.1.0.emb_layers.1.kernel", "input_blocks.1.0.out_layers.3.kernel",
        "input_blocks.1.1.proj_in.kernel", "input_blocks.1.1.transformer_blocks.0.attn1.to_q.kernel",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.kernel", "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.kernel",
        "input_blocks.1.1.transformer_blocks.0.ff.net.2.kernel", "input_blocks.1.1.transformer_blocks.0.norm3.scale",
        "input_blocks.3.0.op.kernel", "input_blocks.4.0.skip_connection.kernel", "middle_block.1.proj_out.kernel",
        "middle_block.2.out_layers.0.scale", "output_blocks.2.1.conv.kernel", "output_blocks.5.2.conv.kernel",
        "output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.kernel", "out.0.scale", "out.2.kernel",
    ]:
        assert name in names, name
    assert not any("to_q.bias" in n or "to_k.bias" in n or "to_v.bias" in n for n in names)
    assert any(n.startswith("input_blocks.7.1.") for n in names)  # attention at 1/4 resolution
    assert not any(n.startswith("input_blocks.10.1") for n in names)  # none at the coarsest level


def test_forward_shapes_and_errors(tiny_model):
    x, t, ctx = _inputs()
    y = apply(tiny_model, x, t, ctx)
    assert y.shape == (2, 3, 16, 16, TINY.out_channels) and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match="x must be"):
        tiny_model(x[..., :5], t, ctx)
    with pytest.raises(ValueError, match="context must be"):
        tiny_model(x, t, ctx[..., :3])


def test_fresh_model_outputs_zero():
    # LDM zero-initialises the last conv: a fresh model predicts exactly 0
    x, t, ctx = _inputs()
    assert float(jnp.abs(apply(UNet(TINY), x, t, ctx)).max()) == 0.0


def test_3d_attention_mixes_views_only_within_a_sample(tiny_model):
    x, t, ctx = _inputs()
    y = apply(tiny_model, x, t, ctx)
    x2 = x.at[0, 2].add(1.0)  # change view 2 of sample 0
    y2 = apply(tiny_model, x2, t, ctx)
    assert float(jnp.abs(y2[0, 0] - y[0, 0]).max()) > 1e-4  # other views of the same sample see it
    assert float(jnp.abs(y2[1] - y[1]).max()) < 1e-6  # other samples do not
    per_view = UNet(TINY.replace(multiview_attention=False))
    nnx.update(per_view, nnx.state(tiny_model, nnx.Param))
    z, z2 = apply(per_view, x, t, ctx), apply(per_view, x2, t, ctx)
    assert float(jnp.abs(z2[0, 0] - z[0, 0]).max()) < 1e-6  # without 3D attention views are independent


def test_bf16_compute_is_close_to_fp32(tiny_model):
    x, t, ctx = _inputs()
    model16 = UNet(TINY, dtype=jnp.bfloat16, remat="full")
    nnx.update(model16, nnx.state(tiny_model, nnx.Param))
    y32, y16 = apply(tiny_model, x, t, ctx), apply(model16, x, t, ctx)
    assert y16.dtype == jnp.float32
    assert float(jnp.abs(y16 - y32).max()) < 0.05 * float(jnp.abs(y32).max()) + 1e-3


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(jnp.array([0.0, 3.0]), 8, 10000.0)
    freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]), rtol=1e-6)
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_weights_round_trip(tiny_model, tmp_path):
    params = nnx.to_pure_dict(nnx.state(tiny_model, nnx.Param))
    save_pretrained_params(jax.device_get(params), TINY, tmp_path)
    assert UNetConfig.load(tmp_path) == TINY
    loaded = from_pretrained(tmp_path)
    x, t, ctx = _inputs()
    np.testing.assert_array_equal(np.asarray(apply(loaded, x, t, ctx)), np.asarray(apply(tiny_model, x, t, ctx)))
    small = unet_config.small()
    small.save(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config"):
        from_pretrained(tmp_path / "nowhere")


def test_analytic_flops_match_xla_and_the_sd21_anchors():
    # SPEC.md section 6: ~0.8 TFLOP per 512^2 sample, ~4.7 TFLOP for 4 views with 3D attention
    assert forward_flops(unet_config.sd21(), 1, 64, 64, 77) == pytest.approx(0.80e12, rel=0.02)
    assert forward_flops(unet_config.sd21(), 4, 64, 64, 77) == pytest.approx(4.7e12, rel=0.02)
    model = UNet(TINY)
    x, t, ctx = _inputs(b=1)
    graphdef, state = nnx.split(model)
    cost = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, t[:1], ctx[:1])).lower(state, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA also counts norms and pointwise ops, which the analytic count leaves out
    assert forward_flops(TINY, 3, 16, 16) == pytest.approx(cost["flops"], rel=0.15)


def test_config_round_trip_and_validation(tmp_path):
    for name in unet_config.PRESETS:
        cfg = unet_config.preset(name)
        assert UNetConfig.load(cfg.save(tmp_path)) == cfg
    assert unet_config.sd21().in_channels == 9 and unet_config.sd21().sample_channels == 4
    with pytest.raises(ValueError, match="divisible by norm_num_groups"):
        UNetConfig(model_channels=48)
    with pytest.raises(ValueError, match="prediction_type"):
        UNetConfig(prediction_type="x")
    with pytest.raises(ValueError, match=r"unknown UNetConfig field\(s\) \[.channels.\]"):
        UNetConfig.from_dict({"channels": 3})
    with pytest.raises(ValueError, match="unknown UNet preset"):
        unet_config.preset("huge")


@pytest.mark.slow
def test_blockwise_3d_attention_gives_the_xla_output_and_gradients(tiny_model):
    # 32x32 inputs: 3 views x 16x16 tokens = 768 tokens in the 3D attention, two key blocks of
    # 512 (the second padded). Each attention op is within gamma(2L + 8) = 9e-5 relative of exact
    # attention in float32 (tests/test_attention.py): the whole UNet must agree to that scale.
    x, t, ctx = _inputs(b=1, s=32)
    params = nnx.state(tiny_model, nnx.Param)
    outputs = {}
    for impl in ("xla", "blockwise"):
        model = UNet(TINY, attention_implementation=impl)
        nnx.update(model, params)
        graphdef, state = nnx.split(model)
        fn = lambda s, x: jnp.sum(nnx.merge(graphdef, s)(x, t[:1], ctx[:1]) ** 2)  # noqa: E731
        outputs[impl] = (apply(model, x, t[:1], ctx[:1]), jax.jit(jax.grad(fn, argnums=1))(state, x))
    n = 2 * 768 + 8
    tolerance = n * 2.0**-24 / (1 - n * 2.0**-24)
    for ref, got in zip(outputs["xla"], outputs["blockwise"]):
        assert float(jnp.abs(got - ref).max()) <= tolerance * float(jnp.abs(ref).max())
    with pytest.raises(ValueError, match="attention implementation must be one of"):
        UNet(TINY, attention_implementation="flash")
