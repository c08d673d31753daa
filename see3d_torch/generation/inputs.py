"""The user's side of generation: input cameras (given, assumed or estimated) and the
trajectory to generate along.

- One image without a camera: a pinhole with a default field of view at the world origin
  (identity `c2w`); depth from the monocular estimator fixes the scene's scale.
- Sparse views (2 to 6 images): cameras from a JSON file (the trajectory format, one frame per
  image, in the order given), or estimated here by one of `CAMERA_METHODS`:
  `two_view` (OpenCV): SIFT matches, the essential matrix between the first two views, points
  triangulated from them, and every further view registered by PnP on those points;
  `colmap` (pycolmap, the `colmap` extra): incremental structure from motion over all pairs.
  Both return the first camera at the world origin and the first two centres one unit apart,
  with the intrinsics of the assumed field of view, so either can stand in for the other.
- Trajectories by name, relative to the first input camera and a focus distance (the median
  depth of the first view): `orbit` (+-30 degrees around the focus point), `forward` (dolly
  by half the focus distance), `spiral` (LLFF-style), `interpolate` (through the input
  cameras), or a trajectory file (JSON / RealEstate10K).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import tempfile

import cv2
import numpy as np

from see3d_core.images import to_uint8, write_png
from see3d_torch.features import ratio_matches, sift_features

from see3d_core import trajectories
from see3d_core.cameras import Camera, intrinsics_from_fov, invert_pose

TRAJECTORY_NAMES = ("orbit", "forward", "spiral", "interpolate")
CAMERA_METHODS = ("two_view", "colmap")


def default_camera(width: int, height: int, fov_x_deg: float = 60.0) -> Camera:
    """The camera assumed for an image without one: centred principal point, identity pose."""
    return Camera(intrinsics_from_fov(fov_x_deg, width, height), np.eye(4), width, height)


def load_input_cameras(path: str | Path, images: Sequence[np.ndarray]) -> list[Camera]:
    """Cameras for the input images from a trajectory JSON file, one frame per image; resized
    to each image's size when the file states another size."""
    cams = trajectories.load_json(path)
    if len(cams) != len(images):
        raise ValueError(f"{path}: has {len(cams)} cameras for {len(images)} input images; expected one per image, in order")
    return [c.resized(img.shape[1], img.shape[0]) if (c.width, c.height) != (img.shape[1], img.shape[0]) else c
            for c, img in zip(cams, images)]


def _sampson_refine(R: np.ndarray, t: np.ndarray, p0: np.ndarray, p1: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refine a relative pose (x1 = R x0 + t, |t| = 1) by least squares on the Sampson
    distance of the inlier matches: RANSAC's minimal-sample pose is noisy at low resolution."""
    from scipy.optimize import least_squares

    Kinv = np.linalg.inv(K)
    x0 = np.c_[p0, np.ones(len(p0))] @ Kinv.T
    x1 = np.c_[p1, np.ones(len(p1))] @ Kinv.T
    focal = K[0, 0]

    def unpack(params):
        Rm = cv2.Rodrigues(params[:3])[0] @ R
        th, ph = params[3:]
        tv = np.array([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)])
        return Rm, tv

    def residuals(params):
        Rm, tv = unpack(params)
        tx = np.array([[0, -tv[2], tv[1]], [tv[2], 0, -tv[0]], [-tv[1], tv[0], 0]])
        E = tx @ Rm
        Ex0 = x0 @ E.T
        Etx1 = x1 @ E
        num = np.sum(x1 * Ex0, axis=1)
        den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
        return focal * num / np.sqrt(np.maximum(den, 1e-18))  # in pixels

    t = t / np.linalg.norm(t)
    start = np.array([0.0, 0.0, 0.0, np.arccos(np.clip(t[2], -1, 1)), np.arctan2(t[1], t[0])])
    fit = least_squares(residuals, start, loss="huber", f_scale=1.0)
    return unpack(fit.x)


def estimate_cameras(images: Sequence[np.ndarray], fov_x_deg: float = 60.0, method: str = "two_view",
                     min_matches: int = 30) -> list[Camera]:
    """Cameras for 2+ RGB images in [0, 1] of a static scene, by `method` (one of
    `CAMERA_METHODS`, see the module docstring).

    The first camera is the world origin and the first two centres are one unit apart. All
    images share the intrinsics of `fov_x_deg` (few views with short baselines do not pin the
    focal length down, so neither method refines it). `min_matches` is the two-view method's
    minimum of SIFT matches between the first two images. Raises ValueError naming the images
    that could not be registered: try the other method or pass cameras in a JSON file then."""
    if method not in CAMERA_METHODS:
        raise ValueError(f"camera estimation method must be one of {', '.join(CAMERA_METHODS)}; got {method!r}")
    if len(images) < 2:
        raise ValueError(f"estimating cameras needs at least 2 images, got {len(images)}")
    h, w = images[0].shape[:2]
    if any(img.shape[:2] != (h, w) for img in images):
        raise ValueError("estimating cameras needs images of one size; resize them first")
    K = intrinsics_from_fov(fov_x_deg, w, h)
    c2ws = _two_view_c2ws(images, K, min_matches) if method == "two_view" else _colmap_c2ws(images, K)
    return [Camera(K, c2w, w, h) for c2w in _anchored_to_first_pair(c2ws)]


def _anchored_to_first_pair(c2ws: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The same cameras in the frame of the first one, with the first two centres one unit apart
    (an estimate from images alone knows poses only up to a similarity)."""
    to_first = invert_pose(c2ws[0])
    anchored = [to_first @ c2w for c2w in c2ws]
    baseline = float(np.linalg.norm(anchored[1][:3, 3]))
    if baseline < 1e-9:
        raise ValueError("input images 0 and 1 were estimated at the same position; pass --cameras")
    for c2w in anchored:
        c2w[:3, 3] /= baseline
    return anchored



def _two_view_c2ws(images: Sequence[np.ndarray], K: np.ndarray, min_matches: int) -> list[np.ndarray]:
    """Two-view geometry between the first two images, then PnP for every further one."""
    feats = [sift_features(cv2.cvtColor(to_uint8(img), cv2.COLOR_RGB2GRAY)) for img in images]
    kp0, d0 = feats[0]
    kp1, d1 = feats[1]
    pairs = ratio_matches(d0, d1, cross_check="nearest")
    if len(pairs) < min_matches:
        raise ValueError(f"input images 0 and 1 share only {len(pairs)} SIFT matches (need {min_matches}); "
                         "pass --cameras or try --camera-method colmap")
    p0 = np.float64([kp0[i].pt for i, _ in pairs])
    p1 = np.float64([kp1[j].pt for _, j in pairs])
    E, inliers = cv2.findEssentialMat(p0, p1, K, method=cv2.RANSAC, prob=0.999, threshold=1.0)
    if E is None or E.shape != (3, 3):
        raise ValueError("input images 0 and 1: no essential matrix found; pass --cameras")
    _, R, t, pose_mask = cv2.recoverPose(E, p0, p1, K, mask=inliers.copy())
    good = pose_mask.ravel() > 0
    R, t = _sampson_refine(R, t.ravel(), p0[good], p1[good], K)
    w2c1 = np.eye(4)
    w2c1[:3, :3], w2c1[:3, 3] = R, t
    P0 = K @ np.eye(4)[:3]
    P1 = K @ w2c1[:3]
    X = cv2.triangulatePoints(P0, P1, p0[good].T, p1[good].T)
    X = (X[:3] / X[3]).T
    in_front = (X[:, 2] > 0) & ((X @ w2c1[2, :3] + w2c1[2, 3]) > 0)
    points = {pairs[k][0]: X[n] for n, k in enumerate(np.flatnonzero(good)) if in_front[n]}
    c2ws = [np.eye(4), invert_pose(w2c1)]
    for k in range(2, len(images)):
        kpk, dk = feats[k]
        obj, img_pts = [], []
        for i, j in ratio_matches(d0, dk, cross_check="nearest"):
            if i in points:
                obj.append(points[i])
                img_pts.append(kpk[j].pt)
        if len(obj) < 6:
            raise ValueError(f"input image {k}: only {len(obj)} matches with triangulated points (need 6); "
                             "pass --cameras or try --camera-method colmap")
        ok, rvec, tvec, inl = cv2.solvePnPRansac(np.float64(obj), np.float64(img_pts), K, None, reprojectionError=2.0,
                                                 iterationsCount=1000)
        if not ok or inl is None or len(inl) < 6:
            raise ValueError(f"input image {k}: PnP failed; pass --cameras or try --camera-method colmap")
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
        c2ws.append(invert_pose(w2c))
    return c2ws


def _import_pycolmap():
    try:
        import pycolmap
    except ImportError as err:
        raise ImportError("camera estimation method 'colmap' needs pycolmap: pip install 'see3d-kit[colmap]'") from err
    if int(pycolmap.__version__.split(".")[0]) < 4:
        raise ImportError(f"camera estimation method 'colmap' needs pycolmap >= 4 (its API changed), found "
                          f"{pycolmap.__version__}: pip install 'see3d-kit[colmap]'")
    return pycolmap


def _colmap_c2ws(images: Sequence[np.ndarray], K: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Incremental SfM (pycolmap, CPU, one thread, fixed seed) on the images written to a
    temporary folder; one shared SIMPLE_PINHOLE camera held at `K`."""
    pycolmap = _import_pycolmap()
    names = [f"{k:03d}.png" for k in range(len(images))]
    # progress and COLMAP's own failure lines off: a failure is raised below with the image names
    log_level, pycolmap.logging.minloglevel = pycolmap.logging.minloglevel, int(pycolmap.logging.FATAL)
    try:
        with tempfile.TemporaryDirectory(prefix="see3d_colmap_") as tmp:
            image_dir, database = Path(tmp) / "images", Path(tmp) / "database.db"
            image_dir.mkdir()
            for name, img in zip(names, images):
                write_png(image_dir / name, img)
            # COLMAP puts pixel centres at +0.5, the kit at integers
            reader = pycolmap.ImageReaderOptions(camera_model="SIMPLE_PINHOLE",
                                                 camera_params=f"{K[0, 0]:.17g},{K[0, 2] + 0.5:.17g},{K[1, 2] + 0.5:.17g}")
            pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader,
                                      extraction_options=pycolmap.FeatureExtractionOptions(num_threads=1, use_gpu=False),
                                      device=pycolmap.Device.cpu)
            verification = pycolmap.TwoViewGeometryOptions()
            verification.ransac.random_seed = seed
            pycolmap.match_exhaustive(database, matching_options=pycolmap.FeatureMatchingOptions(num_threads=1, use_gpu=False),
                                      verification_options=verification, device=pycolmap.Device.cpu)
            options = pycolmap.IncrementalPipelineOptions(
                num_threads=1, random_seed=seed, multiple_models=False, min_model_size=2, extract_colors=False,
                ba_refine_focal_length=False, ba_refine_principal_point=False, ba_refine_extra_params=False)
            # few small images along a short path (measured on 3 synthetic scenes, 3-6 views,
            # 160-240 px): COLMAP's initial-pair defaults (16 degrees, 100 inliers) converged to
            # wrong reconstructions (4-22 degrees off) in 8 of 15 runs, and its 4 px point filter
            # still let scene 1 go wrong; with these, 18 of 18 runs (2-6 views) were within 0.6
            # degrees
            options.mapper.init_min_tri_angle = 4.0
            options.mapper.init_min_num_inliers = 50
            options.mapper.filter_max_reproj_error = 2.0
            # two images only have two-view tracks: ignoring them discards every initial pair
            options.triangulation.ignore_two_view_tracks = False
            models = pycolmap.incremental_mapping(database, image_dir, Path(tmp) / "sparse", options=options)
    finally:
        pycolmap.logging.minloglevel = log_level
    best = max(models.values(), key=lambda m: m.num_reg_images(), default=None)
    c2w_by_name = {}
    for image_id in best.reg_image_ids() if best is not None else []:
        image = best.image(image_id)
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        c2w_by_name[image.name] = invert_pose(w2c)
    missing = [k for k, name in enumerate(names) if name not in c2w_by_name]
    if missing:
        raise ValueError(f"pycolmap registered {len(images) - len(missing)} of {len(images)} input images; not registered: "
                         f"{', '.join(f'input image {k}' for k in missing)}; try --camera-method two_view or pass --cameras")
    return [c2w_by_name[name] for name in names]


def build_trajectory(name: str, inputs: Sequence[Camera], focus_distance: float, num_views: int) -> list[Camera]:
    """Target cameras along a named trajectory (see the module docstring) or a file; cameras
    that coincide with an input camera are dropped (those views are known)."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if focus_distance <= 0:
        raise ValueError(f"focus_distance must be positive, got {focus_distance}")
    start = inputs[0]
    if name == "orbit":
        # an orbit in the start camera's frame (looking at +z), then placed in the world
        local = trajectories.orbit([0.0, 0.0, focus_distance], focus_distance, num_views, start.K, start.width, start.height,
                                   azimuth_deg=(-30.0, 30.0), elevation_deg=0.0, endpoint=True)
        cams = [Camera(start.K, start.c2w @ c.c2w, start.width, start.height) for c in local]
    elif name == "forward":
        cams = trajectories.forward(start, 0.5 * focus_distance, num_views + 1)[1:]
    elif name == "spiral":
        cams = trajectories.spiral(start, focus_distance, num_views, radius_xy=0.15 * focus_distance,
                                   depth_amplitude=0.1 * focus_distance, rotations=1.0)
    elif name == "interpolate":
        if len(inputs) < 2:
            raise ValueError("trajectory 'interpolate' passes through the input cameras: it needs 2 or more inputs")
        cams = trajectories.interpolate(list(inputs), num_views)
    else:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"trajectory must be one of {', '.join(TRAJECTORY_NAMES)} or an existing file; got {name!r}")
        cams = [c.resized(start.width, start.height) if (c.width, c.height) != (start.width, start.height) else c
                for c in trajectories.load(path, start.width, start.height)]
    tol = 1e-6 * max(1.0, focus_distance)
    return [c for c in cams if not any(np.linalg.norm(c.c2w - i.c2w) < tol for i in inputs)]

