"""Attention implementations (see3d_jax.attention) against exact attention.

Every float32 implementation is compared with a float64 reference, within a worst-case
forward-error bound of float32 rounding (gamma_n = n u / (1 - n u), u = 2^-24, for a sum of n
terms, propagated through softmax and its gradient below). The bound holds for any summation
order, so plain XLA attention must meet it too; a wrong block, mask or gradient formula misses
it by orders of magnitude."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from see3d_jax.attention import blockwise_attention, dot_product_attention, pallas_attention, resolve_implementation

U32 = 2.0**-24


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def reference_and_bounds(q, k, v, g, half_unit=0.0):
    """Exact (float64) attention output and q/k/v gradients of sum(out * g), each with an
    elementwise bound on the error of a float32 computation: [B, L, H, D] arrays. With
    `half_unit` (bfloat16: 2^-8; inputs already bfloat16 values) the bound adds the roundings of
    a half-precision computation with float32 accumulation: p and ds rounded before their
    matmuls, the output saved for the backward, and every result, each to `half_unit`."""
    q, k, v, g = (np.asarray(a, np.float64).transpose(0, 2, 1, 3) for a in (q, k, v, g))  # [B, H, L, D]
    lq, lk, d = q.shape[2], k.shape[2], q.shape[3]
    scale = 1 / math.sqrt(d)
    s = scale * q @ k.swapaxes(-1, -2)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = p @ v
    # scores: d products summed, then scaled; softmax: relative error of each p from its own
    # score's error, the row maximum's, the row sum and the online corrections (< 2 lk + 8 roundings)
    e_s = gamma(d + 1) * scale * np.abs(q) @ np.abs(k).swapaxes(-1, -2)
    rho = e_s + e_s.max(-1, keepdims=True) + gamma(2 * lk + 8)
    bound_o = (p * rho) @ np.abs(v) + gamma(lk) * p @ np.abs(v)
    dv = p.swapaxes(-1, -2) @ g
    bound_dv = (p * rho).swapaxes(-1, -2) @ np.abs(g) + gamma(lq) * p.swapaxes(-1, -2) @ np.abs(g)
    dp = g @ v.swapaxes(-1, -2)
    delta = (g * o).sum(-1, keepdims=True)
    # delta as rowsum(g o) (flash backward) or rowsum(p dp) (autodiff of softmax): bound both
    e_delta = gamma(d) * (np.abs(g) * np.abs(o)).sum(-1, keepdims=True) + (np.abs(g) * bound_o).sum(-1, keepdims=True)
    e_delta = e_delta + gamma(lk + 1) * (p * np.abs(dp)).sum(-1, keepdims=True) + (p * rho * np.abs(dp)).sum(-1, keepdims=True)
    ds = p * (dp - delta)
    e_ds = rho * np.abs(ds) + p * (gamma(d) * np.abs(g) @ np.abs(v).swapaxes(-1, -2) + e_delta) + 2 * U32 * np.abs(ds)
    dq = scale * ds @ k
    bound_dq = scale * (e_ds @ np.abs(k) + gamma(lk) * np.abs(ds) @ np.abs(k))
    dk = scale * ds.swapaxes(-1, -2) @ q
    bound_dk = scale * (e_ds.swapaxes(-1, -2) @ np.abs(q) + gamma(lq) * np.abs(ds).swapaxes(-1, -2) @ np.abs(q))
    if half_unit:
        h = half_unit
        bound_o = bound_o + h * (p @ np.abs(v) + np.abs(o))
        bound_dv = bound_dv + h * (p.swapaxes(-1, -2) @ np.abs(g) + np.abs(dv))
        e_ds_half = p * h * (np.abs(g) * np.abs(o)).sum(-1, keepdims=True) + h * np.abs(ds)
        bound_dq = bound_dq + scale * e_ds_half @ np.abs(k) + h * np.abs(dq)
        bound_dk = bound_dk + scale * e_ds_half.swapaxes(-1, -2) @ np.abs(q) + h * np.abs(dk)
    back = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    return [(back(x), back(b)) for x, b in ((o, bound_o), (dq, bound_dq), (dk, bound_dk), (dv, bound_dv))]


def _inputs(b, lq, lk, h, d, seed=0, score_scale=1.0):
    rng = np.random.default_rng(seed)
    q = score_scale * rng.standard_normal((b, lq, h, d))
    k, v = rng.standard_normal((2, b, lk, h, d))
    g = rng.standard_normal((b, lq, h, d))
    return [jnp.asarray(a, jnp.float32) for a in (q, k, v, g)]


def _value_and_grads(fn, q, k, v, g):
    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out * g), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return [out, *grads]


def _assert_within_bounds(results, q, k, v, g, half_unit=0.0):
    for name, got, (exact, bound) in zip(["out", "dq", "dk", "dv"], results, reference_and_bounds(q, k, v, g, half_unit)):
        err = np.abs(np.asarray(got, np.float64) - exact)
        worst = float((err / bound).max())
        assert worst <= 1.0, f"{name}: error {float(err.max()):.3g} exceeds the float32 bound ({worst:.2f}x at worst)"


XLA = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")  # noqa: E731


@pytest.mark.parametrize("lq, lk, score_scale", [(300, 300, 1.0), (300, 300, 6.0), (200, 77, 1.0)])
def test_blockwise_forward_and_gradients_match_exact_attention(lq, lk, score_scale):
    # 300 tokens in blocks of 128 queries x 64 keys: padded queries and padded (masked) keys;
    # score_scale 6 makes the softmax peaked (scores up to ~25: the online maximum matters);
    # 200 x 77 is a cross-attention shape
    q, k, v, g = _inputs(2, lq, lk, 2, 16, score_scale=score_scale)
    blockwise = lambda q, k, v: blockwise_attention(q, k, v, block_q=128, block_k=64)  # noqa: E731
    _assert_within_bounds(_value_and_grads(XLA, q, k, v, g), q, k, v, g)  # the bound is not too tight
    _assert_within_bounds(_value_and_grads(blockwise, q, k, v, g), q, k, v, g)


def test_blockwise_bfloat16_is_within_bfloat16_rounding():
    q, k, v, g = (a.astype(jnp.bfloat16) for a in _inputs(1, 300, 300, 2, 16))
    results = _value_and_grads(lambda q, k, v: blockwise_attention(q, k, v, block_q=128, block_k=64), q, k, v, g)
    assert all(r.dtype == jnp.bfloat16 for r in results)
    exact = [a.astype(jnp.float32) for a in (q, k, v, g)]  # the bfloat16 inputs are the exact problem
    _assert_within_bounds(results, *exact, half_unit=2.0**-8)


def test_pallas_tpu_kernel_in_interpret_mode_matches_exact_attention():
    from jax.experimental.pallas import tpu as pltpu

    q, k, v, g = _inputs(1, 200, 200, 2, 16)  # padded to one 256-token block
    with pltpu.force_tpu_interpret_mode():
        results = _value_and_grads(lambda q, k, v: pallas_attention(q, k, v, block=128), q, k, v, g)
    _assert_within_bounds(results, q, k, v, g)


def test_blockwise_never_holds_the_score_matrix():
    # forward + backward of one self-attention over 4096 tokens (2 heads): XLA's program holds
    # the 4096^2 float32 scores per head (128 MiB); blockwise only 512^2 blocks
    q = jax.ShapeDtypeStruct((1, 4096, 2, 16), jnp.float32)
    scores_bytes = 4096 * 4096 * 2 * 4

    def temp_bytes(fn):
        step = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))
        return step.lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(XLA) >= scores_bytes
    assert temp_bytes(blockwise_attention) < scores_bytes / 8


def test_auto_picks_per_backend_and_explicit_choices_are_checked():
    pick = lambda backend, dtype=jnp.bfloat16, keys=16384, head_dim=64: resolve_implementation(  # noqa: E731
        "auto", backend=backend, dtype=dtype, num_keys=keys, head_dim=head_dim)
    assert pick("gpu") == "cudnn"
    assert pick("gpu", dtype=jnp.float32) == "blockwise"  # cuDNN flash attention is half precision only
    assert pick("tpu") == "pallas"
    assert pick("tpu", keys=77) == "xla"  # cross-attention to 77 context tokens: one block
    assert pick("cpu") == "blockwise"
    assert pick("cpu", keys=256) == "xla"  # one key block: the plain fused op
    assert resolve_implementation("blockwise", backend="gpu", dtype=jnp.bfloat16, num_keys=8, head_dim=64) == "blockwise"
    with pytest.raises(ValueError, match="must be one of"):
        resolve_implementation("flash", backend="cpu", dtype=jnp.float32, num_keys=8, head_dim=8)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        resolve_implementation("cudnn", backend="cpu", dtype=jnp.bfloat16, num_keys=8, head_dim=8)
    with pytest.raises(ValueError, match="TPU kernel"):
        resolve_implementation("pallas", backend="cpu", dtype=jnp.bfloat16, num_keys=8, head_dim=8)
    q = jnp.zeros((1, 600, 2, 8))
    with pytest.raises(ValueError, match="q must be"):
        dot_product_attention(q, q[:, :, :1], q)
    # on this CPU, auto over 600 keys is the blockwise path: same numbers as calling it directly
    np.testing.assert_array_equal(np.asarray(dot_product_attention(q + 1, q, q)), np.asarray(blockwise_attention(q + 1, q, q)))
