"""The user's side of generation: input cameras (given, assumed or estimated) and the
trajectory to generate along.

- One image without a camera: a pinhole with a default field of view at the world origin
  (identity `c2w`); depth from the monocular estimator fixes the scene's scale.
- Sparse views (2 to 6 images): cameras from a JSON file (the trajectory format, one frame per
  image, in the order given), or estimated here by one of `CAMERA_METHODS`:
  `two_view` (OpenCV): SIFT matches, the essential matrix between the first two views, points
  triangulated from them, and every further view registered by PnP on those points;
  `colmap` (pycolmap, the `colmap` extra, through `see3d_torch.splatting.colmap.run_sfm`):
  incremental structure from motion over all pairs, with the focal length searched from the
  assumed field of view (3+ images). Both return the first camera at the world origin and the
  first two centres one unit apart, so either can stand in for the other.
- Trajectories by name, relative to the first input camera and a focus distance (the median
  depth of the first view): `orbit` (+-30 degrees around the focus point), `forward` (dolly
  by half the focus distance), `spiral` (LLFF-style), `interpolate` (through the input
  cameras), or a trajectory file (JSON / RealEstate10K).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from see3d_core.images import to_uint8, write_png
from see3d_torch.features import ratio_matches, sift_features

from see3d_core import trajectories
from see3d_core.cameras import Camera, intrinsics_from_fov, invert_pose

if TYPE_CHECKING:
    from see3d_torch.splatting.colmap import SparseModel

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
                     min_matches: int = 30, search_focal: bool = True) -> list[Camera]:
    """Cameras for 2+ RGB images in [0, 1] of a static scene, by `method` (one of
    `CAMERA_METHODS`, see the module docstring).

    The first camera is the world origin and the first two centres are one unit apart. All
    images share one pinhole camera with the principal point at the centre: `two_view` keeps the
    focal length of `fov_x_deg`, `colmap` searches it from there for 3+ images (see
    `_colmap_cameras`; `search_focal=False` holds a focal known to be right: one SfM run instead
    of eleven). `min_matches` is the two-view method's minimum of SIFT matches between
    the first two images. Raises ValueError naming the images that could not be registered:
    try the other method or pass cameras in a JSON file then."""
    if method not in CAMERA_METHODS:
        raise ValueError(f"camera estimation method must be one of {', '.join(CAMERA_METHODS)}; got {method!r}")
    if len(images) < 2:
        raise ValueError(f"estimating cameras needs at least 2 images, got {len(images)}")
    h, w = images[0].shape[:2]
    if any(img.shape[:2] != (h, w) for img in images):
        raise ValueError("estimating cameras needs images of one size; resize them first")
    if method == "two_view":
        K = intrinsics_from_fov(fov_x_deg, w, h)
        cameras = [Camera(K, c2w, w, h) for c2w in _two_view_c2ws(images, K, min_matches)]
    else:
        cameras = _colmap_cameras(images, fov_x_deg, search_focal)
    return [Camera(cam.K, c2w, w, h) for cam, c2w in zip(cameras, _anchored_to_first_pair([c.c2w for c in cameras]))]


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


# the colmap method's focal search: fixed-focal SfM at focal lengths a factor FOCAL_STEP apart
# around the assumed one, then twice at half the step on either side of the best so far (the
# last step: 4.4%)
FOCAL_STEP = 2 ** 0.25
FOCAL_STEPS = 3  # on each side: focal lengths from 0.59x to 1.68x the assumed one
# degenerate models keep a subset of the points and fit it well: measured at 51-60% of the most
# points any candidate kept, candidates near the true focal within 3% of it
MIN_POINT_SHARE = 0.8
# reprojection errors this close (relative) are a tie, won by the focal nearest the assumed one:
# neighbouring candidates 4.4% apart differed by 1% at and around the true focal (noise)
ERROR_TIE = 0.03


def _colmap_cameras(images: Sequence[np.ndarray], fov_x_deg: float, search_focal: bool = True, seed: int = 0) -> list[Camera]:
    """Incremental SfM (`see3d_torch.splatting.colmap.run_sfm`, one shared SIMPLE_PINHOLE camera,
    principal point at the centre) on the images written to a temporary folder, with the focal
    length searched rather than left to bundle adjustment: on 3-6 views along a short path the
    focal is a nearly flat direction of the reprojection error, and COLMAP's refinement wandered
    along it (measured on 5-view, 30-degree synthetic orbits at 200 px: started at the true
    focal, 2-7% off with up to 5 degrees of rotation error; started 25% off, up to 100% off).
    Each candidate is posed with its focal held fixed and scored by its mean reprojection
    error; candidates that pose fewer images, or markedly fewer points than the
    best-populated one (`MIN_POINT_SHARE`: degenerate models fit the few points they keep
    well), do not compete. Two images keep `fov_x_deg`: a pair constrains the focal only
    weakly, through its fundamental matrix, and the search was not measured there."""
    from see3d_torch.splatting import colmap

    colmap.import_pycolmap()
    names = [f"{k:03d}.png" for k in range(len(images))]
    focal = 0.5 * images[0].shape[1] / np.tan(np.deg2rad(fov_x_deg) / 2)
    with tempfile.TemporaryDirectory(prefix="see3d_colmap_") as tmp:
        image_dir = Path(tmp) / "images"
        image_dir.mkdir()
        for name, img in zip(names, images):
            write_png(image_dir / name, img)
        posed: dict[float, SparseModel] = {}
        failures: dict[float, colmap.SfMError] = {}

        def pose(log_focal: float) -> None:
            fov = float(np.rad2deg(2 * np.arctan(0.5 * images[0].shape[1] / (focal * np.exp(log_focal)))))
            # the options measured for few small views (3 synthetic scenes, 3-6 views, 160-240 px):
            # COLMAP's initial-pair defaults converged to wrong reconstructions (4-22 degrees off) in
            # 8 of 15 runs; SfMConfig's relaxed ones were within 0.6 degrees in 18 of 18
            config = colmap.SfMConfig(initial_fov_deg=fov, refine_focal_length=False, min_images=2, min_registered_fraction=1.0,
                                      ignore_two_view_tracks=False, seed=seed)
            try:
                posed[log_focal] = colmap.run_sfm(image_dir, Path(tmp) / f"sfm{len(posed) + len(failures)}", config)
            except colmap.SfMError as err:
                failures[log_focal] = err

        pose(0.0)
        if search_focal and len(images) > 2:
            step = np.log(FOCAL_STEP)
            for k in range(1, FOCAL_STEPS + 1):
                pose(k * step)
                pose(-k * step)
            for fine in (step / 2, step / 4):  # then halved steps around the best so far
                if posed:
                    best = _best_focal(posed)
                    pose(best - fine)
                    pose(best + fine)
        if not posed:
            # the candidate that posed the most images (the assumed focal first) names the others
            err = max(failures.values(), key=lambda e: len(e.registered))
            missing = [k for k, name in enumerate(names) if name not in set(err.registered)]
            raise ValueError(f"pycolmap registered {len(images) - len(missing)} of {len(images)} input images; not registered: "
                             f"{', '.join(f'input image {k}' for k in missing)}; try --camera-method two_view or pass --cameras")
        model = posed[_best_focal(posed)]
    by_name = dict(zip(model.image_names, model.cameras))
    return [by_name[name] for name in names]


def _best_focal(posed: dict[float, SparseModel]) -> float:
    """The log focal (relative to the assumed one) of the posed model with the lowest mean
    reprojection error among those with at least `MIN_POINT_SHARE` of the points of the
    best-populated one; ties (`ERROR_TIE`) go to the focal nearest the assumed one."""
    most = max(len(m.points) for m in posed.values())
    fair = [f for f, m in posed.items() if len(m.points) >= MIN_POINT_SHARE * most]
    lowest = min(posed[f].reprojection_error for f in fair)
    return min((f for f in fair if posed[f].reprojection_error <= (1 + ERROR_TIE) * lowest), key=abs)


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

