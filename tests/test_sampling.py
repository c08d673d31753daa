"""DDIM (JAX and torch) against diffusers, guidance on the visual condition, JAX/torch parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from see3d_core import diffusion
from see3d_jax import sampling as jsamp, schedules as js
from see3d_torch import sampling as tsamp, schedules as ts


F32_UNIT_ROUNDOFF = 2.0**-24


def _to_torch_layout(a):  # [..., H, W, C] -> [..., C, H, W]
    return torch.tensor(np.moveaxis(np.asarray(a), -1, -3))


def _to_jax_layout(a):
    return jnp.asarray(np.moveaxis(a.numpy(), -3, -1))


@pytest.mark.parametrize(
    "spacing,steps,offset",
    [("leading", 50, 1), ("leading", 30, 0), ("trailing", 50, 0), ("trailing", 30, 0), ("trailing", 7, 0), ("linspace", 25, 0)],
)
def test_timesteps_match_diffusers(spacing, steps, offset):
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(steps)
    ours = jsamp.ddim_timesteps(jsamp.DDIMConfig(num_inference_steps=steps, timestep_spacing=spacing, steps_offset=offset))
    np.testing.assert_array_equal(ours, ref.timesteps.numpy())
    if spacing == "trailing" and steps == 50:
        assert ours[0] == 999 and ours[1] == 979 and ours[-1] == 19


STEP_CASES = [
    # (prediction, spacing, zero_snr, eta, set_alpha_to_one, clip)
    ("v_prediction", "trailing", True, 0.0, True, None),
    ("v_prediction", "trailing", True, 0.6, False, None),
    ("epsilon", "leading", False, 0.0, False, 1.0),
    ("epsilon", "leading", False, 1.0, True, None),
    ("sample", "trailing", False, 0.3, True, None),
]


@pytest.mark.parametrize("prediction,spacing,zero_snr,eta,alpha_one,clip", STEP_CASES)
def test_ddim_step_matches_diffusers(prediction, spacing, zero_snr, eta, alpha_one, clip):
    config = jsamp.DDIMConfig(
        num_inference_steps=20, timestep_spacing=spacing, eta=eta, prediction_type=prediction,
        set_alpha_to_one=alpha_one, clip_sample=clip,
    )
    sconf = js.ScheduleConfig(rescale_zero_terminal_snr=zero_snr)
    ref = ts.make_ddim_scheduler(ts.ScheduleConfig(rescale_zero_terminal_snr=zero_snr), tsamp.DDIMConfig(**vars(config)))
    ref.set_timesteps(20)
    # Our float64-built table equals diffusers' float32 one to 6e-7 (test_schedules); the last
    # steps amplify that to ~3e-6, so the step math is checked here on diffusers' own table.
    np.testing.assert_allclose(np.asarray(js.make_noise_schedule(sconf).alphas_cumprod), ref.alphas_cumprod.numpy(), atol=1e-6)
    schedule = js.NoiseSchedule(betas=jnp.asarray(ref.betas.numpy()), alphas_cumprod=jnp.asarray(ref.alphas_cumprod.numpy()))
    table = ref.alphas_cumprod.numpy()
    timesteps = jsamp.ddim_timesteps(config)
    np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())
    prev = jsamp.previous_timesteps(timesteps, config)
    rng = np.random.default_rng(0)
    step = jax.jit(lambda out, t, tp, x, n: jsamp.ddim_step(schedule, out, t, tp, x, config, n))
    for i in [0, 1, 10, len(timesteps) - 1]:  # includes the first (t = 999) and the last (t_prev < 0) steps
        x = rng.normal(size=(2, 3, 4, 4, 4)).astype(np.float32)
        out = rng.normal(size=x.shape).astype(np.float32)
        noise = rng.normal(size=x.shape).astype(np.float32)
        want = ref.step(torch.tensor(out), int(timesteps[i]), torch.tensor(x), eta=eta, variance_noise=torch.tensor(noise) if eta > 0 else None)
        got, x0_hat = step(jnp.asarray(out), timesteps[i], prev[i], jnp.asarray(x), jnp.asarray(noise))
        # both float32 implementations within the derived rounding bound of the float64 reference:
        # x0 = (x - s out) / a is ill-conditioned when a is small (|x0| reaches ~25 here)
        ref_prev, ref_x0 = diffusion.ddim_step(table, out, int(timesteps[i]), int(prev[i]), x, config, noise)
        bound_x0, bound_eps = diffusion.split_prediction_rounding_bound(table, x, int(timesteps[i]), out, prediction, F32_UNIT_ROUNDOFF)
        a_prev = np.sqrt(table[prev[i]] if prev[i] >= 0 else (1.0 if alpha_one else table[0]))
        bound_prev = a_prev * bound_x0 + bound_eps + 8 * F32_UNIT_ROUNDOFF * (np.abs(ref_prev) + np.abs(noise) + a_prev * np.abs(ref_x0))
        for name, (x_prev, x0) in {"jax": (got, x0_hat), "diffusers": (want.prev_sample, want.pred_original_sample)}.items():
            assert np.all(np.abs(np.asarray(x0, np.float64) - ref_x0) <= bound_x0), name
            assert np.all(np.abs(np.asarray(x_prev, np.float64) - ref_prev) <= bound_prev), name


def _oracle_v(schedule_abar, target):
    """A perfect v-model for data concentrated at `target` (any layout)."""
    def model(x_t, condition, mask, t, context):
        abar = schedule_abar[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
        a, s = abar**0.5, (1 - abar) ** 0.5
        eps = (x_t - a * target) / jnp.maximum(s, 1e-12) if isinstance(x_t, jax.Array) else (x_t - a * target) / s.clamp(min=1e-12)
        return a * eps - s * target
    return model


def test_sampler_with_an_oracle_model_lands_on_the_data():
    schedule = js.make_noise_schedule(js.ScheduleConfig.see3d())
    config = jsamp.DDIMConfig(num_inference_steps=12, guidance_scale=0.0)
    shape = (1, 3, 4, 4, 2)
    target = jax.random.normal(jax.random.key(7), shape)
    latents = jnp.where(jnp.arange(3)[None, :, None, None, None] == 0, target, 0.0)
    is_ref = jnp.array([[True, False, False]])
    noise = jsamp.SamplerNoise.draw(jax.random.key(1), 12, shape)
    out = jsamp.sample(_oracle_v(schedule.alphas_cumprod, target), schedule, latents, jnp.zeros(shape[:-1] + (1,)), is_ref, noise, config=config)
    np.testing.assert_allclose(np.asarray(out), np.asarray(target), atol=1e-4)


def test_guidance_uses_zero_condition_and_mask_on_targets_only():
    is_ref = jnp.array([[True, False, False], [False, True, False]])
    condition = jax.random.normal(jax.random.key(0), (2, 3, 2, 2, 4))
    mask = jnp.full((2, 3, 2, 2, 1), 0.5)
    model = lambda x, v, m, t, c: v + m + c[:, None, None, None, :1]  # context broadcast per sample
    context = jnp.array([[1.0], [2.0]])
    out = jsamp.guided_model_output(model, condition, condition, mask, is_ref, jnp.array([5, 5]), context, 2.0)
    ref = is_ref[:, :, None, None, None]
    want = jnp.where(ref, condition + mask + context[:, None, None, None, :1], 3.0 * (condition + mask) + context[:, None, None, None, :1])
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-6)
    tout = tsamp.guided_model_output(
        lambda x, v, m, t, c: v + m + c[:, None, None, None, :1],
        _to_torch_layout(condition), _to_torch_layout(condition), _to_torch_layout(mask), torch.tensor(np.asarray(is_ref)),
        torch.tensor([5, 5]), torch.tensor(np.asarray(context)), 2.0,
    )
    np.testing.assert_allclose(np.moveaxis(tout.numpy(), -3, -1), np.asarray(want), atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_jax_and_torch_trajectories_agree(eta):
    """Same inputs and noise: the whole guided DDIM trajectory agrees within 1e-5."""
    steps = 8
    config = dict(num_inference_steps=steps, eta=eta, guidance_scale=2.0)
    schedule = js.make_noise_schedule(js.ScheduleConfig.see3d())
    scheduler = ts.make_ddim_scheduler(ts.ScheduleConfig.see3d(), tsamp.DDIMConfig(**config))
    B, V, H, W, C = 2, 3, 4, 4, 4
    k = jax.random.split(jax.random.key(3), 3)
    latents = jax.random.normal(k[0], (B, V, H, W, C))
    masks = (jax.random.uniform(k[1], (B, V, H, W, 1)) > 0.4).astype(jnp.float32)
    is_ref = jnp.array([[True, False, False], [True, True, False]])
    noise = jsamp.SamplerNoise.draw(k[2], steps, (B, V, H, W, C))
    context = jnp.array([[0.3], [-0.2]])
    mix = jax.random.normal(jax.random.key(9), (3 * C + 1, C)) * 0.3

    def jax_model(x, v, m, t, c):
        feats = jnp.concatenate([x, v, jnp.tanh(x * v), m], -1)
        return feats @ mix + 0.001 * t.astype(jnp.float32)[:, None, None, None, None] + c[:, None, None, None, :]

    tmix = torch.tensor(np.asarray(mix))

    def torch_model(x, v, m, t, c):
        feats = torch.cat([x, v, torch.tanh(x * v), m], 2).movedim(2, -1)
        return (feats @ tmix).movedim(-1, 2) + 0.001 * t.float()[:, None, None, None, None] + c[:, None, None, None, None]

    run = jax.jit(lambda n: jsamp.sample(jax_model, schedule, latents, masks, is_ref, n, context, jsamp.DDIMConfig(**config), return_trajectory=True))
    final, trajectory = run(noise)
    tnoise = tsamp.SamplerNoise(initial=_to_torch_layout(noise.initial), condition=_to_torch_layout(noise.condition), step=_to_torch_layout(noise.step))
    tfinal, ttrajectory = tsamp.sample(
        torch_model, scheduler, _to_torch_layout(latents), _to_torch_layout(masks), torch.tensor(np.asarray(is_ref)),
        tnoise, torch.tensor(np.asarray(context))[:, 0], tsamp.DDIMConfig(**config), return_trajectory=True,
    )
    np.testing.assert_allclose(np.asarray(trajectory), np.moveaxis(ttrajectory.numpy(), -3, -1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(final), np.moveaxis(tfinal.numpy(), -3, -1), rtol=0, atol=1e-5)
    # references are imposed: they come out as their clean latents; targets moved away from noise
    np.testing.assert_array_equal(np.asarray(final)[np.asarray(is_ref)], np.asarray(latents)[np.asarray(is_ref)])
    assert np.abs(np.asarray(final) - np.asarray(noise.initial)).mean() > 0.1


def test_torch_sampler_refuses_a_mismatched_scheduler():
    scheduler = DDIMScheduler(prediction_type="epsilon")
    with pytest.raises(ValueError, match="prediction_type"):
        tsamp.sample(lambda *a: a[0], scheduler, torch.zeros(1, 2, 4, 2, 2), torch.ones(1, 2, 1, 2, 2), torch.tensor([[True, False]]),
                     tsamp.SamplerNoise.draw(torch.Generator().manual_seed(0), 50, (1, 2, 4, 2, 2)))
    assert tsamp.DDIMConfig.from_scheduler(scheduler, num_inference_steps=5).prediction_type == "epsilon"
    with pytest.raises(ValueError, match="timestep_spacing"):
        jsamp.DDIMConfig(timestep_spacing="karras")
