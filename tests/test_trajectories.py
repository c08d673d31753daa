import numpy as np
import pytest

from see3d_core import cameras as C
from see3d_core import trajectories as T

K = C.intrinsics_from_fov(60, 64, 48)


def test_orbit_looks_at_center_at_constant_radius():
    center = np.array([0.5, 0.2, 1.0])
    cams = T.orbit(center, 2.0, 12, K, 64, 48, azimuth_deg=(0, 360), elevation_deg=(0, 30))
    assert len(cams) == 12
    for cam in cams:
        assert np.linalg.norm(cam.center - center) == pytest.approx(2.0)
        uv, z = cam.project(center[None])
        np.testing.assert_allclose(uv[0], [K[0, 2], K[1, 2]], atol=1e-9)
    # positive elevation puts the camera above (world up is -y)
    assert cams[-1].center[1] < center[1]


def test_forward_pan_zoom_spiral():
    start = T.orbit([0, 0, 0], 3.0, 1, K, 64, 48, azimuth_deg=0.0, elevation_deg=0.0)[0]
    fwd = T.forward(start, 1.0, 5)
    assert np.linalg.norm(fwd[-1].center - start.center) == pytest.approx(1.0)
    panned = T.pan(start, (-20, 20), 5)
    assert C.rotation_angle_deg(panned[0].c2w[:3, :3], panned[-1].c2w[:3, :3]) == pytest.approx(40.0)
    assert np.allclose(panned[0].center, start.center)
    zoomed = T.zoom(start, (1.0, 2.0), 3)
    assert zoomed[-1].K[0, 0] == pytest.approx(2 * start.K[0, 0])
    sp = T.spiral(start, focus_distance=3.0, num_frames=8)
    focus = start.center + 3.0 * start.c2w[:3, 2]
    for cam in sp:
        uv, _ = cam.project(focus[None])
        np.testing.assert_allclose(uv[0], [K[0, 2], K[1, 2]], atol=1e-6)


def test_interpolate_hits_keys_and_slerps():
    keys = T.orbit([0, 0, 0], 2.0, 3, K, 64, 48, azimuth_deg=(0, 90), endpoint=True)
    path = T.interpolate(keys, 5)
    for a, b in [(0, 0), (2, 1), (4, 2)]:
        np.testing.assert_allclose(path[a].c2w, keys[b].c2w, atol=1e-9)
    # the midpoint rotation is halfway between the keys
    ang = C.rotation_angle_deg(keys[0].c2w[:3, :3], path[1].c2w[:3, :3])
    assert ang == pytest.approx(22.5, abs=1e-6)


def test_json_round_trip(tmp_path):
    cams = T.orbit([0, 0, 0], 2.0, 4, K, 64, 48)
    T.save_json(tmp_path / "t.json", cams)
    back = T.load(tmp_path / "t.json")
    for a, b in zip(cams, back):
        np.testing.assert_allclose(a.c2w, b.c2w)
        np.testing.assert_allclose(a.K, b.K)


def test_realestate10k_round_trip(tmp_path):
    cams = T.orbit([0, 0, 0], 2.0, 4, K, 64, 48)
    T.save_realestate10k(tmp_path / "t.txt", cams, timestamps=[10, 20, 30, 40])
    back, stamps = T.load_realestate10k(tmp_path / "t.txt", 64, 48)
    assert stamps == [10, 20, 30, 40]
    for a, b in zip(cams, back):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
        np.testing.assert_allclose(a.K, b.K, atol=1e-12)
    # a principal point at the image centre is written as 0.5
    line = (tmp_path / "t.txt").read_text().splitlines()[1].split()
    assert float(line[3]) == pytest.approx(0.5) and float(line[4]) == pytest.approx(0.5)


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"frames": [{"K": [[1,0,0],[0,1,0],[0,0,1]]}]}')
    with pytest.raises(ValueError, match="bad.json: frame 0"):
        T.load_json(bad)
    txt = tmp_path / "bad.txt"
    txt.write_text("url\n1 2 3\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        T.load_realestate10k(txt, 64, 48)
