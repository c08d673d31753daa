"""Noise schedules (JAX and torch) against diffusers' DDIMScheduler."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

import jax.numpy as jnp
from see3d_core import diffusion
from see3d_jax import schedules as js
from see3d_torch import schedules as ts

DIFFUSERS_NAMES = {"scaled_linear": "scaled_linear", "linear": "linear", "cosine": "squaredcos_cap_v2"}
CASES = [
    ("scaled_linear", 0.00085, 0.012),
    ("linear", 0.0001, 0.02),
    ("cosine", 0.0001, 0.02),
]


def _diffusers(kind, start, end, zero_snr):
    return DDIMScheduler(beta_schedule=DIFFUSERS_NAMES[kind], beta_start=start, beta_end=end, rescale_betas_zero_snr=zero_snr)


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("kind,start,end", CASES)
def test_tables_match_diffusers(kind, start, end, zero_snr):
    ref = _diffusers(kind, start, end, zero_snr)
    ours = js.make_noise_schedule(js.ScheduleConfig(beta_start=start, beta_end=end, beta_schedule=kind, rescale_zero_terminal_snr=zero_snr))
    np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
    # diffusers rescales in float32: its last betas carry ~1e-5 cancellation error (we use float64).
    np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(), rtol=0, atol=1e-5 if zero_snr else 1e-6)
    twin = ts.make_ddim_scheduler(ts.ScheduleConfig(beta_start=start, beta_end=end, beta_schedule=kind, rescale_zero_terminal_snr=zero_snr))
    np.testing.assert_array_equal(twin.alphas_cumprod.numpy(), ref.alphas_cumprod.numpy())


def test_zero_terminal_snr_keeps_first_and_zeroes_last():
    plain = js.make_noise_schedule(js.ScheduleConfig())
    zero = js.make_noise_schedule(js.ScheduleConfig.see3d())
    assert float(zero.alphas_cumprod[-1]) == 0.0
    assert float(plain.alphas_cumprod[-1]) > 1e-3
    np.testing.assert_allclose(float(zero.alphas_cumprod[0]), float(plain.alphas_cumprod[0]), rtol=1e-6)
    assert np.all(np.diff(np.asarray(zero.alphas_cumprod)) < 0)


def test_from_diffusers_config_reads_scheduler_json():
    cfg = js.ScheduleConfig.from_diffusers_config(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True, "clip_sample": False}
    )
    assert cfg == js.ScheduleConfig.see3d()
    assert js.ScheduleConfig.from_diffusers_config({"beta_schedule": "squaredcos_cap_v2"}).beta_schedule == "cosine"
    with pytest.raises(ValueError, match="trained_betas"):
        js.ScheduleConfig.from_diffusers_config({"trained_betas": [0.1, 0.2]})
    with pytest.raises(ValueError, match="beta_schedule"):
        js.make_noise_schedule(js.ScheduleConfig(beta_schedule="sigmoid"))
    with pytest.raises(ValueError, match="beta_schedule"):
        ts.ScheduleConfig(beta_schedule="sigmoid")


def test_add_noise_and_velocity_match_diffusers():
    ref = _diffusers("scaled_linear", 0.00085, 0.012, True)
    ours = js.make_noise_schedule(js.ScheduleConfig.see3d())
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(4, 2, 3, 5, 5)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 17, 500, 999])
    want_xt = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)).numpy()
    want_v = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(np.asarray(js.add_noise(ours, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))), want_xt, atol=1e-6)
    np.testing.assert_allclose(np.asarray(js.velocity(ours, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))), want_v, atol=1e-6)
    np.testing.assert_allclose(ts.add_noise(ref, torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)).numpy(), want_xt, atol=1e-6)
    np.testing.assert_allclose(ts.velocity(ref, torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)).numpy(), want_v, atol=1e-6)


F32_UNIT_ROUNDOFF = 2.0**-24


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_conversions_match_the_float64_reference(prediction_type):
    """Each framework's float32 conversion against the float64 reference on its own table, within
    the rounding bound of the formula (`split_prediction_rounding_bound`): epsilon's x0 divides by
    sqrt(abar_998) ~ 4e-4, so its float32 error is ~2300x that of x_t; a fixed atol passes or
    fails depending on the CPU's instruction choice (FMA or not)."""
    schedule = js.make_noise_schedule(js.ScheduleConfig.see3d())
    twin = ts.make_ddim_scheduler(ts.ScheduleConfig.see3d())
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(3, 2, 4, 4, 4)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([1, 420, 998])  # epsilon is undefined at t = 999 under zero terminal SNR
    x_t = np.array(js.add_noise(schedule, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t)))
    out = np.array(js.training_target(schedule, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t), prediction_type))
    results = {
        "jax": (np.asarray(schedule.alphas_cumprod),
                js.split_prediction(schedule, jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(out), prediction_type)),
        "torch": (twin.alphas_cumprod.numpy(),
                  ts.split_prediction(twin, torch.from_numpy(x_t), torch.from_numpy(t), torch.from_numpy(out), prediction_type)),
    }
    for name, (table, (x0_hat, eps_hat)) in results.items():
        want_x0, want_eps = diffusion.split_prediction(table, x_t, t, out, prediction_type)
        bound_x0, bound_eps = diffusion.split_prediction_rounding_bound(table, x_t, t, out, prediction_type, F32_UNIT_ROUNDOFF)
        assert np.all(np.abs(np.asarray(x0_hat, np.float64) - want_x0) <= bound_x0), name
        assert np.all(np.abs(np.asarray(eps_hat, np.float64) - want_eps) <= bound_eps), name
    # the round trip: x_t and the target were rounded to float32 once each, so the recovered x0
    # is off by at most the same amplified rounding
    want_x0, _ = diffusion.split_prediction(results["jax"][0], x_t, t, out, prediction_type)
    bound_x0, _ = diffusion.split_prediction_rounding_bound(results["jax"][0], x_t, t, out, prediction_type, F32_UNIT_ROUNDOFF)
    assert np.all(np.abs(want_x0 - x0) <= bound_x0 + 8 * F32_UNIT_ROUNDOFF * np.abs(x0))
    with pytest.raises(ValueError, match="prediction_type"):
        js.training_target(schedule, jnp.asarray(x_t), jnp.asarray(x_t), jnp.asarray(t), "flow")


def test_both_tables_are_within_float32_rounding_of_the_exact_one():
    """JAX rounds the float64 table once (half an ulp); diffusers multiplies in float32, so its
    cumulative product carries at most t + 1 roundings (relative (t + 1) u), plus the float32
    cancellation of the zero-SNR shift (absolute, ~ u)."""
    exact = diffusion.alphas_cumprod(diffusion.ScheduleConfig.see3d())
    ours = np.asarray(js.make_noise_schedule(js.ScheduleConfig.see3d()).alphas_cumprod, np.float64)
    theirs = ts.make_ddim_scheduler(ts.ScheduleConfig.see3d()).alphas_cumprod.numpy().astype(np.float64)
    u = F32_UNIT_ROUNDOFF
    assert np.all(np.abs(ours - exact) <= u * exact)
    steps = np.arange(1, len(exact) + 1)
    assert np.all(np.abs(theirs - exact) <= 2 * steps * u * exact + 4 * u)


def test_min_snr_weight_caps_the_x0_space_weight_at_gamma():
    """Min-SNR-gamma: the weight times the loss's own x0-space weight (SNR, SNR + 1, 1) is
    min(that, gamma); zero terminal SNR keeps the v weight at 1 for t = T-1."""
    schedule = js.make_noise_schedule(js.ScheduleConfig.see3d())
    t = jnp.arange(0, 1000, 37).astype(jnp.int32)
    abar = np.asarray(schedule.alphas_cumprod)[np.asarray(t)].astype(np.float64)
    snr = abar / np.maximum(1 - abar, 1e-12)
    for prediction_type, x0_weight in (("epsilon", snr), ("v_prediction", snr + 1), ("sample", np.ones_like(snr))):
        w = np.asarray(js.min_snr_loss_weight(schedule, t, prediction_type, 5.0))
        np.testing.assert_allclose(w * x0_weight, np.minimum(x0_weight, 5.0), rtol=1e-4)
    v = np.asarray(js.min_snr_loss_weight(schedule, jnp.array([0, 999]), "v_prediction", 5.0))
    assert v[0] < 0.01 and v[1] == 1.0  # t = 0 is nearly noise-free; t = 999 is pure noise
    with pytest.raises(ValueError, match="gamma"):
        js.min_snr_loss_weight(schedule, t, "v_prediction", 0.0)
