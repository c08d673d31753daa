"""Noise schedules (JAX and torch) against diffusers' DDIMScheduler."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

import jax.numpy as jnp
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


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_conversions_round_trip(prediction_type):
    schedule = js.make_noise_schedule(js.ScheduleConfig.see3d())
    twin = ts.make_ddim_scheduler(ts.ScheduleConfig.see3d())
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(3, 2, 4, 4, 4)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([1, 420, 998])  # epsilon is undefined at t = 999 under zero terminal SNR
    x_t = js.add_noise(schedule, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))
    out = js.training_target(schedule, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t), prediction_type)
    x0_hat, eps_hat = js.split_prediction(schedule, x_t, jnp.asarray(t), out, prediction_type)
    np.testing.assert_allclose(np.asarray(x0_hat), x0, atol=2e-3)  # 1/sqrt(abar_998) amplifies float32 rounding
    np.testing.assert_allclose(np.asarray(eps_hat), eps, atol=2e-3)
    x0_t, eps_t = ts.split_prediction(
        twin, torch.tensor(np.asarray(x_t)), torch.from_numpy(t), torch.tensor(np.asarray(out)), prediction_type
    )
    np.testing.assert_allclose(x0_t.numpy(), np.asarray(x0_hat), atol=1e-4)
    np.testing.assert_allclose(eps_t.numpy(), np.asarray(eps_hat), atol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        js.training_target(schedule, x_t, x_t, jnp.asarray(t), "flow")


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
