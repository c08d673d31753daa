"""DDIM sampling with See3D's visual-condition guidance (JAX side).

Conventions: latents [B, V, h, w, C] channels-last, masks [B, V, h, w, 1] with 1 = known,
`is_reference` bool [B, V], timesteps int32.

The model function has the signature

    model_fn(x_t, condition, mask, t, context) -> output      # output like x_t

with x_t, condition [B, V, h, w, C], mask [B, V, h, w, 1], t int32 [B] and `context` any
pytree whose leaves have the batch on axis 0 (or None). Its output is epsilon, v or x0 as
`DDIMConfig.prediction_type` says. The UNet input is cat([x_t, condition, mask], -1).

One DDIM step (Song et al. Eq. 12, as diffusers' DDIMScheduler):

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
    sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)

Guidance acts on the visual condition only: the unconditional branch has V = 0 and M = 0 on
target views (references unchanged, same context), and

    output = (1 + s) output(V, M) - s output(V = 0, M = 0)        (s = 2 base, 1 SR)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from see3d_core.diffusion import DDIMConfig, ddim_timesteps, previous_timesteps  # defined once
from see3d_jax.condition import RELEASED, ConditionConfig, visual_condition
from see3d_jax.schedules import NoiseSchedule, split_prediction

ModelFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, Any], jax.Array]


def ddim_step(
    schedule: NoiseSchedule,
    model_output: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    x_t: jax.Array,
    config: DDIMConfig,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One DDIM update from t to t_prev. Returns (x_prev, x0_hat), both like x_t.

    t, t_prev: int scalars or [B]; t_prev < 0 uses the final abar (see `DDIMConfig`).
    noise: like x_t, needed when config.eta > 0.
    """
    abar = schedule.alphas_cumprod
    final = jnp.float32(1.0) if config.set_alpha_to_one else abar[0]
    t_prev = jnp.asarray(t_prev, jnp.int32)
    abar_t = abar[jnp.asarray(t, jnp.int32)]
    abar_prev = jnp.where(t_prev >= 0, abar[jnp.maximum(t_prev, 0)], final)
    x0_hat, eps_hat = split_prediction(schedule, x_t, t, model_output, config.prediction_type)
    if config.clip_sample is not None:
        x0_hat = jnp.clip(x0_hat, -config.clip_sample, config.clip_sample)
    variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
    sigma = config.eta * jnp.sqrt(variance)

    def per_sample(a):
        a = jnp.asarray(a, x_t.dtype)
        return a if a.ndim == 0 else a.reshape(a.shape + (1,) * (x_t.ndim - a.ndim))

    abar_prev_b, sigma_b = per_sample(abar_prev), per_sample(sigma)
    x_prev = jnp.sqrt(abar_prev_b) * x0_hat + jnp.sqrt(1.0 - abar_prev_b - sigma_b**2) * eps_hat
    if config.eta > 0:
        if noise is None:
            raise ValueError("ddim_step: eta > 0 needs `noise` (shape of x_t)")
        x_prev = x_prev + sigma_b * noise
    return x_prev, x0_hat


def unconditional_inputs(condition: jax.Array, mask: jax.Array, is_reference: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The guidance branch without visual condition: V = 0 and M = 0 on targets, references kept."""
    ref = is_reference[:, :, None, None, None]
    return jnp.where(ref, condition, 0.0), jnp.where(ref, mask, 0.0)


def guided_model_output(
    model_fn: ModelFn,
    x_t: jax.Array,
    condition: jax.Array,
    mask: jax.Array,
    is_reference: jax.Array,
    t: jax.Array,
    context: Any,
    guidance_scale: float,
) -> jax.Array:
    """(1 + s) model(V, M) - s model(V=0, M=0 on targets), both branches in one batched call."""
    if guidance_scale == 0.0:
        return model_fn(x_t, condition, mask, t, context)
    u_condition, u_mask = unconditional_inputs(condition, mask, is_reference)
    double = lambda a, b: jnp.concatenate([a, b], axis=0)
    out = model_fn(
        double(x_t, x_t),
        double(condition, u_condition),
        double(mask, u_mask),
        double(t, t),
        jax.tree_util.tree_map(lambda c: double(c, c), context),
    )
    cond, uncond = jnp.split(out, 2, axis=0)
    return (1.0 + guidance_scale) * cond - guidance_scale * uncond


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplerNoise:
    """All randomness of one sampling run, so runs can be replayed (and compared with torch).

    initial: x_T [B, V, h, w, C]; condition: [S, B, V, h, w, C] (fresh eps' for C_t at each of
    the S steps); step: [S, B, V, h, w, C] (DDIM noise, used only when eta > 0).
    """

    initial: jax.Array
    condition: jax.Array
    step: jax.Array

    @classmethod
    def draw(cls, key: jax.Array, num_steps: int, shape: tuple[int, ...], dtype=jnp.float32) -> "SamplerNoise":
        k0, k1, k2 = jax.random.split(key, 3)
        return cls(
            initial=jax.random.normal(k0, shape, dtype),
            condition=jax.random.normal(k1, (num_steps,) + tuple(shape), dtype),
            step=jax.random.normal(k2, (num_steps,) + tuple(shape), dtype),
        )


def sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    condition_latents: jax.Array,
    masks: jax.Array,
    is_reference: jax.Array,
    noise: SamplerNoise,
    context: Any = None,
    config: DDIMConfig = DDIMConfig(),
    condition_config: ConditionConfig = RELEASED,
    return_trajectory: bool = False,
):
    """Generate the target views with DDIM; the loop is one `jax.lax.scan` (jit the caller).

    condition_latents: [B, V, h, w, C]: clean latents of reference views, latents of the warped
        images (holes black before encoding) of target views (Eq. 20; no random masking).
    masks: [B, V, h, w, 1], 1 = known (forced to 1 on references).
    is_reference: bool [B, V]. noise: `SamplerNoise.draw(key, config.num_inference_steps, shape)`.
    context: passed to model_fn unchanged (e.g. [B, 77, 1024] text + image embedding).

    Every step: references are imposed on x_t (their clean latents), the condition is rebuilt
    with fresh noise at t' = f(t) and mixed with x_t (`visual_condition`), the guided model
    output drives one DDIM step. Returns the final x0 [B, V, h, w, C] (references equal to their
    latents) and, with return_trajectory, also x_t before each step stacked [S, B, V, h, w, C].
    """
    timesteps = ddim_timesteps(config, schedule.num_train_timesteps)
    prev = previous_timesteps(timesteps, config, schedule.num_train_timesteps)
    if noise.condition.shape[0] != len(timesteps):
        raise ValueError(
            f"sample: noise has {noise.condition.shape[0]} steps, the sampler runs {len(timesteps)} "
            "(draw it with SamplerNoise.draw(key, config.num_inference_steps, shape))"
        )
    if condition_latents.shape != noise.initial.shape:
        raise ValueError(f"sample: condition_latents {condition_latents.shape} and noise {noise.initial.shape} differ")
    ref = is_reference[:, :, None, None, None]
    batch = condition_latents.shape[0]

    def step(x_t, inputs):
        t, t_prev, condition_noise, step_noise = inputs
        x_t = jnp.where(ref, condition_latents, x_t)
        t_batch = jnp.full((batch,), t, jnp.int32)
        condition, mask = visual_condition(
            schedule, x_t, condition_latents, masks, is_reference, t_batch, condition_noise, condition_config
        )
        output = guided_model_output(model_fn, x_t, condition, mask, is_reference, t_batch, context, config.guidance_scale)
        x_prev, _ = ddim_step(schedule, output, t, t_prev, x_t, config, step_noise)
        return x_prev, x_t

    final, trajectory = jax.lax.scan(
        step, noise.initial, (jnp.asarray(timesteps, jnp.int32), jnp.asarray(prev, jnp.int32), noise.condition, noise.step)
    )
    final = jnp.where(ref, condition_latents, final)
    return (final, trajectory) if return_trajectory else final
