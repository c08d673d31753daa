"""Scaled dot-product attention that scales with the number of views.

The UNet's 3D self-attention sees every token of every view of a sample: 4 views of 64x64
latents are 16,384 tokens, whose score matrix (16,384^2 per head) is what XLA's plain
attention materialises (15 GiB forward + backward for one sd21 op, SPEC.md section 7). The
implementations here (`IMPLEMENTATIONS`) avoid it:

- ``"cudnn"``: cuDNN flash attention through `jax.nn.dot_product_attention` (NVIDIA GPUs,
  bfloat16/float16);
- ``"pallas"``: the Pallas TPU flash-attention kernel (`jax.experimental.pallas.ops.tpu`);
- ``"blockwise"``: plain JAX, every backend (CPU included): queries in blocks, an online
  softmax over key blocks, and a FlashAttention-style backward (`jax.custom_vjp`) that
  recomputes each score block from q, k and the saved log-sum-exp, so no [Lq, Lk] array is
  ever held;
- ``"xla"``: plain attention (`jax.nn.dot_product_attention(implementation="xla")`);
- ``"auto"``: cuDNN on GPU for half precision; otherwise XLA when the keys fit in one block
  (cross-attention, tiny models keep the one fused op), else Pallas on TPU and blockwise
  elsewhere.

Layout everywhere: ``[batch, tokens, heads, head_dim]`` (as `jax.nn.dot_product_attention`);
the softmax scale is ``1 / sqrt(head_dim)``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "pallas")
# Blocks of 512 keys and queries: a [heads, 512, 512] float32 score block per sample is 5 MiB
# for sd21's 5 heads, small against the activations, and large enough that each matmul
# keeps the hardware busy.
BLOCK_Q = 512
BLOCK_K = 512
# Pallas TPU kernel blocks: multiples of 128 (the TPU lane width).
PALLAS_BLOCK = 512


def check_implementation(implementation: str, where: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{where}: attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


def resolve_implementation(implementation: str, *, backend: str, dtype, num_keys: int, head_dim: int) -> str:
    """The concrete implementation `"auto"` stands for on `backend` (`jax.default_backend()`);
    an explicit choice is returned unchanged."""
    check_implementation(implementation, "attention")
    if implementation == "cudnn" and backend not in ("gpu", "cuda"):
        raise ValueError(f"attention 'cudnn' needs an NVIDIA GPU, the backend is {backend!r}: use 'auto' or 'blockwise'")
    if implementation == "pallas" and backend != "tpu":
        raise ValueError(f"attention 'pallas' is the TPU kernel, the backend is {backend!r}: use 'auto' or 'blockwise'")
    if implementation != "auto":
        return implementation
    if backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    if num_keys <= BLOCK_K:  # one key block (cross-attention, small models): the plain fused op
        return "xla"
    return "pallas" if backend == "tpu" else "blockwise"


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for ``q [B, Lq, H, D]``, ``k, v [B, Lk, H, D]``."""
    if q.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"attention: q must be [B, Lq, H, D] and k, v [B, Lk, H, D], got {q.shape}, {k.shape}, {v.shape}")
    choice = resolve_implementation(implementation, backend=jax.default_backend(), dtype=q.dtype, num_keys=k.shape[1], head_dim=q.shape[-1])
    if choice == "xla":
        return jax.nn.dot_product_attention(q, k, v, implementation="xla")
    if choice == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    if choice == "pallas":
        return pallas_attention(q, k, v)
    return blockwise_attention(q, k, v)


# --- blockwise attention in plain JAX ------------------------------------------------------------

def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block_q: int = BLOCK_Q, block_k: int = BLOCK_K) -> jax.Array:
    """Memory-efficient attention: peak extra memory is one [B, H, block_q, block_k] score block
    (forward and backward) instead of [B, H, Lq, Lk]. Sequences that are not a multiple of the
    block are padded (padded keys are masked out, padded queries dropped)."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bq, bk = min(block_q, lq), min(block_k, lk)
    pad_q, pad_k = -lq % bq, -lk % bk
    if pad_q:
        q = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    if pad_k:
        k = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    out = _flash(q, k, v, lk, bq, bk)
    return out[:, :lq] if pad_q else out


def _blocks(x: jax.Array, size: int) -> jax.Array:
    """[B, L, H, D] -> [L / size, B, H, size, D]."""
    b, length, h, d = x.shape
    return x.reshape(b, length // size, size, h, d).transpose(1, 0, 3, 2, 4)


def _unblocks(x: jax.Array) -> jax.Array:
    """[n, B, H, size, D] -> [B, n * size, H, D] (the inverse of `_blocks`)."""
    n, b, h, size, d = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, n * size, h, d)


def _scores(q_block, k_block, key_start, num_keys, scale):
    """Scaled float32 scores [B, H, bq, bk] with keys at or past `num_keys` (padding) at -inf."""
    s = jnp.einsum("bhqd,bhkd->bhqk", q_block, k_block, preferred_element_type=jnp.float32) * scale
    if num_keys % k_block.shape[2]:  # the last key block holds padding
        valid = key_start + jnp.arange(k_block.shape[2]) < num_keys
        s = jnp.where(valid, s, -jnp.inf)
    return s


def _forward(q, k, v, num_keys, bq, bk):
    scale = 1.0 / math.sqrt(q.shape[-1])
    kb, vb = _blocks(k, bk), _blocks(v, bk)
    starts = jnp.arange(kb.shape[0]) * bk

    def one_query_block(q_block):
        def step(carry, inputs):
            acc, row_max, row_sum = carry
            k_block, v_block, start = inputs
            s = _scores(q_block, k_block, start, num_keys, scale)
            new_max = jnp.maximum(row_max, s.max(axis=-1))
            p = jnp.exp(s - new_max[..., None])
            correction = jnp.exp(row_max - new_max)
            row_sum = row_sum * correction + p.sum(axis=-1)
            pv = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v_block, preferred_element_type=jnp.float32)
            return (acc * correction[..., None] + pv, new_max, row_sum), None

        shape = q_block.shape[:-1]
        init = (jnp.zeros(q_block.shape, jnp.float32), jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32))
        (acc, row_max, row_sum), _ = jax.lax.scan(step, init, (kb, vb, starts))
        return (acc / row_sum[..., None]).astype(q.dtype), row_max + jnp.log(row_sum)

    out, lse = jax.lax.map(one_query_block, _blocks(q, bq))
    return _unblocks(out), lse  # lse: [nq, B, H, bq] float32


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _flash(q, k, v, num_keys, bq, bk):
    return _forward(q, k, v, num_keys, bq, bk)[0]


def _flash_fwd(q, k, v, num_keys, bq, bk):
    out, lse = _forward(q, k, v, num_keys, bq, bk)
    return out, (q, k, v, out, lse)


def _flash_bwd(num_keys, bq, bk, residuals, g):
    """Per key block (outer scan), per query block (inner scan): recompute p from the scores
    and the saved log-sum-exp, then dv += p^T g, ds = p (g v^T - rowsum(g o)), dk += ds^T q,
    dq += ds k (all scaled by 1/sqrt(d) where the scores were)."""
    q, k, v, out, lse = residuals
    scale = 1.0 / math.sqrt(q.shape[-1])
    g = g.astype(q.dtype)
    delta = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, Lq, H]
    qb, gb = _blocks(q, bq), _blocks(g, bq)
    delta_b = delta.reshape(delta.shape[0], -1, bq, delta.shape[2]).transpose(1, 0, 3, 2)  # [nq, B, H, bq]
    kb, vb = _blocks(k, bk), _blocks(v, bk)

    def one_key_block(dq, inputs):
        k_block, v_block, start = inputs

        def step(carry, inputs):
            dk, dv = carry
            q_block, g_block, lse_block, delta_block = inputs
            p = jnp.exp(_scores(q_block, k_block, start, num_keys, scale) - lse_block[..., None])
            dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p.astype(g.dtype), g_block, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bhqd,bhkd->bhqk", g_block, v_block, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta_block[..., None]) * scale).astype(q.dtype)
            dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds, q_block, preferred_element_type=jnp.float32)
            dq_block = jnp.einsum("bhqk,bhkd->bhqd", ds, k_block, preferred_element_type=jnp.float32)
            return (dk, dv), dq_block

        zeros = jnp.zeros(k_block.shape, jnp.float32)
        (dk, dv), dq_blocks = jax.lax.scan(step, (zeros, zeros), (qb, gb, lse, delta_b))
        return dq + dq_blocks, (dk, dv)

    dq0 = jnp.zeros(qb.shape, jnp.float32)
    dq, (dk, dv) = jax.lax.scan(one_key_block, dq0, (kb, vb, jnp.arange(kb.shape[0]) * bk))
    return _unblocks(dq).astype(q.dtype), _unblocks(dk).astype(k.dtype), _unblocks(dv).astype(v.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


# --- Pallas (TPU) --------------------------------------------------------------------------------

def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block: int = PALLAS_BLOCK) -> jax.Array:
    """The Pallas TPU flash-attention kernel (forward and backward kernels). Sequences are
    padded to a multiple of the block; padded keys get their own segment id, so no query
    attends to them. Off TPU it runs only when traced and differentiated inside
    `jax.experimental.pallas.tpu.force_tpu_interpret_mode()` (slow; for tests)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

    b, lq, h, d = q.shape
    lk = k.shape[1]
    bq, bk = min(block, _round_up(lq, 128)), min(block, _round_up(lk, 128))
    pad_q, pad_k = -lq % bq, -lk % bk
    to_heads_first = lambda x, pad: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)  # noqa: E731
    qh, kh, vh = to_heads_first(q, pad_q), to_heads_first(k, pad_k), to_heads_first(v, pad_k)
    segment_ids = None
    if pad_k:  # padded keys in segment 1, every query in segment 0 (padded queries see real keys: no empty row)
        kv_ids = jnp.broadcast_to((jnp.arange(lk + pad_k) >= lk).astype(jnp.int32), (b, lk + pad_k))
        segment_ids = tpu_flash.SegmentIds(q=jnp.zeros((b, lq + pad_q), jnp.int32), kv=kv_ids)
    sizes = tpu_flash.BlockSizes(
        block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
        block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq,
        block_k_major_dq=bk, block_k_dq=bk, block_q_dq=bq,
    )
    out = tpu_flash.flash_attention(qh, kh, vh, segment_ids=segment_ids, sm_scale=1.0 / math.sqrt(d), block_sizes=sizes)
    return out.transpose(0, 2, 1, 3)[:, :lq]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
