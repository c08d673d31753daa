"""DDIM sampling with See3D's visual-condition guidance (torch side, on diffusers' DDIMScheduler).

The same math and names as `see3d_jax.sampling`. Torch layout: latents [B, V, C, h, w], masks
[B, V, 1, h, w] with 1 = known, `is_reference` bool [B, V]. The model function is

    model_fn(x_t, condition, mask, t, context) -> output      # output like x_t

with t int64 [B] and `context` a tensor (or None) with the batch on dim 0; its output is
epsilon, v or x0 as the scheduler's `prediction_type` says. Guidance acts on the visual
condition only: the unconditional branch has V = 0 and M = 0 on targets (references kept), and

    output = (1 + s) output(V, M) - s output(V = 0, M = 0)        (s = 2 base, 1 SR)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from see3d_core.diffusion import DDIMConfig, ddim_timesteps  # defined once
from see3d_torch.condition import RELEASED, ConditionConfig, visual_condition

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _check_scheduler(scheduler, config: DDIMConfig) -> None:
    c = scheduler.config
    wanted = {
        "timestep_spacing": config.timestep_spacing,
        "prediction_type": config.prediction_type,
        "set_alpha_to_one": config.set_alpha_to_one,
        "steps_offset": config.steps_offset,
        "clip_sample": config.clip_sample is not None,
    }
    wrong = {k: (c[k], v) for k, v in wanted.items() if c[k] != v}
    if getattr(c, "thresholding", False):
        wrong["thresholding"] = (True, False)
    if wrong:
        raise ValueError(
            "sample: the scheduler's config disagrees with the DDIMConfig (scheduler, config): "
            f"{wrong}; build both with make_ddim_scheduler or use DDIMConfig.from_scheduler"
        )


def unconditional_inputs(condition, mask, is_reference):
    """The guidance branch without visual condition: V = 0 and M = 0 on targets, references kept."""
    ref = is_reference[:, :, None, None, None].to(condition.device)
    return torch.where(ref, condition, torch.zeros_like(condition)), torch.where(ref, mask, torch.zeros_like(mask))


def guided_model_output(model_fn: ModelFn, x_t, condition, mask, is_reference, t, context, guidance_scale: float):
    """(1 + s) model(V, M) - s model(V=0, M=0 on targets), both branches in one batched call."""
    if guidance_scale == 0.0:
        return model_fn(x_t, condition, mask, t, context)
    u_condition, u_mask = unconditional_inputs(condition, mask, is_reference)
    out = model_fn(
        torch.cat([x_t, x_t]),
        torch.cat([condition, u_condition]),
        torch.cat([mask, u_mask]),
        torch.cat([t, t]),
        None if context is None else torch.cat([context, context]),
    )
    cond, uncond = out.chunk(2)
    return (1.0 + guidance_scale) * cond - guidance_scale * uncond


@dataclasses.dataclass(frozen=True)
class SamplerNoise:
    """All randomness of one sampling run: initial x_T [B, V, C, h, w]; condition
    [S, B, V, C, h, w] (fresh eps' for C_t at each of the S steps); step [S, ...] (DDIM noise,
    used only when eta > 0)."""

    initial: torch.Tensor
    condition: torch.Tensor
    step: torch.Tensor

    @classmethod
    def draw(cls, generator: torch.Generator, num_steps: int, shape, dtype=torch.float32, device="cpu") -> "SamplerNoise":
        def normal(s):
            return torch.randn(s, generator=generator, dtype=dtype, device=device)

        shape = tuple(shape)
        return cls(initial=normal(shape), condition=normal((num_steps,) + shape), step=normal((num_steps,) + shape))


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    scheduler,
    condition_latents: torch.Tensor,
    masks: torch.Tensor,
    is_reference: torch.Tensor,
    noise: SamplerNoise,
    context: Any = None,
    config: DDIMConfig = DDIMConfig(),
    condition_config: ConditionConfig = RELEASED,
    return_trajectory: bool = False,
):
    """Generate the target views with DDIM (diffusers' DDIMScheduler.step).

    scheduler: a DDIMScheduler whose config matches `config` (make_ddim_scheduler, or a loaded
        one with DDIMConfig.from_scheduler). condition_latents [B, V, C, h, w]: clean latents of
        references, latents of warped images (holes black before encoding) of targets.
    masks [B, V, 1, h, w] (1 = known), is_reference bool [B, V], noise: `SamplerNoise.draw(...)`
        (pass a seeded torch.Generator: runs are reproducible).
    Every step: references are imposed on x_t, the condition is rebuilt with fresh noise at
    t' = f(t) and mixed with x_t, the guided output drives one DDIM step. Returns the final
    latents [B, V, C, h, w] (references equal their latents) and, with return_trajectory, also
    x_t before each step stacked [S, B, V, C, h, w].
    """
    _check_scheduler(scheduler, config)
    scheduler.set_timesteps(config.num_inference_steps)
    timesteps = ddim_timesteps(config, scheduler.config.num_train_timesteps)
    if not config.released_timesteps and not (timesteps == scheduler.timesteps.cpu().numpy()).all():
        raise ValueError(f"sample: the scheduler's timesteps {scheduler.timesteps.tolist()} differ from the config's {timesteps.tolist()}")
    if noise.condition.shape[0] != len(timesteps):
        raise ValueError(
            f"sample: noise has {noise.condition.shape[0]} steps, the sampler runs {len(timesteps)} "
            "(draw it with SamplerNoise.draw(generator, num_sampler_steps(config), shape))"
        )
    if condition_latents.shape != noise.initial.shape:
        raise ValueError(f"sample: condition_latents {tuple(condition_latents.shape)} and noise {tuple(noise.initial.shape)} differ")
    ref = is_reference[:, :, None, None, None].to(condition_latents.device)
    batch = condition_latents.shape[0]
    x_t = noise.initial
    trajectory = []
    for i, t in enumerate(timesteps.tolist()):  # diffusers' step() moves each by T // n, whatever the list
        x_t = torch.where(ref, condition_latents, x_t)
        trajectory.append(x_t)
        t_batch = torch.full((batch,), int(t), dtype=torch.long, device=x_t.device)
        condition, mask = visual_condition(
            scheduler, x_t, condition_latents, masks, is_reference, t_batch, noise.condition[i], condition_config
        )
        output = guided_model_output(model_fn, x_t, condition, mask, is_reference, t_batch, context, config.guidance_scale)
        x_t = scheduler.step(
            output, int(t), x_t, eta=config.eta, variance_noise=noise.step[i] if config.eta > 0 else None
        ).prev_sample
    final = torch.where(ref, condition_latents, x_t)
    return (final, torch.stack(trajectory)) if return_trajectory else final
