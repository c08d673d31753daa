"""Real-capture inputs of splatting: COLMAP workspaces (read, rescaled, undistorted), structure
from motion on a synthetic orbit (photos and video), SfM-point and frustum initialisation,
`held_out` in metrics.json, and the named errors of bad inputs."""

import json

import cv2
import numpy as np
import pytest

from see3d_core import synthetic, trajectories
from see3d_core.cameras import Camera, intrinsics_matrix, rotation_angle_deg, scale_intrinsics, similarity_aligned
from see3d_core.images import to_uint8, write_png
from see3d_core.videos import write_mp4
from see3d_torch.splatting import Gaussians, reconstruct
from see3d_torch.splatting.capture import load_capture, read_video_frames, sfm_frame_side
from see3d_torch.splatting.colmap import SfMConfig
from see3d_torch.splatting.cli import main as reconstruct_main
from see3d_torch.splatting.gaussians import nearest_neighbour_radii

pycolmap = pytest.importorskip("pycolmap", reason="the 'colmap' extra is not installed")


@pytest.fixture(scope="module")
def orbit():
    """Scene 0, 8 views over 60 degrees at 160 px with a 45-degree field of view (SfM starts
    from 60 degrees, so the focal length must be refined)."""
    scene = synthetic.make_scene(0)
    cameras = synthetic.default_orbit(scene, 8, 160, 160, azimuth_deg=(-30, 30), fov_x_deg=45.0)
    return scene, cameras, [synthetic.render(scene, c).rgb for c in cameras]


def _write_workspace(root, cameras, images, models, points, colors, text=False):
    """A COLMAP workspace written by pycolmap: one camera per view with the given model names."""
    (root / "images").mkdir(parents=True)
    (root / "sparse" / "0").mkdir(parents=True)
    reconstruction = pycolmap.Reconstruction()
    for i, (cam, image, model) in enumerate(zip(cameras, images, models)):
        fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2] + 0.5, cam.K[1, 2] + 0.5  # COLMAP: centres at +0.5
        params = {"SIMPLE_PINHOLE": [fx, cx, cy], "PINHOLE": [fx, fy, cx, cy], "SIMPLE_RADIAL": [fx, cx, cy, 0.05]}[model]
        reconstruction.add_camera_with_trivial_rig(
            pycolmap.Camera(camera_id=i + 1, model=model, width=cam.width, height=cam.height, params=params))
        name = f"view_{i:02d}.png"
        reconstruction.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=i + 1, image_id=i + 1),
                                                    pycolmap.Rigid3d(cam.w2c[:3]))
        write_png(root / "images" / name, image)
    for p, c in zip(points, colors):
        reconstruction.add_point3D(p, pycolmap.Track(), to_uint8(c))
    (reconstruction.write_text if text else reconstruction.write)(root / "sparse" / "0")


@pytest.mark.parametrize("text", [False, True])
def test_colmap_workspace_round_trip(orbit, tmp_path, text):
    scene, cameras, images = orbit
    # a non-square pixel and an off-centre principal point, so that a swapped or unshifted
    # parameter shows
    cameras = [Camera(intrinsics_matrix(c.K[0, 0], 1.01 * c.K[1, 1], 77.25, 81.5), c.c2w, c.width, c.height) for c in cameras]
    models = ["PINHOLE"] * 4 + ["SIMPLE_PINHOLE"] * 4
    cameras[4:] = [Camera(intrinsics_matrix(c.K[0, 0], c.K[0, 0], 77.25, 81.5), c.c2w, c.width, c.height) for c in cameras[4:]]
    rng = np.random.default_rng(0)
    points, colors = rng.normal(size=(50, 3)), rng.integers(0, 256, (50, 3)) / 255.0
    _write_workspace(tmp_path / "ws", cameras, images, models, points, colors, text=text)

    capture = load_capture(tmp_path / "ws")
    assert capture.source == "colmap" and capture.names == [f"view_{i:02d}.png" for i in range(8)]
    for got, want in zip(capture.cameras, cameras):
        np.testing.assert_allclose(got.K, want.K, rtol=0, atol=1e-9)  # principal point back at integer centres
        np.testing.assert_allclose(got.c2w, want.c2w, rtol=0, atol=1e-9)
        assert (got.width, got.height) == (160, 160)
    order = np.lexsort(points.T)
    got_order = np.lexsort(capture.points.T)
    np.testing.assert_allclose(capture.points[got_order], points[order], atol=1e-12)
    np.testing.assert_allclose(capture.point_colors[got_order], colors[order], atol=1e-7)
    np.testing.assert_allclose(capture.images[3], to_uint8(images[3]) / 255.0, atol=1e-7)
    # a world point lands on the same pixel through COLMAP's own projection (+0.5 centres)
    world_point = scene.extent * np.array([0.05, -0.1, 0.3])
    uv_kit, _ = capture.cameras[5].project(world_point)
    reconstruction = pycolmap.Reconstruction(tmp_path / "ws" / "sparse" / "0")
    image = reconstruction.find_image_with_name("view_05.png")
    uv_colmap = image.camera.img_from_cam(image.cam_from_world() * world_point)
    np.testing.assert_allclose(uv_kit + 0.5, uv_colmap, atol=1e-9)


def test_cameras_are_rescaled_to_the_images_size(orbit, tmp_path):
    _, cameras, images = orbit
    _write_workspace(tmp_path / "ws", cameras[:3], images[:3], ["PINHOLE"] * 3, np.zeros((2, 3)), np.zeros((2, 3)))
    for p in (tmp_path / "ws" / "images").iterdir():  # images downscaled after SfM, as images_2/ folders are
        cv2.imwrite(str(p), cv2.resize(cv2.imread(str(p)), (80, 40), interpolation=cv2.INTER_AREA))
    capture = load_capture(tmp_path / "ws")
    assert capture.points is not None and len(capture.points) == 2
    assert capture.images[0].shape == (40, 80, 3)
    for got, want in zip(capture.cameras, cameras):
        assert (got.width, got.height) == (80, 40)
        np.testing.assert_allclose(got.K, scale_intrinsics(want.K, 0.5, 0.25), atol=1e-12)
    # the image corners stay the image corners: pixel (-0.5, -0.5) and (W - 0.5, H - 0.5) map through
    corner = cameras[0].unproject(np.array([159.5, 159.5]), 2.0)
    np.testing.assert_allclose(capture.cameras[0].project(corner)[0], [79.5, 39.5], atol=1e-9)
    # --max-side shrinks and rescales the same way
    shrunk = load_capture(tmp_path / "ws", max_side=40)
    assert shrunk.images[0].shape == (20, 40, 3)
    np.testing.assert_allclose(shrunk.cameras[0].K, scale_intrinsics(cameras[0].K, 0.25, 0.125), atol=1e-12)


def test_distorted_models_are_undistorted_or_named(orbit, tmp_path):
    _, cameras, images = orbit
    _write_workspace(tmp_path / "ws", cameras[:3], images[:3], ["SIMPLE_RADIAL"] * 3, np.zeros((2, 3)), np.zeros((2, 3)))
    _write_workspace(tmp_path / "no_points", cameras[:3], images[:3], ["PINHOLE"] * 3, np.zeros((0, 3)), np.zeros((0, 3)))
    assert load_capture(tmp_path / "no_points").points is None  # nothing to start from: random init
    with pytest.raises(ValueError, match=r"camera model SIMPLE_RADIAL has lens distortion; expected SIMPLE_PINHOLE or PINHOLE"):
        load_capture(tmp_path / "ws")
    capture = load_capture(tmp_path / "ws", workspace=tmp_path / "out")
    assert (tmp_path / "out" / "undistorted" / "sparse" / "cameras.bin").is_file()
    assert len(capture.cameras) == 3
    # the undistorted pinhole keeps the pose; its image is the undistorted one COLMAP wrote
    np.testing.assert_allclose(capture.cameras[1].c2w, cameras[1].c2w, atol=1e-9)
    assert capture.images[0].shape[:2] == (capture.cameras[0].height, capture.cameras[0].width)


def _check_recovered(capture, cameras):
    """Poses up to a similarity, relative rotations and the focal length against the truth."""
    index = [int(n.split("_")[1][:4]) for n in capture.names]
    truth = [cameras[i] for i in index]
    true_centres = np.array([c.center for c in truth])
    radius = np.linalg.norm(true_centres - true_centres.mean(0), axis=1).max()
    aligned = similarity_aligned(np.array([c.center for c in capture.cameras]), true_centres)
    # measured on this orbit (PNG frames): centres within 0.3% of the orbit radius, relative
    # rotations within 0.3 degrees, focal length within 1.6% (from a start 29% too short);
    # the bounds are several times that, far below what a failed reconstruction gives
    assert np.linalg.norm(aligned - true_centres, axis=1).max() < 0.02 * radius
    worst = max(rotation_angle_deg(a.c2w[:3, :3].T @ b.c2w[:3, :3], s.c2w[:3, :3].T @ t.c2w[:3, :3])
                for a, s in zip(capture.cameras, truth) for b, t in zip(capture.cameras, truth))
    assert worst < 1.5
    assert capture.cameras[0].K[0, 0] == pytest.approx(truth[0].K[0, 0], rel=0.05)


def test_structure_from_motion_recovers_a_synthetic_orbit(orbit, tmp_path):
    _, cameras, images = orbit
    (tmp_path / "photos").mkdir()
    for i, image in enumerate(images):
        write_png(tmp_path / "photos" / f"IMG_{i:04d}.png", image)
    capture = load_capture(tmp_path / "photos", workspace=tmp_path / "ws")
    assert capture.source == "sfm" and len(capture.cameras) == 8
    assert (tmp_path / "ws" / "sparse" / "0" / "cameras.bin").is_file() and (tmp_path / "ws" / "database.db").is_file()
    _check_recovered(capture, cameras)
    # the SfM points lie on the scene: their colours match the images where they project
    assert len(capture.points) > 100
    uv, z = capture.cameras[0].project(capture.points)
    inside = (z > 0) & (uv >= 0).all(1) & (uv[:, 0] <= 159) & (uv[:, 1] <= 159)
    pixels = capture.images[0][np.round(uv[inside, 1]).astype(int), np.round(uv[inside, 0]).astype(int)]
    assert np.median(np.abs(pixels - capture.point_colors[inside])) < 0.1
    # the workspace reads back as a COLMAP workspace, identically
    again = load_capture(tmp_path / "ws")
    for a, b in zip(again.cameras, capture.cameras):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
        np.testing.assert_allclose(a.K, b.K, atol=1e-12)
    # posed at SfMConfig.max_image_side (160 here), trained at max_side (80): the cameras are the
    # SfM ones rescaled to the training images
    assert sfm_frame_side(320, SfMConfig()) == 640 and sfm_frame_side(1000, SfMConfig()) == 1000
    assert sfm_frame_side(None, SfMConfig()) is None and sfm_frame_side(320, SfMConfig(max_image_side=None)) is None
    small = load_capture(tmp_path / "photos", workspace=tmp_path / "ws_small", max_side=80,
                         sfm_config=SfMConfig(max_image_side=160))
    assert {im.shape for im in small.images} == {(80, 80, 3)}
    assert cv2.imread(str(tmp_path / "ws_small" / "images" / "frame_0000.png")).shape == (160, 160, 3)
    posed = load_capture(tmp_path / "ws_small")  # the model as SfM wrote it, at 160 px
    for a, b in zip(small.cameras, posed.cameras):
        assert (a.width, a.height) == (80, 80)
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
        np.testing.assert_allclose(a.K, b.resized(80, 80).K, atol=1e-12)
    np.testing.assert_allclose(small.points, posed.points)


def test_sfm_points_initialise_the_gaussians(orbit):
    scene, cameras, images = orbit
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 3))
    radii = nearest_neighbour_radii(points)
    brute = np.sort(np.linalg.norm(points[:, None] - points[None], axis=-1), axis=1)[:, 1:4]
    np.testing.assert_allclose(radii, np.sqrt((brute**2).mean(1)), rtol=1e-12)
    gaussians = Gaussians.from_sfm_points(points, rng.uniform(0, 1, (40, 3)))
    np.testing.assert_allclose(gaussians.scales.numpy(), np.repeat(radii[:, None], 3, 1), rtol=1e-5)

    # SfM-like points (true surface points with their colours) beat random init on held-out views
    from see3d_core.cameras import depth_to_points

    frames = [synthetic.render(scene, c) for c in cameras]
    surface = np.concatenate([depth_to_points(f.depth, c.K, c.c2w)[::7, ::7].reshape(-1, 3) for f, c in zip(frames, cameras)])
    colours = np.concatenate([f.rgb[::7, ::7].reshape(-1, 3) for f in frames])
    keep = np.isfinite(surface).all(1) & (np.linalg.norm(surface - cameras[0].center, axis=1) < 3 * scene.extent)
    small = [c.resized(48, 48) for c in cameras]
    small_images = [cv2.resize(im, (48, 48), interpolation=cv2.INTER_AREA) for im in images]
    options = dict(steps=30, eval_views=(3,), progress=False, lpips_weight=0.0, eval_lpips=False, densification=None,
                   num_threads=1)
    from_points = reconstruct(small_images, small, points=surface[keep], point_colors=colours[keep], init="points",
                              **options)
    at_random = reconstruct(small_images, small, init_points=int(keep.sum()), **options)
    assert len(from_points.history) == 30 and from_points.history[0]["num_gaussians"] == int(keep.sum())
    # measured: 21.5 vs 15.7 dB after 30 steps
    assert from_points.evaluations[-1]["psnr"] > at_random.evaluations[-1]["psnr"] + 2.0
    # the default with points: one Gaussian per sampled training pixel at depths interpolated
    # between the points. With points as sparse as real SfM gives (every 20th pixel of the
    # views: 504 here), it starts much sharper than one blob per point
    sparse = np.concatenate([depth_to_points(f.depth, c.K, c.c2w)[::20, ::20].reshape(-1, 3) for f, c in zip(frames, cameras)])
    sparse_colours = np.concatenate([f.rgb[::20, ::20].reshape(-1, 3) for f in frames])
    near = np.isfinite(sparse).all(1) & (np.linalg.norm(sparse - cameras[0].center, axis=1) < 3 * scene.extent)
    sparse, sparse_colours = sparse[near], sparse_colours[near]
    from_sparse_points = reconstruct(small_images, small, points=sparse, point_colors=sparse_colours, init="points", **options)
    from_pixels = reconstruct(small_images, small, points=sparse, point_colors=sparse_colours, init_points=4_000, **options)
    assert from_pixels.history[0]["num_gaussians"] == 4_000
    # measured: 20.6 vs 17.7 dB after 30 steps
    assert from_pixels.evaluations[-1]["psnr"] > from_sparse_points.evaluations[-1]["psnr"] + 2.0
    with pytest.raises(ValueError, match=r"point_colors must be \[N, 3\] like points"):
        reconstruct(small_images, small, points=surface[:5], point_colors=colours[:4], **options)
    for init in ("points", "sfm-depth"):
        with pytest.raises(ValueError, match=f"init='{init}' needs points"):
            reconstruct(small_images, small, init=init, **options)


def test_sfm_depth_maps_interpolate_the_points_each_view_sees(orbit):
    from see3d_torch.splatting.initialisation import sfm_depth_maps, visible_points

    scene, cameras, _ = orbit
    frame = synthetic.render(scene, cameras[0])
    from see3d_core.cameras import depth_to_points

    # SfM-like points: the surface seen by view 0 on a 10-pixel lattice
    surface = depth_to_points(frame.depth, cameras[0].K, cameras[0].c2w)[5::10, 5::10].reshape(-1, 3)
    surface = surface[np.isfinite(surface).all(1)]
    (depth,) = sfm_depth_maps(surface, cameras[:1])
    valid = np.isfinite(frame.depth)
    relative = np.abs(depth[valid] - frame.depth[valid]) / frame.depth[valid]
    # the lattice is exact, so only depth edges between lattice points and the 5-pixel border
    # outside the lattice's hull are off (measured: median 1e-7, 85% within 5%)
    assert depth.shape == (160, 160) and np.isfinite(depth).all()
    assert np.median(relative) < 0.01 and np.mean(relative < 0.05) > 0.8
    # a point hidden behind the surface (same pixel, twice as far) is not used
    hidden_depth = 2.0 * frame.depth[85, 85]  # 1 px beside the lattice point at (85, 85)
    hidden = cameras[0].unproject(np.array([[86.0, 85.0]]), np.array([hidden_depth]))
    uv, z = visible_points(np.concatenate([surface, hidden]), cameras[0])
    assert len(z) == len(surface) and not np.isclose(z, hidden_depth).any()
    # a camera that sees fewer than 3 points has no depth
    (none,) = sfm_depth_maps(surface[:2], cameras[:1])
    assert np.isnan(none).all()


def test_random_init_stays_in_the_cameras_view(orbit):
    _, cameras, _ = orbit
    gaussians = Gaussians.in_frustums(3_000, cameras, 0.5, 4.0, seed=1)
    points = gaussians.means.double().numpy()
    seen = np.zeros(len(points), bool)
    for cam in cameras:
        uv, z = cam.project(points)
        seen |= (z >= 0.5 - 1e-6) & (z <= 4.0 + 1e-6) & (uv >= -0.5 - 1e-6).all(1) & (uv <= 159.5 + 1e-6).all(1)
    assert seen.all()
    # not all in one camera's frustum: every camera contributes
    first_only = cameras[0].project(points)
    assert not ((first_only[1] > 0) & (first_only[0] >= -0.5).all(1) & (first_only[0] <= 159.5).all(1)).all()
    with pytest.raises(ValueError, match="0 < near < far"):
        Gaussians.in_frustums(10, cameras, 2.0, 1.0)


def test_bad_capture_inputs_are_named(orbit, tmp_path):
    _, cameras, images = orbit
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ValueError, match=r"broken.mp4: cannot read the video"):
        read_video_frames(garbage)
    with pytest.raises(FileNotFoundError, match=r"video not found: .*missing.mp4"):
        read_video_frames(tmp_path / "missing.mp4")
    short = tmp_path / "short.mp4"
    write_mp4(short, np.stack([to_uint8(images[0])] * 2), fps=10)
    with pytest.raises(ValueError, match=r"structure from motion needs at least 3 frames, got 2"):
        load_capture(short, workspace=tmp_path / "ws_short")
    # views that share nothing: SfM cannot register them and says which
    rng = np.random.default_rng(0)
    (tmp_path / "noise").mkdir()
    for i in range(4):
        write_png(tmp_path / "noise" / f"n{i}.png", cv2.GaussianBlur(rng.uniform(0, 1, (96, 96, 3)), (0, 0), 1.0))
    with pytest.raises(ValueError, match=r"structure from motion registered \d of 4 images \(need 50%\); not registered: frame_"):
        load_capture(tmp_path / "noise", workspace=tmp_path / "ws_noise")
    with pytest.raises(ValueError, match="needs a workspace folder"):
        load_capture(tmp_path / "noise")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt: expected a folder of images, a COLMAP workspace or a video"):
        load_capture(tmp_path / "notes.txt")


@pytest.mark.slow  # 5-8 s: out of the fast tier, in make test
def test_see3d_reconstruct_from_a_video(orbit, tmp_path, capsys):
    _, cameras, images = orbit
    video = tmp_path / "orbit.mp4"
    # 16 frames, of which --max-frames 8 are used (every other one)
    dense = synthetic.default_orbit(orbit[0], 15, 160, 160, azimuth_deg=(-30, 30), fov_x_deg=45.0)
    write_mp4(video, np.stack([to_uint8(synthetic.render(orbit[0], c).rgb) for c in dense]), fps=10)
    out = tmp_path / "out"
    code = reconstruct_main([str(video), "--out", str(out), "--max-frames", "8", "--steps", "20", "--holdout-every", "4",
                             "--lpips-weight", "0", "--video-frames", "0", "--mesh-resolution", "0", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    assert "from sfm" in capsys.readouterr().out
    assert len(list((out / "colmap" / "images").iterdir())) == 8
    assert (out / "colmap" / "sparse" / "0" / "points3D.bin").is_file()
    saved = trajectories.load(out / "cameras.json", 160, 160)
    capture = load_capture(out / "colmap")
    _check_recovered(capture, [dense[2 * i] for i in range(8)])  # frames 0, 2, ..., 14
    for a, b in zip(saved, capture.cameras):  # cameras.json beside the result holds the SfM cameras
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-9)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out"]["views"] == [3, 7]
    assert set(metrics["held_out"]) == {"psnr", "ssim", "lpips", "views"}
    assert metrics["held_out"]["psnr"] == metrics["evaluations"][-1]["psnr"]
    # a capture trains at SH degree 3 by default, and the PLY holds all of it (45 f_rest, as 3DGS writes)
    ply = (out / "splat.ply").read_bytes()
    assert b"property float f_rest_44\nproperty float opacity" in ply[:2000]
    assert Gaussians.load_ply(out / "splat.ply").sh_degree == 3
    # a broken video: a clear error and exit code 2
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    assert reconstruct_main([str(tmp_path / "broken.mp4"), "--out", str(tmp_path / "o2")]) == 2
    assert "broken.mp4: cannot read the video" in capsys.readouterr().err
