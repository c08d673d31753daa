import time

import cv2
import numpy as np
import pytest

from see3d_core import cameras as C
from see3d_core import synthetic


def backward_warp(src, dst_depth, dst_cam, src_cam):
    """Colour of each destination pixel fetched from the source view through the true depth,
    and which destination pixels the source actually sees (depth test)."""
    h, w = dst_depth.shape
    pts = C.depth_to_points(dst_depth, dst_cam.K, dst_cam.c2w)
    uv, z = src_cam.project(pts)
    map_x = uv[..., 0].astype(np.float32)
    map_y = uv[..., 1].astype(np.float32)
    warped = cv2.remap(src.rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    src_depth_at = cv2.remap(src.depth, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = (map_x > 1) & (map_x < w - 2) & (map_y > 1) & (map_y < h - 2) & (z > 0)
    visible = inside & (np.abs(src_depth_at - z) < 0.01 * z)
    return warped, visible


def psnr(a, b):
    return -10 * np.log10(np.mean((a - b) ** 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warping_with_exact_depth_reproduces_other_views(seed):
    scene = synthetic.make_scene(seed)
    cams = synthetic.default_orbit(scene, 5, 256, 256, azimuth_deg=(-20, 20))
    frames = synthetic.render_trajectory(scene, cams)
    for i, j in [(0, 1), (2, 4), (4, 3)]:
        warped, visible = backward_warp(frames[i], frames[j].depth, cams[j], cams[i])
        # pixels next to a depth edge are excluded: their colour is a mix of two surfaces
        edges = cv2.dilate((cv2.Laplacian(np.log(frames[j].depth), cv2.CV_32F, ksize=3) ** 2 > 1e-3).astype(np.uint8), np.ones((3, 3)))
        mask = visible & (edges == 0)
        assert mask.mean() > 0.5, "views should overlap substantially"
        value = psnr(warped[mask], frames[j].rgb[mask])
        assert value >= 30.0, f"warp {i}->{j}: PSNR {value:.1f} dB"


def test_depth_is_metric_z_depth():
    scene = synthetic.make_scene(3)
    cam = synthetic.default_orbit(scene, 1, 64, 64, azimuth_deg=0.0, elevation_deg=20.0)[0]
    frame = synthetic.render(scene, cam)
    ground = frame.object_id == 0
    assert ground.any()
    pts = C.depth_to_points(frame.depth, cam.K, cam.c2w)
    np.testing.assert_allclose(pts[ground][:, 1], scene.ground_y, atol=1e-4)


def test_deterministic_by_seed():
    a = synthetic.make_scene(7)
    b = synthetic.make_scene(7)
    c = synthetic.make_scene(8)
    cam = synthetic.default_orbit(a, 1, 48, 48)[0]
    fa, fb, fc = (synthetic.render(s, cam) for s in (a, b, c))
    np.testing.assert_array_equal(fa.rgb, fb.rgb)
    assert np.abs(fa.rgb - fc.rgb).mean() > 0.02


def test_textures_give_keypoints():
    scene = synthetic.make_scene(0)
    cam = synthetic.default_orbit(scene, 1, 256, 256)[0]
    gray = cv2.cvtColor((synthetic.render(scene, cam).rgb * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    keypoints = cv2.SIFT_create().detect(gray, None)
    assert len(keypoints) > 200


def test_moving_objects_and_waving_panels_change_over_time():
    scene = synthetic.make_scene(4, moving_objects=2, waving_panels=1)
    assert scene.has_dynamics
    cam = synthetic.default_orbit(scene, 1, 96, 96, azimuth_deg=0.0)[0]
    f0, f1 = synthetic.render(scene, cam, 0.0), synthetic.render(scene, cam, 0.5)
    assert np.abs(f0.rgb - f1.rgb).mean() > 1e-3
    static = synthetic.make_scene(4)
    assert not static.has_dynamics
    s0, s1 = synthetic.render(static, cam, 0.0), synthetic.render(static, cam, 0.5)
    np.testing.assert_array_equal(s0.rgb, s1.rgb)


def test_render_speed_regression_guard():
    # the benchmark (benchmarks/bench_synthetic.py) holds the real figure (<= 50 ms); this only
    # catches a gross regression on a loaded CI machine
    scene = synthetic.make_scene(0)
    cams = synthetic.default_orbit(scene, 6, 256, 256)
    synthetic.render(scene, cams[0])
    times = []
    for cam in cams:
        t = time.perf_counter()
        synthetic.render(scene, cam)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 0.25
