import numpy as np
import pytest

from see3d_core import cameras as C


def random_pose(rng):
    R = C.axis_angle_to_rotation(rng.normal(size=3), rng.uniform(0, np.pi))
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = rng.normal(size=3)
    return T


def test_project_unproject_round_trip():
    rng = np.random.default_rng(0)
    K = C.intrinsics_from_fov(60, 320, 240)
    c2w = random_pose(rng)
    uv = rng.uniform([0, 0], [320, 240], size=(100, 2))
    depth = rng.uniform(0.5, 20, size=100)
    pts = C.unproject(uv, depth, K, c2w)
    uv2, z = C.project(pts, K, C.invert_pose(c2w))
    np.testing.assert_allclose(uv2, uv, atol=1e-9)
    np.testing.assert_allclose(z, depth, atol=1e-9)


def test_invert_pose_matches_inverse():
    T = random_pose(np.random.default_rng(1))
    np.testing.assert_allclose(C.invert_pose(T), np.linalg.inv(T), atol=1e-12)


def test_opencv_convention_look_at():
    c2w = C.look_at([0, 0, -3], [0, 0, 0])
    # looking along +z from z=-3 with world up -y: identity rotation
    np.testing.assert_allclose(c2w[:3, :3], np.eye(3), atol=1e-12)
    K = C.intrinsics_from_fov(90, 101, 101)
    uv, z = C.project(np.array([[0.0, -1.0, 0.0]]), K, C.invert_pose(c2w))
    assert z[0] == pytest.approx(3.0)
    assert uv[0, 1] < 50  # a point above (world -y) appears in the upper half of the image


def test_look_at_rejects_degenerate():
    with pytest.raises(ValueError, match="coincide"):
        C.look_at([1, 1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="parallel"):
        C.look_at([0, 0, 0], [0, 1, 0])


def test_quaternion_round_trip_and_slerp():
    rng = np.random.default_rng(2)
    for _ in range(20):
        R = random_pose(rng)[:3, :3]
        np.testing.assert_allclose(C.quaternion_to_rotation(C.rotation_to_quaternion(R)), R, atol=1e-10)
    R0, R1 = np.eye(3), C.axis_angle_to_rotation([0, 1, 0], np.deg2rad(80))
    q = C.slerp(C.rotation_to_quaternion(R0), C.rotation_to_quaternion(R1), 0.25)
    assert C.rotation_angle_deg(R0, C.quaternion_to_rotation(q)) == pytest.approx(20.0, abs=1e-6)


def test_scale_intrinsics_keeps_pixel_centres():
    K = C.intrinsics_from_fov(60, 64, 48)
    K2 = C.scale_intrinsics(K, 2.0)
    # the image centre stays the image centre
    assert K2[0, 2] == pytest.approx((128 - 1) / 2)
    assert K2[1, 2] == pytest.approx((96 - 1) / 2)


def test_camera_validation_and_dict_round_trip():
    cam = C.Camera(C.intrinsics_from_fov(50, 64, 32), np.eye(4), 64, 32)
    again = C.Camera.from_dict(cam.to_dict())
    np.testing.assert_array_equal(again.K, cam.K)
    with pytest.raises(ValueError, match="3x3"):
        C.Camera(np.eye(4), np.eye(4), 4, 4)
    with pytest.raises(ValueError, match="missing"):
        C.Camera.from_dict({"K": np.eye(3).tolist()})
