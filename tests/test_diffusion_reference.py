"""see3d_core.diffusion: the one definition of the configs and the float64 reference that both
frameworks are tested against."""

import numpy as np
import pytest
import torch

import jax.numpy as jnp
from see3d_core import diffusion
from see3d_jax import condition as jc, sampling as jsamp, schedules as js
from see3d_torch import condition as tc, sampling as tsamp, schedules as ts

F32_UNIT_ROUNDOFF = 2.0**-24


def test_both_frameworks_use_the_same_config_classes():
    assert js.ScheduleConfig is ts.ScheduleConfig is diffusion.ScheduleConfig
    assert jsamp.DDIMConfig is tsamp.DDIMConfig is diffusion.DDIMConfig
    assert jc.ConditionConfig is tc.ConditionConfig is diffusion.ConditionConfig
    assert jc.MaskConfig is diffusion.MaskConfig


CONDITION_CASES = [
    diffusion.ConditionConfig(),
    diffusion.ConditionConfig(timestep_map="linear", linear_ratio=0.3, weight="exponential", exp_rate=3.0),
    diffusion.ConditionConfig(timestep_map="sqrt", sqrt_scale=4.0),
]


@pytest.mark.parametrize("config", CONDITION_CASES, ids=["released", "linear-exp", "sqrt"])
def test_condition_schedules_match_the_reference(config):
    t = np.arange(1000)
    want_t = diffusion.condition_timestep(t, config)
    np.testing.assert_array_equal(np.asarray(jc.condition_timestep(jnp.asarray(t), config)), want_t)
    np.testing.assert_array_equal(tc.condition_timestep(torch.from_numpy(t), config).numpy(), want_t)
    want_w = diffusion.mixture_weight(t, config)
    # W is a float32 evaluation of a smooth function of magnitude <= 1: a few ulps of 1
    for got in (np.asarray(jc.mixture_weight(jnp.asarray(t), config)), tc.mixture_weight(torch.from_numpy(t), config).numpy()):
        np.testing.assert_allclose(got, want_w, rtol=0, atol=16 * F32_UNIT_ROUNDOFF)


def test_released_mixture_weight_golden_values():
    t = np.array([999, 500, 300, 250, 200, 100, 0])
    # SPEC.md section 2 by hand: linear on t' = t // 5 from 60 up, exponential below
    want = [1 - 0.2 / 140, 1 - 0.2 * 100 / 140, 0.8, 0.8 * np.exp(-0.75), 0.8 * np.exp(-1.5), 0.8 * np.exp(-3.0), 0.8 * np.exp(-4.5)]
    np.testing.assert_allclose(diffusion.mixture_weight(t), want, rtol=1e-15)
    np.testing.assert_allclose(diffusion.mixture_weight(t), [0.9986, 0.857, 0.800, 0.378, 0.179, 0.040, 0.0089], atol=6e-4)


def test_schedule_tables_match_the_reference():
    for config in (diffusion.ScheduleConfig.see3d(), diffusion.ScheduleConfig(beta_schedule="cosine")):
        exact = diffusion.alphas_cumprod(config)
        np.testing.assert_allclose(np.asarray(js.make_noise_schedule(config).alphas_cumprod, np.float64), exact,
                                   rtol=F32_UNIT_ROUNDOFF, atol=0)  # one rounding of the float64 table
        np.testing.assert_array_equal(np.cumprod(1 - diffusion.beta_table(config)), exact)


def test_released_timesteps_are_the_authors_list():
    """The authors' trailing loop: 999 - k (999 // n) while > 0 (SPEC.md section 2)."""
    base = diffusion.released_timesteps(50)
    assert len(base) == 53 and base[0] == 999 and base[1] == 980 and base[-1] == 11
    sr = diffusion.released_timesteps(30)
    assert len(sr) == 31 and sr[1] == 966 and sr[-1] == 9
    config = diffusion.DDIMConfig(num_inference_steps=50, released_timesteps=True)
    np.testing.assert_array_equal(diffusion.ddim_timesteps(config), base)
    assert diffusion.num_sampler_steps(config) == 53
    # each step still moves by T // n (diffusers' step), so the last step lands below 0
    assert diffusion.previous_timesteps(base, config)[-1] == -9
    with pytest.raises(ValueError, match="num_inference_steps"):
        diffusion.released_timesteps(1000)


def test_configs_reject_bad_values_with_named_fields():
    with pytest.raises(ValueError, match="timestep_spacing"):
        diffusion.DDIMConfig(timestep_spacing="karras")
    with pytest.raises(ValueError, match="variant"):
        diffusion.ConditionConfig(variant="posed")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        diffusion.ScheduleConfig(num_train_timesteps=1)
    assert diffusion.DDIMConfig.from_scheduler({"timestep_spacing": "trailing", "prediction_type": "v_prediction",
                                                "clip_sample": False}).clip_sample is None
