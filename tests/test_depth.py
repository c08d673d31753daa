"""Depth alignment on the synthetic world (exact depth): global scale/shift, LWLR, Eq. 15."""

import numpy as np
import pytest
import torch

from see3d_core import synthetic
from see3d_torch import depth as D
from see3d_torch.features import match
from see3d_torch.mono_depth import DepthDistortion

SIZE = 256


@pytest.fixture(scope="module")
def views():
    """Per seed: two frames 16 degrees apart on the default orbit (exact depth and cameras)."""
    out = {}
    for seed in (0, 1, 2):
        scene = synthetic.make_scene(seed)
        cams = synthetic.default_orbit(scene, 2, SIZE, SIZE, azimuth_deg=(-8.0, 8.0))
        out[seed] = synthetic.render_trajectory(scene, cams)
    return out


def _keypoints(frame, count, seed, noise=0.01, outliers=0.05):
    """Random pixels with their true depth, 1% multiplicative noise and some gross outliers."""
    rng = np.random.default_rng(seed)
    uv = torch.from_numpy(rng.uniform(0, SIZE - 1, size=(count, 2))).float()
    depth = D.sample_at(torch.from_numpy(frame.depth), uv)
    depth = depth * torch.from_numpy(1 + noise * rng.normal(size=count)).float()
    bad = torch.from_numpy(rng.random(count) < outliers)
    depth[bad] *= torch.from_numpy(rng.uniform(0.4, 2.5, size=int(bad.sum()))).float()
    return uv, depth


def test_sample_at_is_bilinear_in_pixel_centre_convention():
    maps = torch.arange(12.0).reshape(3, 4)  # value = 4 y + x
    uv = torch.tensor([[0.0, 0.0], [3.0, 2.0], [1.5, 0.5], [2.25, 1.0]])
    np.testing.assert_allclose(D.sample_at(maps, uv).numpy(), [0.0, 11.0, 3.5, 6.25], atol=1e-5)


def test_fit_scale_shift_exact_and_robust(views):
    frame = views[0][0]
    true = torch.from_numpy(frame.depth)
    mono = (true - 0.5) / 2.5  # true = 2.5 mono + 0.5
    uv, _ = _keypoints(frame, 200, seed=1, noise=0.0, outliers=0.0)
    target = D.sample_at(true, uv)
    scale, shift = D.fit_scale_shift(mono, uv, target)
    assert abs(float(scale) - 2.5) < 1e-3 and abs(float(shift) - 0.5) < 1e-3

    corrupted = target.clone()
    corrupted[::4] *= 3.0  # 25% gross outliers
    plain = D.fit_scale_shift(mono, uv, corrupted)
    robust = D.fit_scale_shift(mono, uv, corrupted, robust=True)
    assert abs(float(plain[0]) - 2.5) > 0.1, "outliers should bias the plain least squares"
    assert abs(float(robust[0]) - 2.5) < 0.02 and abs(float(robust[1]) - 0.5) < 0.05

    weights = torch.ones(200)
    weights[::4] = 0.0  # zero weight removes the outliers exactly
    exact = D.fit_scale_shift(mono, uv, corrupted, weights=weights)
    assert abs(float(exact[0]) - 2.5) < 1e-3


def test_fit_in_disparity_space(views):
    frame = views[1][0]
    true = torch.from_numpy(frame.depth)
    disparity = 3.0 / true + 0.2  # a relative-disparity estimator's output
    uv, target = _keypoints(frame, 150, seed=2, noise=0.0, outliers=0.0)
    scale, shift = D.fit_scale_shift(disparity, uv, target, space="disparity")
    metric = D.apply_scale_shift(disparity, scale, shift, space="disparity")
    assert D.absolute_relative_error(metric, true) < 1e-3
    aligned = D.lwlr_align(disparity, uv, target, bandwidth=25.0, space="disparity")
    assert D.absolute_relative_error(aligned, true) < 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lwlr_recovers_locally_distorted_depth(views, seed):
    """Acceptance: LWLR's AbsRel is at most 1/3 of the global fit's on a distorted depth."""
    frame = views[seed][0]
    true = torch.from_numpy(frame.depth)
    mono = torch.from_numpy(DepthDistortion(seed=seed).apply(frame.depth))
    uv, target = _keypoints(frame, 300, seed=seed)
    scale, shift = D.fit_scale_shift(mono, uv, target, robust=True)
    global_err = D.absolute_relative_error(D.apply_scale_shift(mono, scale, shift), true)
    # bandwidth 25 px at 256 px is the reference 50 px at 512 px
    lwlr_err = D.absolute_relative_error(D.lwlr_align(mono, uv, target, bandwidth=25.0), true)
    print(f"seed {seed}: AbsRel global {global_err:.4f}, LWLR {lwlr_err:.4f} (ratio {lwlr_err / global_err:.2f})")
    assert global_err > 0.02, "the distortion should defeat a global fit"
    assert lwlr_err <= global_err / 3


def test_lwlr_keeps_an_exact_affine_map_exact(views):
    """The ridges pull towards the global fit, so an exactly affine prediction stays exact,
    also far from every keypoint (here all keypoints sit in the left quarter)."""
    frame = views[2][0]
    true = torch.from_numpy(frame.depth)
    mono = 0.3 * true + 1.0
    uv, target = _keypoints(frame, 100, seed=3, noise=0.0, outliers=0.0)
    uv[:, 0] *= 0.25
    target = D.sample_at(true, uv)
    aligned = D.lwlr_align(mono, uv, target)
    assert D.absolute_relative_error(aligned, true) < 1e-3


def test_lwlr_batched_matches_single_and_honours_padding(views):
    monos, uvs, targets = [], [], []
    for seed in (0, 1):
        frame = views[seed][0]
        monos.append(torch.from_numpy(DepthDistortion(seed=seed).apply(frame.depth)))
        uv, target = _keypoints(frame, 120 + 40 * seed, seed=seed)
        uvs.append(uv)
        targets.append(target)
    singles = [D.lwlr_align(m, u, t, bandwidth=30.0) for m, u, t in zip(monos, uvs, targets)]
    k = max(len(u) for u in uvs)
    uv_pad = torch.zeros(2, k, 2)
    target_pad = torch.full((2, k), 123.0)  # padding values must be ignored
    valid = torch.zeros(2, k, dtype=torch.bool)
    for i, (u, t) in enumerate(zip(uvs, targets)):
        uv_pad[i, : len(u)], target_pad[i, : len(t)], valid[i, : len(u)] = u, t, True
    batched = D.lwlr_align_batched(torch.stack(monos), uv_pad, target_pad, valid=valid, bandwidth=30.0)
    for i in range(2):
        torch.testing.assert_close(batched[i], singles[i], rtol=1e-4, atol=1e-4)


def test_lwlr_rejects_bad_input():
    mono = torch.ones(8, 8)
    with pytest.raises(ValueError, match=r"mono_depth must be \[H, W\]"):
        D.lwlr_align(torch.ones(1, 8, 8), torch.zeros(3, 2), torch.ones(3))
    with pytest.raises(ValueError, match="at least 2 valid keypoints"):
        D.lwlr_align(mono, torch.zeros(3, 2), torch.tensor([1.0, -1.0, float("nan")]))
    with pytest.raises(ValueError, match="space must be one of"):
        D.lwlr_align(mono, torch.zeros(3, 2), torch.ones(3), space="inverse")
    with pytest.raises(ValueError, match="bandwidth > 0"):
        D.lwlr_align(mono, torch.zeros(3, 2), torch.ones(3), bandwidth=0.0)


def _pair_geometry(frames):
    a, b = frames
    T = torch.from_numpy(b.camera.w2c @ a.camera.c2w)
    return torch.from_numpy(a.camera.K), torch.from_numpy(b.camera.K), T


def test_keypoint_depths_exact_geometry_and_outliers(views):
    a, b = views[0]
    K_a, K_b, T = _pair_geometry(views[0])
    rng = np.random.default_rng(0)
    uv_a = rng.uniform(10, SIZE - 10, size=(300, 2))
    true = a.depth[np.round(uv_a[:, 1]).astype(int), np.round(uv_a[:, 0]).astype(int)].astype(np.float64)
    uv_a = np.round(uv_a)  # exact depth at pixel centres
    points = a.camera.unproject(uv_a, true)
    uv_b, _ = b.camera.project(points)
    inside = (uv_b > 0).all(1) & (uv_b < SIZE - 1).all(1)
    uv_a, uv_b, true = uv_a[inside], uv_b[inside], true[inside]
    uv_b_noisy = uv_b.copy()
    uv_b_noisy[::10, 1] += 8.0  # off the epipolar line (for a mostly horizontal baseline)
    depth, inlier = D.keypoint_depths(torch.from_numpy(uv_a), torch.from_numpy(uv_b_noisy), K_a, K_b, T)
    clean = np.ones(len(uv_a), bool)
    clean[::10] = False
    sky = a.object_id[uv_a[:, 1].astype(int), uv_a[:, 0].astype(int)] < 0
    np.testing.assert_allclose(depth.numpy()[clean], true[clean], rtol=1e-6)
    # the sky (60 m away) meets at less than the 1 degree triangulation angle: rejected
    assert inlier.numpy()[clean & ~sky].all() and not inlier.numpy()[sky].any()
    assert not inlier.numpy()[~clean].any(), "matches off the epipolar line must be rejected"
    # no baseline: no depth can be triangulated
    _, none = D.keypoint_depths(torch.from_numpy(uv_a), torch.from_numpy(uv_a), K_a, K_a, torch.eye(4, dtype=torch.float64))
    assert not none.any()
    with pytest.raises(ValueError, match="anchor_to_other"):
        D.keypoint_depths(torch.from_numpy(uv_a), torch.from_numpy(uv_b), K_a, K_b, T[:3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keypoint_depths_from_sift_matches(views, seed):
    """Acceptance: Eq. 15 depths from SIFT matches agree with the true depth (median <= 2%)."""
    a, b = views[seed]
    uv_a, uv_b = match(a.rgb, b.rgb)
    depth, inlier = D.keypoint_depths(uv_a, uv_b, *_pair_geometry(views[seed]))
    true = D.sample_at(torch.from_numpy(a.depth), uv_a)
    rel = ((depth - true).abs() / true)[inlier]
    print(f"seed {seed}: {len(uv_a)} matches, {int(inlier.sum())} inliers, median relative error {float(rel.median()):.4f}")
    assert int(inlier.sum()) >= 50
    assert float(rel.median()) <= 0.02


def test_keypoints_then_lwlr_end_to_end(views):
    """The stage as the generation loop runs it: SIFT -> Eq. 15 -> LWLR on a distorted depth."""
    a, b = views[1]
    uv_a, uv_b = match(a.rgb, b.rgb)
    depth, inlier = D.keypoint_depths(uv_a, uv_b, *_pair_geometry(views[1]))
    true = torch.from_numpy(a.depth)
    mono = torch.from_numpy(DepthDistortion(seed=5).apply(a.depth))
    scale, shift = D.fit_scale_shift(mono, uv_a[inlier], depth[inlier], robust=True)
    global_err = D.absolute_relative_error(D.apply_scale_shift(mono, scale, shift), true)
    lwlr_err = D.absolute_relative_error(D.lwlr_align(mono, uv_a[inlier], depth[inlier], bandwidth=25.0), true)
    print(f"SIFT keypoints: AbsRel global {global_err:.4f}, LWLR {lwlr_err:.4f}")
    assert lwlr_err < 0.6 * global_err


def test_depth_plots_draw(views):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from see3d_core.images import depth_to_rgb

    frame = views[0][0]
    fig, axes = plt.subplots(1, 2)
    D.show_depth(axes[0], torch.from_numpy(frame.depth), "depth", uv=torch.tensor([[10.0, 20.0]]))
    drawn = axes[0].get_images()[0].get_array()  # the kit's one depth picture, near and far apart
    np.testing.assert_array_equal(drawn, depth_to_rgb(frame.depth))
    near, far = np.unravel_index(frame.depth.argmin(), frame.depth.shape), np.unravel_index(frame.depth.argmax(), frame.depth.shape)
    assert not np.allclose(drawn[near], drawn[far])
    D.show_relative_error(axes[1], frame.depth * 1.1, frame.depth, "x1.1")
    assert "AbsRel 0.100" in axes[1].get_title()
    plt.close(fig)


@pytest.fixture(scope="module")
def motorcycle():
    pytest.importorskip("skimage")
    _, depth = D.middlebury_motorcycle()
    return depth


def _motorcycle_case(depth, seed, outlier_fraction=0.0, outlier_range=(1.1, 1.3)):
    """Real Middlebury depth; a monocular depth simulated by an affine map and a smooth +-25%
    multiplicative field; 1000 random keypoints with 1% noise, optionally some off by a
    factor in `outlier_range` (up or down): too little to stand out against a global fit
    under a 25% distortion, plenty against a local one."""
    known = np.isfinite(depth)
    filled = np.where(known, depth, np.nanmedian(depth))  # the distortion needs a full image
    mono = torch.from_numpy(DepthDistortion(local_amplitude=0.25, wavelength_px=256, seed=seed).apply(filled))
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(known)
    pick = rng.choice(len(xs), 1000, replace=False)
    uv = torch.from_numpy(np.stack([xs[pick], ys[pick]], 1)).float()
    target = depth[ys[pick], xs[pick]] * (1 + 0.01 * rng.normal(size=1000))
    bad = rng.random(1000) < outlier_fraction
    factor = np.exp(rng.uniform(*np.log(outlier_range), size=int(bad.sum())) * rng.choice([-1, 1], size=int(bad.sum())))
    target[bad] *= factor
    return mono, uv, torch.from_numpy(target).float(), torch.from_numpy(depth).float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lwlr_on_real_depth_under_smooth_distortion(motorcycle, seed):
    """Acceptance (issue 20): on real depth, LWLR with its automatic bandwidth reaches AbsRel
    <= 0.03 and is >= 3x better than the robust global fit."""
    mono, uv, target, true = _motorcycle_case(motorcycle, seed)
    scale, shift = D.fit_scale_shift(mono, uv, target, robust=True)
    global_err = D.absolute_relative_error(D.apply_scale_shift(mono, scale, shift), true)
    lwlr_err = D.absolute_relative_error(D.lwlr_align(mono, uv, target), true)
    print(f"motorcycle seed {seed}: AbsRel global {global_err:.4f}, LWLR {lwlr_err:.4f} ({global_err / lwlr_err:.1f}x)")
    assert lwlr_err <= 0.03 and lwlr_err * 3 <= global_err


def test_lwlr_rejects_outliers_against_the_local_fit(motorcycle):
    """10% of the keypoints 10-30% off: the local robustness iterations find them where the
    global residuals (spread +-25% by the distortion) cannot."""
    mono, uv, target, true = _motorcycle_case(motorcycle, 0, outlier_fraction=0.1)
    global_only = D.absolute_relative_error(D.lwlr_align(mono, uv, target, robust_iterations=0), true)
    local = D.absolute_relative_error(D.lwlr_align(mono, uv, target), true)
    print(f"AbsRel with outliers: global rejection only {global_only:.4f}, local rejection {local:.4f}")
    assert local < 0.7 * global_only


def test_lwlr_bandwidth_follows_the_keypoint_density(motorcycle):
    """With the bandwidth left to it (a multiple of the 19 px keypoint spacing), LWLR beats the
    reference 50 px on dense keypoints (measured 0.0115 vs 0.0308)."""
    mono, uv, target, true = _motorcycle_case(motorcycle, 1)
    auto = D.absolute_relative_error(D.lwlr_align(mono, uv, target), true)
    fixed = D.absolute_relative_error(D.lwlr_align(mono, uv, target, bandwidth=50.0), true)
    assert auto < 0.7 * fixed
