"""The visual condition: t', W, masks, V_t, training batches, posed warps; JAX/torch parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from see3d_core import synthetic
from see3d_jax import condition as jc, schedules as js
from see3d_torch import condition as tc, schedules as ts

SCHEDULE = js.make_noise_schedule(js.ScheduleConfig.see3d())
# SPEC.md section 2: W by t, as printed there (3-4 significant digits).
RELEASED_W = {999: 0.9986, 500: 0.857, 300: 0.800, 250: 0.378, 200: 0.179, 100: 0.040, 0: 0.0089}


def test_released_mixture_weight_table():
    t = np.array(list(RELEASED_W))
    want = np.array(list(RELEASED_W.values()))
    np.testing.assert_allclose(np.asarray(jc.mixture_weight(jnp.asarray(t))), want, atol=6e-4)
    np.testing.assert_allclose(tc.mixture_weight(torch.tensor(t)).numpy(), want, atol=6e-4)


def test_released_condition_timestep_and_weight_over_all_timesteps():
    t = np.arange(1000)
    t_prime = np.asarray(jc.condition_timestep(jnp.asarray(t)))
    np.testing.assert_array_equal(t_prime, t // 5)
    np.testing.assert_array_equal(tc.condition_timestep(torch.tensor(t)).numpy(), t // 5)
    w = np.asarray(jc.mixture_weight(jnp.asarray(t)))
    np.testing.assert_allclose(w, tc.mixture_weight(torch.tensor(t)).numpy(), atol=1e-6)
    assert np.all(np.diff(w) >= 0) and w.min() > 0 and w.max() <= 1  # W decreases as t decreases
    # continuous at the joint t' = 60 (t = 300..304) within one step of the exponential branch
    assert abs(w[300] - 0.8) < 1e-6 and abs(w[299] - 0.8 * np.exp(-0.075)) < 1e-6


@pytest.mark.parametrize(
    "config",
    [
        jc.ConditionConfig(timestep_map="linear", linear_ratio=0.5),
        jc.ConditionConfig(timestep_map="sqrt", sqrt_scale=3.0),
        jc.ConditionConfig(timestep_map=lambda t: t - 3, weight=lambda t: t / 500.0),
        jc.ConditionConfig(weight="exponential", exp_rate=4.0),
    ],
)
def test_other_schedules_are_bounded_and_agree_with_torch(config):
    t = np.arange(1000)
    t_prime = np.asarray(jc.condition_timestep(jnp.asarray(t), config))
    w = np.asarray(jc.mixture_weight(jnp.asarray(t), config))
    assert np.all((0 <= t_prime) & (t_prime <= t)) and np.all(np.diff(t_prime) >= 0)
    assert np.all((0 <= w) & (w <= 1)) and np.all(np.diff(w) >= -1e-7)
    twin = tc.ConditionConfig(**{f: getattr(config, f) for f in ("timestep_map", "linear_ratio", "sqrt_scale", "weight", "exp_rate")})
    np.testing.assert_array_equal(tc.condition_timestep(torch.tensor(t), twin).numpy(), t_prime)
    np.testing.assert_allclose(tc.mixture_weight(torch.tensor(t), twin).numpy(), w, atol=1e-6)
    if config.weight == "exponential":
        assert w[999] == pytest.approx(1.0) and w[0] == pytest.approx(np.exp(-4.0), rel=1e-5)
    if config.timestep_map == "sqrt":
        assert t_prime[999] == int(3.0 * np.sqrt(999))


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="variant"):
        jc.ConditionConfig(variant="posed")
    with pytest.raises(ValueError, match="timestep_map"):
        tc.ConditionConfig(timestep_map="cubic")
    with pytest.raises(ValueError, match="coverage"):
        jc.MaskConfig(min_coverage=0.8, max_coverage=0.2)
    with pytest.raises(ValueError, match="references"):
        jc.ConditionConfig(min_references=0)
    with pytest.raises(ValueError, match="views must be pixels"):
        jc.build_training_batch(jax.random.key(0), jnp.zeros((1, 3, 8, 8, 4)), SCHEDULE)
    with pytest.raises(ValueError, match="posed_warp"):
        jc.build_training_batch(jax.random.key(0), jnp.zeros((1, 3, 8, 8, 3)), SCHEDULE, jc.ConditionConfig(variant="posed_warp"))


# --- masks --------------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), low=st.floats(0.0, 0.9), span=st.floats(0.0, 0.5))
def test_mask_coverage_is_in_range_and_deterministic(seed, low, span):
    config = jc.MaskConfig(min_coverage=low, max_coverage=min(low + span, 1.0))
    masks = np.asarray(jc.random_masks(jax.random.key(seed), 3, 20, 24, config))
    assert masks.shape == (3, 20, 24, 1) and set(np.unique(masks)) <= {0.0, 1.0}
    coverage = 1.0 - masks.mean(axis=(1, 2, 3))
    tolerance = 1.0 / (20 * 24)
    assert np.all(coverage >= config.min_coverage - tolerance) and np.all(coverage <= config.max_coverage + tolerance)
    np.testing.assert_array_equal(masks, np.asarray(jc.random_masks(jax.random.key(seed), 3, 20, 24, config)))


def test_warp_like_masks_are_thin_low_coverage_holes_and_mix_with_blobs():
    """`warp_like_fraction`: that share of masks are thin curves and a border strip at the
    warp-like coverage (a forward warp's holes), the rest the blob masks as before."""
    size = 64
    warp_like = jc.MaskConfig(warp_like_fraction=1.0)
    masks = np.asarray(jc.random_masks(jax.random.key(3), 16, size, size, warp_like))[..., 0]
    coverage = 1.0 - masks.mean(axis=(1, 2))
    assert np.all(coverage >= 0.02 - 1 / size**2) and np.all(coverage <= 0.15 + 1 / size**2)
    from scipy.ndimage import distance_transform_edt
    # thin: most hole pixels have a known pixel within 1.5 px; and a border strip in most masks
    near_known = [np.mean(distance_transform_edt(m == 0)[m == 0] <= 1.5) for m in masks]
    assert np.median(near_known) > 0.85
    border_strip = [max((m[:, 0] == 0).mean(), (m[:, -1] == 0).mean(), (m[0] == 0).mean(), (m[-1] == 0).mean()) > 0.9
                    for m in masks]
    assert 4 <= sum(border_strip) <= 15  # present with probability 0.7
    # a mixture: both kinds, told apart by their coverage ranges (warp-like <= 0.15 < blobs)
    mixed = np.asarray(jc.random_masks(jax.random.key(4), 64, 32, 32, jc.MaskConfig(warp_like_fraction=0.5)))
    mixed_coverage = 1.0 - mixed.mean(axis=(1, 2, 3))
    assert 10 <= np.sum(mixed_coverage <= 0.15 + 1 / 32**2) <= 54
    # fraction 0 is the blob masks exactly
    np.testing.assert_array_equal(np.asarray(jc.random_masks(jax.random.key(5), 4, 32, 32, jc.MaskConfig(warp_like_fraction=0.0))),
                                  np.asarray(jc.random_masks(jax.random.key(5), 4, 32, 32, jc.MaskConfig())))
    with pytest.raises(ValueError, match="warp_like_fraction"):
        jc.MaskConfig(warp_like_fraction=1.5)
    with pytest.raises(ValueError, match="warp-like coverage"):
        jc.MaskConfig(warp_like_min_coverage=0.3, warp_like_max_coverage=0.1)


def test_masks_differ_between_keys_and_are_irregular():
    a = np.asarray(jc.random_masks(jax.random.key(1), 4, 32, 32))
    b = np.asarray(jc.random_masks(jax.random.key(2), 4, 32, 32))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    # holes are not whole rows/columns or a single rectangle: their boundary is long
    for m in a[..., 0]:
        edges = np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum()
        assert edges > 2 * np.sqrt((1 - m).sum())


def test_resize_masks_nearest_matches_torch_interpolate():
    m = (np.random.default_rng(0).random((2, 3, 24, 40, 1)) > 0.5).astype(np.float32)
    got = np.asarray(jc.resize_masks_nearest(jnp.asarray(m), 6, 10))
    want = torch.nn.functional.interpolate(torch.tensor(m[..., 0]).reshape(6, 1, 24, 40), size=(6, 10), mode="nearest")
    np.testing.assert_array_equal(got[..., 0], want.reshape(2, 3, 6, 10).numpy())
    twin = tc.resize_masks_nearest(torch.tensor(np.moveaxis(m, -1, 2)), 6, 10)
    np.testing.assert_array_equal(twin[:, :, 0].numpy(), got[..., 0])


# --- V_t ----------------------------------------------------------------------------------------

def _condition_inputs(seed=0, shape=(2, 3, 4, 5, 4)):
    rng = np.random.default_rng(seed)
    x_t = rng.normal(size=shape).astype(np.float32)
    clean = rng.normal(size=shape).astype(np.float32)
    masks = (rng.random(shape[:-1] + (1,)) > 0.5).astype(np.float32)
    noise = rng.normal(size=shape).astype(np.float32)
    is_ref = np.array([[True, False, False], [False, False, True]])
    t = np.array([730, 120])
    return x_t, clean, masks, noise, is_ref, t


@pytest.mark.parametrize("variant", ["time_dependent", "masked"])
def test_visual_condition_formula_and_torch_parity(variant):
    x_t, clean, masks, noise, is_ref, t = _condition_inputs()
    config = jc.ConditionConfig(variant=variant)
    V, M = jc.visual_condition(SCHEDULE, *map(jnp.asarray, (x_t, clean, masks, is_ref, t, noise)), config)
    abar = np.asarray(SCHEDULE.alphas_cumprod)[t // 5].reshape(-1, 1, 1, 1, 1)
    w = np.asarray(jc.mixture_weight(jnp.asarray(t))).reshape(-1, 1, 1, 1, 1)
    targets = clean if variant == "masked" else w * (np.sqrt(abar) * clean + np.sqrt(1 - abar) * noise) + (1 - w) * x_t
    ref = is_ref[:, :, None, None, None]
    np.testing.assert_allclose(np.asarray(V), np.where(ref, clean, targets), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(M), np.where(ref, 1.0, masks))
    to_t = lambda a: torch.tensor(np.moveaxis(a, -1, 2))
    scheduler = ts.make_ddim_scheduler(ts.ScheduleConfig.see3d())
    tV, tM = tc.visual_condition(scheduler, to_t(x_t), to_t(clean), to_t(masks), torch.tensor(is_ref), torch.tensor(t), to_t(noise), tc.ConditionConfig(variant=variant))
    np.testing.assert_allclose(np.moveaxis(tV.numpy(), 2, -1), np.asarray(V), atol=1e-5)
    np.testing.assert_array_equal(np.moveaxis(tM.numpy(), 2, -1), np.asarray(M))


# --- training batches ---------------------------------------------------------------------------

def _views(B=2, N=4, H=16, W=16, seed=0):
    return jax.random.uniform(jax.random.key(seed), (B, N, H, W, 3), minval=-1.0, maxval=1.0)


def test_training_batch_references_clean_targets_masked_and_deterministic():
    views = _views()
    config = jc.ConditionConfig(min_references=1, max_references=2)
    build = jax.jit(lambda k: jc.build_training_batch(k, views, SCHEDULE, config))
    batch = build(jax.random.key(5))
    ref = np.asarray(batch.is_reference)
    order = np.asarray(batch.view_order)
    assert all(sorted(o) == list(range(4)) for o in order)
    np.testing.assert_array_equal(np.asarray(batch.x0), np.take_along_axis(np.asarray(views), order[:, :, None, None, None], 1))
    assert np.all((ref.sum(1) >= 1) & (ref.sum(1) <= 2)) and np.all(ref[:, 0])  # references first after shuffling
    np.testing.assert_array_equal(np.asarray(batch.loss_mask), (~ref).astype(np.float32))
    mask = np.asarray(batch.mask)
    assert np.all(mask[ref] == 1.0) and np.all(mask[~ref].mean(axis=(1, 2, 3)) < 1.0)
    np.testing.assert_array_equal(np.asarray(batch.x_t)[ref], np.asarray(batch.x0)[ref])
    np.testing.assert_array_equal(np.asarray(batch.condition)[ref], np.asarray(batch.x0)[ref])
    assert not np.allclose(np.asarray(batch.x_t)[~ref], np.asarray(batch.x0)[~ref])
    again = build(jax.random.key(5))
    for a, b in zip(jax.tree_util.tree_leaves(batch), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = build(jax.random.key(6))
    assert not np.array_equal(np.asarray(other.mask), mask)


@pytest.fixture(scope="module")
def masked_pixel_batch():
    return jax.jit(lambda k: jc.build_training_batch(k, _views(), SCHEDULE, jc.ConditionConfig(variant="masked")))(jax.random.key(2))


def test_masked_variant_condition_is_black_filled_clean_views(masked_pixel_batch):
    batch = masked_pixel_batch
    known = np.asarray(batch.mask)[..., 0] > 0.5
    cond, x0 = np.asarray(batch.condition), np.asarray(batch.x0)
    np.testing.assert_array_equal(cond[known], x0[known])
    assert (~known).any() and np.all(cond[~known] == -1.0)


def test_latent_batches_fill_holes_in_pixel_space_before_encoding(masked_pixel_batch):
    """With an encoder, V is built from E(fill(views)); masks are resized to latent size."""
    factor = 4
    def encode(pixels):  # average-pool "VAE": [B, K, H, W, 3] -> [B, K, H/4, W/4, 4]
        B, K, H, W, _ = pixels.shape
        pooled = pixels.reshape(B, K, H // factor, factor, W // factor, factor, 3).mean((3, 5))
        return jnp.concatenate([pooled, pooled.mean(-1, keepdims=True)], -1)

    views = _views()
    config = jc.ConditionConfig(variant="masked")
    batch = jax.jit(lambda k: jc.build_training_batch(k, views, SCHEDULE, config, encode_fn=encode))(jax.random.key(2))
    assert batch.x0.shape == (2, 4, 4, 4, 4) and batch.mask.shape == (2, 4, 4, 4, 1)
    # recompute the pixel masks: same key and config give the same shuffle/masks as a pixel batch
    pixel_batch = masked_pixel_batch
    filled = jc.fill_holes(pixel_batch.x0, pixel_batch.mask)
    np.testing.assert_allclose(np.asarray(batch.condition), np.asarray(encode(filled)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(batch.mask), np.asarray(jc.resize_masks_nearest(pixel_batch.mask, 4, 4)))


def test_posed_warp_condition_is_the_generation_loops_warp():
    """Training's posed condition (MV-Posed) and inference use one warp: the pair warps of a
    posed clip (`see3d_torch.warp.pair_warps`, the generation loop's `forward_warp`) merged in
    JAX for the drawn references equal `warp_anchors` of the same anchors into the target."""
    from see3d_torch.generation.loop import warp_anchors
    from see3d_torch.warp import pair_warps

    scene = synthetic.make_scene(seed=3)
    cameras = synthetic.default_orbit(scene, num_frames=12, width=32, height=32)[::2][:3]
    frames = [synthetic.render(scene, c) for c in cameras]
    rgb = np.stack([f.rgb for f in frames]).astype(np.float32)
    depths = np.stack([f.depth for f in frames]).astype(np.float32)
    warps = pair_warps(rgb, depths, np.stack([c.K for c in cameras]), np.stack([c.c2w for c in cameras]))
    self_known = warps["masks"][1, 1]  # a view warps onto itself (the sky has no depth; grazing back faces drop)
    surface = np.isfinite(depths[1]) & (depths[1] > 0) & (depths[1] < 1e3)
    assert self_known[surface].mean() > 0.95 and not self_known[~surface].any()
    np.testing.assert_allclose(warps["images"][1, 1][self_known], rgb[1][self_known], atol=1e-5)
    np.testing.assert_allclose(warps["depths"][1, 1][self_known], depths[1][self_known], rtol=1e-5)
    pairs = jc.PairWarps(jnp.asarray(warps["images"][None] * 2 - 1), jnp.asarray(warps["masks"][None], jnp.float32),
                         jnp.asarray(warps["depths"][None]))
    is_ref = jnp.array([[True, False, True]])
    merged, known = jc.merge_pair_warps(pairs, is_ref)
    image, mask, warped_depth = warp_anchors([rgb[0], rgb[2]], [depths[0], depths[2]], [cameras[0], cameras[2]], cameras[1])
    np.testing.assert_array_equal(np.asarray(known[0, 1, ..., 0]), mask)
    assert 0.3 < mask.mean() < 1.0
    np.testing.assert_allclose((np.asarray(merged[0, 1]) + 1) / 2 * mask[..., None], image, atol=1e-5)
    assert np.all(np.asarray(merged[0, 1])[mask < 0.5] == -1.0)  # holes black, as the warps at inference
    # the warp moves pixels the right way: closer to the target than the unwarped reference
    err = (image - rgb[1])[mask > 0.5]
    unwarped = (rgb[0] - rgb[1])[mask > 0.5]
    assert np.mean(err**2) < np.mean(unwarped**2)


@pytest.mark.slow
def test_posed_warp_batches_shuffle_both_axes_of_the_pair_warps():
    """The mask of a pair (source s, destination d) marks pixel (0, 3 s + d) only: the batch's
    mask channel (noise-free) shows which pairs, in the clip's own indices, fed each target."""
    B, N, H, W = 1, 3, 2, 9
    masks = np.ones((B, N, N, H, W), np.float32)
    masks[:, :, :, 0, :] = 0
    for s_ in range(N):
        for d in range(N):
            masks[0, s_, d, 0, 3 * s_ + d] = 1
    pairs = jc.PairWarps(jnp.zeros((B, N, N, H, W, 3)), jnp.asarray(masks), jnp.ones((B, N, N, H, W)))
    views = jnp.zeros((B, N, H, W, 3))
    config = jc.ConditionConfig(variant="posed_warp", min_references=2, max_references=2)
    for seed in range(4):
        batch = jc.build_training_batch(jax.random.key(seed), views, SCHEDULE, config, pair_warps=pairs)
        order, ref = np.asarray(batch.view_order[0]), np.asarray(batch.is_reference[0])
        for j in np.flatnonzero(~ref):
            want = np.zeros(W)
            want[[3 * order[i] + order[j] for i in np.flatnonzero(ref)]] = 1
            np.testing.assert_array_equal(np.asarray(batch.mask[0, j, 0, :, 0]), want)
            assert np.asarray(batch.mask[0, j, 1]).all()
    with pytest.raises(ValueError, match="pair-warps"):
        jc.build_training_batch(jax.random.key(1), views, SCHEDULE, config)


@pytest.mark.slow  # 5-8 s: out of the fast tier, in make test
def test_posed_fraction_mixes_warped_samples_into_time_dependent_training():
    """Table 6's mixtures: with posed_fraction p, about p of the samples take the references'
    warps (their mask is the pair-warp mask), the rest random masks."""
    B, N, H, W = 48, 3, 4, 4
    pattern = np.ones((B, N, N, H, W), np.float32)
    pattern[..., 0, 0] = 0  # every warp misses pixel (0, 0) and nothing else
    pairs = jc.PairWarps(jnp.zeros((B, N, N, H, W, 3)), jnp.asarray(pattern), jnp.ones((B, N, N, H, W)))
    views = jnp.zeros((B, N, H, W, 3))
    for fraction in (0.0, 0.25, 1.0):
        config = jc.ConditionConfig(posed_fraction=fraction, min_references=1, max_references=1,
                                    masks=jc.MaskConfig(min_coverage=0.3, max_coverage=0.3))
        batch = jax.jit(lambda k: jc.build_training_batch(k, views, SCHEDULE, config, pair_warps=pairs))(jax.random.key(0))
        target_masks = np.asarray(batch.mask)[:, 1:, ..., 0]  # one reference: views 1, 2 are targets
        warped = (target_masks.reshape(B, -1).sum(-1) == 2 * (H * W - 1))  # the warp's mask on both targets
        share = warped.mean()
        assert abs(share - fraction) <= 3 * np.sqrt(max(fraction * (1 - fraction), 1e-9) / B) + 1e-9, (fraction, share)
    with pytest.raises(ValueError, match="posed_fraction"):
        jc.ConditionConfig(variant="masked", posed_fraction=0.2)
    with pytest.raises(ValueError, match="pair-warps"):
        jc.build_training_batch(jax.random.key(0), views, SCHEDULE, jc.ConditionConfig(posed_fraction=0.5))
