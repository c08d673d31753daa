"""Noise schedules of the diffusion process (JAX side).

A schedule is the table `alphas_cumprod[t]` (written abar_t) for integer timesteps
t in [0, T-1]. Forward process:

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                      (add_noise)
    v_t = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0                       (velocity)

The tables are built once in numpy (float64, `see3d_core.diffusion`, then stored as float32) so they equal diffusers'
`DDIMScheduler` tables to ~1e-7, and live in a small pytree (`NoiseSchedule`) that can be
passed through `jax.jit`. Every function below takes integer timesteps `t` of shape [B]
(or a scalar) and data of shape [B, ...] (e.g. [B, V, H, W, C]); the per-timestep
coefficients broadcast over all trailing axes.

The released See3D weights use the SD schedule (`scaled_linear`, 0.00085..0.012, 1000 steps)
with zero-terminal-SNR rescaling: `make_noise_schedule(ScheduleConfig.see3d())`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from see3d_core.diffusion import (  # the configs and the float64 tables are defined once, in see3d_core
    PREDICTION_TYPES,
    PredictionType,
    ScheduleConfig,
    beta_table,
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The tables of a schedule: `betas` [T] and `alphas_cumprod` [T] (abar_t), float32."""

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])


def make_noise_schedule(config: ScheduleConfig = ScheduleConfig.see3d()) -> NoiseSchedule:
    """Build the schedule tables (float32 jax arrays) from `config`."""
    betas = beta_table(config)
    abar = np.cumprod(1.0 - betas)
    return NoiseSchedule(betas=jnp.asarray(betas, jnp.float32), alphas_cumprod=jnp.asarray(abar, jnp.float32))


def _per_sample(values: jax.Array, like: jax.Array) -> jax.Array:
    """Reshape per-sample coefficients [B] (or a scalar) to broadcast against `like` [B, ...]."""
    values = jnp.asarray(values, like.dtype)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def alpha_sigma(schedule: NoiseSchedule, t: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) for integer timesteps t, shaped to broadcast with `like`."""
    abar = schedule.alphas_cumprod[jnp.asarray(t, jnp.int32)]
    return _per_sample(jnp.sqrt(abar), like), _per_sample(jnp.sqrt(1.0 - abar), like)


def add_noise(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise [B, ...], t int [B] or scalar."""
    a, s = alpha_sigma(schedule, t, x0)
    return a * x0 + s * noise


def velocity(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """v_t = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (the v-prediction target)."""
    a, s = alpha_sigma(schedule, t, x0)
    return a * noise - s * x0


def training_target(
    schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array, prediction_type: PredictionType
) -> jax.Array:
    """What a model of `prediction_type` should output for x_t = add_noise(x0, noise, t)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(schedule, x0, noise, t)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")


def min_snr_loss_weight(
    schedule: NoiseSchedule, t: jax.Array, prediction_type: PredictionType, gamma: float
) -> jax.Array:
    """Per-sample loss weights [B] of Min-SNR-gamma (Hang et al., ICCV 2023).

    A plain MSE on the model's output weights the x0 error by SNR (epsilon), SNR + 1 (v) or 1
    (sample); Min-SNR caps that x0-space weight at gamma, so the many easy low-noise steps stop
    dominating the gradient. The weight relative to the plain loss is min(1, gamma / w_x0).
    With a zero-terminal-SNR schedule the v form keeps weight 1 at t = T-1 (SNR + 1 >= 1),
    where the epsilon form of the paper would give 0.
    """
    if gamma <= 0:
        raise ValueError(f"min_snr_loss_weight: gamma must be > 0, got {gamma}")
    abar = schedule.alphas_cumprod[jnp.asarray(t, jnp.int32)]
    snr = abar / jnp.maximum(1.0 - abar, 1e-12)
    if prediction_type == "epsilon":
        x0_weight = snr
    elif prediction_type == "v_prediction":
        x0_weight = snr + 1.0
    elif prediction_type == "sample":
        x0_weight = jnp.ones_like(snr)
    else:
        raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return jnp.minimum(1.0, gamma / jnp.maximum(x0_weight, 1e-12))


def split_prediction(
    schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, model_output: jax.Array, prediction_type: PredictionType
) -> tuple[jax.Array, jax.Array]:
    """Convert a model output to (predicted x0, predicted eps) given x_t at timestep t.

    epsilon:      x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar)
    v_prediction: x0 = sqrt(abar) x_t - sqrt(1-abar) v,  eps = sqrt(abar) v + sqrt(1-abar) x_t
    sample:       eps = (x_t - sqrt(abar) x0) / sqrt(1-abar)
    (epsilon is undefined where abar = 0, i.e. t = T-1 under zero terminal SNR: use v.)
    """
    a, s = alpha_sigma(schedule, t, x_t)
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output, a * model_output + s * x_t
    if prediction_type == "sample":
        return model_output, (x_t - a * model_output) / s
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
