"""COLMAP workspaces and structure from motion for splatting (pycolmap, the `colmap` extra).

- `read_colmap_model(model_dir)` reads a sparse model (`cameras`, `images`, `points3D`, binary
  or text) into kit cameras, image names and the coloured SfM points. Pinhole models
  (SIMPLE_PINHOLE, PINHOLE) are read as they are; distorted ones are undistorted first by
  `undistort_colmap_workspace` (pycolmap's undistorter, which writes PINHOLE cameras and
  undistorted images), or rejected with an error naming the model.
- `run_sfm(image_dir, workspace)` runs pycolmap incremental SfM on a folder of images and
  writes the COLMAP workspace (`database.db`, `sparse/0`).

Conventions: COLMAP's `cam_from_world` is the kit's `w2c`; COLMAP puts pixel centres at +0.5
(the top-left pixel's centre is (0.5, 0.5)), the kit at integers, so the kit's principal point
is COLMAP's minus 0.5 (README "Camera convention").
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from see3d_core.cameras import Camera, intrinsics_matrix, invert_pose

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


class SfMError(ValueError):
    """Structure from motion could not pose enough of the images; `registered` and `missing`
    hold the image names, so a caller can name them in its own terms."""

    def __init__(self, message: str, registered: Sequence[str] = (), missing: Sequence[str] = ()):
        super().__init__(message)
        self.registered, self.missing = list(registered), list(missing)


def import_pycolmap():
    try:
        import pycolmap
    except ImportError as err:
        raise ImportError("COLMAP workspaces and structure from motion need pycolmap: pip install 'see3d-kit[colmap]'") from err
    if int(pycolmap.__version__.split(".")[0]) < 4:
        raise ImportError(f"the kit needs pycolmap >= 4 (its API changed), found {pycolmap.__version__}: "
                          "pip install 'see3d-kit[colmap]'")
    return pycolmap


@dataclasses.dataclass
class SparseModel:
    """A COLMAP sparse model in kit terms: one camera per registered image (sorted by name)."""

    image_names: list[str]
    cameras: list[Camera]  # at the image size COLMAP recorded
    points: np.ndarray  # [N, 3] float64, world coordinates
    point_colors: np.ndarray  # [N, 3] float32 in [0, 1]
    model_dir: Path
    reprojection_error: float = float("nan")  # mean over the points' observations, pixels

    def rescaled(self, sizes: dict[str, tuple[int, int]]) -> "SparseModel":
        """The cameras rescaled to the (width, height) of each named image, e.g. when the
        images on disk were downscaled after SfM (`images_2/` beside `images/`)."""
        cameras = []
        for name, cam in zip(self.image_names, self.cameras):
            width, height = sizes[name]
            cameras.append(cam if (cam.width, cam.height) == (width, height) else cam.resized(width, height))
        return dataclasses.replace(self, cameras=cameras)


def find_sparse_model(workspace: str | os.PathLike) -> Path | None:
    """The sparse model folder of a COLMAP workspace: `sparse/0`, `sparse`, or the folder
    itself, whichever holds `cameras.bin` or `cameras.txt`; None when there is none."""
    workspace = Path(workspace)
    for candidate in (workspace / "sparse" / "0", workspace / "sparse", workspace):
        if (candidate / "cameras.bin").is_file() or (candidate / "cameras.txt").is_file():
            return candidate
    return None


def camera_from_colmap(colmap_camera, cam_from_world: np.ndarray) -> Camera:
    """A kit camera from a pinhole pycolmap camera and its 3x4 `cam_from_world` (= w2c)."""
    model = colmap_camera.model.name
    if model not in PINHOLE_MODELS:
        raise ValueError(f"COLMAP camera {colmap_camera.camera_id} has model {model}; expected one of "
                         f"{', '.join(PINHOLE_MODELS)} (undistort it first)")
    params = np.asarray(colmap_camera.params, dtype=np.float64)
    fx, fy, cx, cy = (params[0], params[0], params[1], params[2]) if model == "SIMPLE_PINHOLE" else params[:4]
    w2c = np.eye(4)
    w2c[:3] = cam_from_world
    return Camera(intrinsics_matrix(fx, fy, cx - 0.5, cy - 0.5), invert_pose(w2c), colmap_camera.width, colmap_camera.height)


def colmap_camera_params(camera: Camera) -> list[float]:
    """PINHOLE parameters (fx, fy, cx, cy) in COLMAP's +0.5 pixel-centre convention."""
    K = camera.K
    return [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]) + 0.5, float(K[1, 2]) + 0.5]


def read_colmap_model(model_dir: str | os.PathLike) -> SparseModel:
    """Read a pinhole sparse model (binary or text) into kit cameras and coloured points."""
    pycolmap = import_pycolmap()
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"COLMAP model folder not found: {model_dir}")
    try:
        reconstruction = pycolmap.Reconstruction(model_dir)
    except Exception as err:  # pycolmap raises its own error types for unreadable files
        raise ValueError(f"{model_dir}: cannot read the COLMAP model ({err})") from err
    distorted = sorted({c.model.name for c in reconstruction.cameras.values()} - set(PINHOLE_MODELS))
    if distorted:
        raise ValueError(f"{model_dir}: camera model {', '.join(distorted)} is not a pinhole; expected "
                         f"{' or '.join(PINHOLE_MODELS)} (undistort the workspace first)")
    images = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise ValueError(f"{model_dir}: the COLMAP model has no registered images")
    cameras = [camera_from_colmap(im.camera, im.cam_from_world().matrix()) for im in images]
    points3d = list(reconstruction.points3D.values())
    points = np.array([p.xyz for p in points3d], dtype=np.float64).reshape(-1, 3)
    colors = np.array([p.color for p in points3d], dtype=np.float32).reshape(-1, 3) / 255.0
    return SparseModel([im.name for im in images], cameras, points, colors, model_dir,
                       float(reconstruction.compute_mean_reprojection_error()))


def undistort_colmap_workspace(model_dir: Path, image_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """pycolmap's undistorter: writes `out_dir/images` and a PINHOLE `out_dir/sparse`;
    returns (model folder, image folder)."""
    pycolmap = import_pycolmap()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        pycolmap.undistort_images(out_dir, model_dir, image_dir, num_threads=1)
    except Exception as err:
        raise ValueError(f"{model_dir}: COLMAP could not undistort the images in {image_dir} ({err})") from err
    return out_dir / "sparse", out_dir / "images"


def colmap_camera_models(model_dir: Path) -> set[str]:
    pycolmap = import_pycolmap()
    return {c.model.name for c in pycolmap.Reconstruction(model_dir).cameras.values()}


@dataclasses.dataclass
class SfMConfig:
    """pycolmap incremental SfM for short captures (a video's frames or a few dozen photos).

    COLMAP's defaults are for wide-baseline photo collections: on 40 frames of a real orbit video
    (320x180) they registered 9/40 frames with a wrong focal length (SPEC section 7). Relaxed
    initial-pair and registration thresholds and focal-length refinement in bundle adjustment
    registered 40/40."""

    # frames the kit poses itself (a video, photos without cameras) are posed at this longer side
    # (None: as read), or at the training size when that is larger; training then uses them shrunk
    # to its own size, with the cameras rescaled. SIFT finds many more points on larger frames:
    # on the real orbit video 6,563 points at 640 px vs 1,768 at 320, and 21.6 vs 20.0 dB
    # held-out after the same 450 steps at 320x180 (RESULTS, issue 19), for ~5x the SfM time
    max_image_side: int | None = 640
    camera_model: str = "SIMPLE_PINHOLE"  # one camera shared by all images
    initial_fov_deg: float = 60.0  # horizontal field of view of the starting focal length
    refine_focal_length: bool = True
    refine_principal_point: bool = False
    matcher: str = "exhaustive"  # "exhaustive" or "sequential" (video order, `sequential_overlap` neighbours)
    sequential_overlap: int = 10
    max_num_features: int = 8_192
    init_min_tri_angle: float = 4.0  # degrees (COLMAP: 16)
    init_min_num_inliers: int = 50  # (COLMAP: 100)
    abs_pose_min_num_inliers: int = 15  # (COLMAP: 30)
    filter_max_reproj_error: float = 2.0  # pixels (COLMAP: 4)
    min_registered_fraction: float = 0.5  # fewer registered images is an SfMError
    min_images: int = 3  # fewest images SfM runs on and smallest model it keeps (2: an image pair)
    # COLMAP triangulates points seen by two images only when the other tracks are too few; with
    # two images or a handful of them there are no others (the generation path's sparse views)
    ignore_two_view_tracks: bool = True
    num_threads: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.camera_model not in PINHOLE_MODELS:
            raise ValueError(f"SfMConfig.camera_model must be one of {PINHOLE_MODELS}, got {self.camera_model!r}")
        if self.matcher not in ("exhaustive", "sequential"):
            raise ValueError(f"SfMConfig.matcher must be 'exhaustive' or 'sequential', got {self.matcher!r}")
        if not 0.0 < self.initial_fov_deg < 180.0:
            raise ValueError(f"SfMConfig.initial_fov_deg must be in (0, 180), got {self.initial_fov_deg}")
        if self.max_image_side is not None and self.max_image_side < 8:
            raise ValueError(f"SfMConfig.max_image_side must be >= 8 pixels or None, got {self.max_image_side}")
        if not 0.0 <= self.min_registered_fraction <= 1.0:
            raise ValueError(f"SfMConfig.min_registered_fraction must be in [0, 1], got {self.min_registered_fraction}")
        if self.min_images < 2:
            raise ValueError(f"SfMConfig.min_images must be >= 2, got {self.min_images}")


def run_sfm(image_dir: str | os.PathLike, workspace: str | os.PathLike, config: SfMConfig | None = None) -> SparseModel:
    """Incremental SfM on the images of `image_dir` (sorted names); writes `workspace/database.db`
    and the largest model to `workspace/sparse/0`. Raises `SfMError` naming the unregistered
    images when fewer than `config.min_registered_fraction` of them are posed."""
    pycolmap = import_pycolmap()
    config = config or SfMConfig()
    image_dir, workspace = Path(image_dir), Path(workspace)
    names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(names) < config.min_images:
        raise SfMError(f"{image_dir}: structure from motion needs at least {config.min_images} images, found {len(names)}",
                       missing=names)
    import cv2

    first = cv2.imread(str(image_dir / names[0]), cv2.IMREAD_UNCHANGED)
    if first is None:
        raise ValueError(f"{image_dir / names[0]}: cannot read the image")
    height, width = first.shape[:2]
    focal = 0.5 * width / np.tan(np.deg2rad(config.initial_fov_deg) / 2)
    params = [focal, width / 2, height / 2] if config.camera_model == "SIMPLE_PINHOLE" else [focal, focal, width / 2, height / 2]
    workspace.mkdir(parents=True, exist_ok=True)
    database = workspace / "database.db"
    database.unlink(missing_ok=True)  # a rerun starts afresh (COLMAP would add the images twice)
    sparse = workspace / "sparse"
    log_level, pycolmap.logging.minloglevel = pycolmap.logging.minloglevel, int(pycolmap.logging.ERROR)
    try:
        reader = pycolmap.ImageReaderOptions(camera_model=config.camera_model,
                                             camera_params=",".join(f"{p:.17g}" for p in params))
        extraction = pycolmap.FeatureExtractionOptions(num_threads=config.num_threads, use_gpu=False)
        extraction.sift.max_num_features = config.max_num_features
        pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        matching = pycolmap.FeatureMatchingOptions(num_threads=config.num_threads, use_gpu=False)
        verification = pycolmap.TwoViewGeometryOptions()
        verification.ransac.random_seed = config.seed
        if config.matcher == "sequential":
            pairing = pycolmap.SequentialPairingOptions(overlap=config.sequential_overlap, loop_detection=False)
            pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                                      verification_options=verification, device=pycolmap.Device.cpu)
        else:
            pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification,
                                      device=pycolmap.Device.cpu)
        options = pycolmap.IncrementalPipelineOptions(
            num_threads=config.num_threads, random_seed=config.seed, multiple_models=False, min_model_size=config.min_images,
            extract_colors=True, ba_refine_focal_length=config.refine_focal_length,
            ba_refine_principal_point=config.refine_principal_point, ba_refine_extra_params=False)
        options.mapper.init_min_tri_angle = config.init_min_tri_angle
        options.mapper.init_min_num_inliers = config.init_min_num_inliers
        options.mapper.abs_pose_min_num_inliers = config.abs_pose_min_num_inliers
        options.mapper.filter_max_reproj_error = config.filter_max_reproj_error
        options.triangulation.ignore_two_view_tracks = config.ignore_two_view_tracks
        if sparse.exists():
            import shutil

            shutil.rmtree(sparse)
        sparse.mkdir(parents=True)
        models = pycolmap.incremental_mapping(database, image_dir, sparse, options=options)
    finally:
        pycolmap.logging.minloglevel = log_level
    best_index = max(models, key=lambda i: models[i].num_reg_images(), default=None)
    registered = set()
    if best_index is not None:
        best = models[best_index]
        registered = {best.image(i).name for i in best.reg_image_ids()}
        # keep the best model alone, as sparse/0
        for index in models:
            if (sparse / str(index)).is_dir() and index != best_index:
                import shutil

                shutil.rmtree(sparse / str(index))
        if best_index != 0:
            os.replace(sparse / str(best_index), sparse / "0")
        best.write(sparse / "0")
    missing = [n for n in names if n not in registered]
    if len(registered) < max(config.min_images, config.min_registered_fraction * len(names)):
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise SfMError(f"{image_dir}: structure from motion registered {len(registered)} of {len(names)} images "
                       f"(need {config.min_registered_fraction:.0%}); not registered: {shown}. The views may overlap "
                       "too little, or the camera may not move", sorted(registered), missing)
    return read_colmap_model(sparse / "0")
