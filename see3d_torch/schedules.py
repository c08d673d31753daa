"""Noise schedules of the diffusion process (torch side), on diffusers' `DDIMScheduler`.

Same math and names as `see3d_jax.schedules` (the two sides never import each other):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                      (add_noise)
    v_t = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0                       (velocity)

The schedule object here is a diffusers `DDIMScheduler` (its `alphas_cumprod` table); build it
with `make_ddim_scheduler` or load the released one with
`DDIMScheduler.from_pretrained(checkpoint, subfolder="scheduler")`. Functions take integer
timesteps `t` of shape [B] (or a scalar) and tensors [B, ...] (e.g. [B, V, C, H, W]).
"""

from __future__ import annotations

import torch

from see3d_core.diffusion import (  # the configs are defined once, in see3d_core
    PREDICTION_TYPES,
    PredictionType,
    ScheduleConfig,
)


def make_ddim_scheduler(schedule: ScheduleConfig = ScheduleConfig.see3d(), sampler=None):
    """A diffusers `DDIMScheduler` for `schedule` and the sampler settings of `sampler`
    (a `see3d_torch.sampling.DDIMConfig`; its defaults when None)."""
    from diffusers import DDIMScheduler

    from see3d_torch.sampling import DDIMConfig

    sampler = sampler or DDIMConfig()
    return DDIMScheduler(
        **schedule.to_diffusers_kwargs(),
        prediction_type=sampler.prediction_type,
        timestep_spacing=sampler.timestep_spacing,
        set_alpha_to_one=sampler.set_alpha_to_one,
        steps_offset=sampler.steps_offset,
        clip_sample=sampler.clip_sample is not None,
        clip_sample_range=1.0 if sampler.clip_sample is None else float(sampler.clip_sample),
    )


def alpha_sigma(scheduler, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) for integer timesteps t, shaped to broadcast with `like`."""
    abar = scheduler.alphas_cumprod.to(like.device)[torch.as_tensor(t, device=like.device).long()]
    abar = abar.to(like.dtype)
    shape = abar.shape + (1,) * (like.ndim - abar.ndim) if abar.ndim else abar.shape
    return abar.sqrt().reshape(shape), (1.0 - abar).sqrt().reshape(shape)


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise [B, ...], t int [B] or scalar."""
    a, s = alpha_sigma(scheduler, t, x0)
    return a * x0 + s * noise


def velocity(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v_t = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (the v-prediction target)."""
    a, s = alpha_sigma(scheduler, t, x0)
    return a * noise - s * x0


def training_target(scheduler, x0, noise, t, prediction_type: PredictionType) -> torch.Tensor:
    """What a model of `prediction_type` should output for x_t = add_noise(x0, noise, t)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(scheduler, x0, noise, t)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")


def split_prediction(scheduler, x_t, t, model_output, prediction_type: PredictionType):
    """Convert a model output to (predicted x0, predicted eps) given x_t at timestep t."""
    a, s = alpha_sigma(scheduler, t, x_t)
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output, a * model_output + s * x_t
    if prediction_type == "sample":
        return model_output, (x_t - a * model_output) / s
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
