"""What `see3d-reconstruct INPUT` reads: images with cameras, and SfM points where they exist.

`load_capture(input, workspace=...)` accepts
- a folder of images with a kit `cameras.json` (or RealEstate10K .txt) passed as `cameras_file`;
- a COLMAP workspace: `sparse/0` (or `sparse/`) and the images in `images/` (distorted camera
  models are undistorted by pycolmap into `workspace/undistorted` first);
- a folder of photos without cameras, or a video file: up to `max_frames` images (evenly
  spaced), written to `workspace/images` at `SfMConfig.max_image_side` (or `max_side` if
  larger), posed by pycolmap structure from motion (`colmap.run_sfm`), which writes the COLMAP
  workspace there, and shrunk to `max_side` for training.

Cameras are rescaled to the images' size when the two differ (images downscaled after SfM, or
by `max_side`). Images come back as float32 RGB [H, W, 3] in [0, 1].
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from see3d_core.cameras import Camera

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
MIN_SFM_FRAMES = 3


@dataclasses.dataclass
class Capture:
    images: list[np.ndarray]  # float32 RGB [H, W, 3] in [0, 1], one size
    cameras: list[Camera]  # one per image, at the images' size
    names: list[str]
    points: np.ndarray | None = None  # [N, 3] SfM points (world), when the cameras came from COLMAP
    point_colors: np.ndarray | None = None  # [N, 3] in [0, 1]
    source: str = "cameras"  # "cameras" (a cameras file), "colmap" (a workspace) or "sfm" (posed here)
    workspace: Path | None = None  # the COLMAP workspace read or written


def _shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    s = max_side / max(height, width)
    return cv2.resize(image, (max(1, round(width * s)), max(1, round(height * s))), interpolation=cv2.INTER_AREA)


def _to_float_rgb(bgr: np.ndarray) -> np.ndarray:
    return bgr[..., ::-1].astype(np.float32) / 255.0


def image_paths(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"images folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no .png/.jpg images")
    return paths


def read_image(path: Path, max_side: int | None = None) -> np.ndarray:
    """uint8 BGR, shrunk so that its longer side is at most `max_side`."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot read the image")
    return _shrink(bgr, max_side)


def load_images(folder: Path, max_side: int | None = None) -> tuple[list[np.ndarray], list[Path]]:
    """Every image of `folder` in sorted name order, as float32 RGB in [0, 1]."""
    paths = image_paths(folder)
    return [_to_float_rgb(read_image(p, max_side)) for p in paths], paths


def evenly_spaced(total: int, count: int | None) -> list[int]:
    """`count` indices spread evenly over range(total), first and last included (all when None)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


def read_video_frames(path: Path, max_frames: int | None = None, max_side: int | None = None) -> list[np.ndarray]:
    """`max_frames` frames (uint8 BGR) spread evenly over the whole video, shrunk to `max_side`."""
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"{path}: cannot read the video (not a video file, or a codec OpenCV lacks)")
        # frame counts in containers are unreliable: decode everything, keep the chosen frames
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"{path}: cannot read the video (no frame could be decoded)")
    return [_shrink(frames[i], max_side) for i in evenly_spaced(len(frames), max_frames)]


def _match_images_to_model(model, image_dir: Path, max_side: int | None):
    """The model's images read from `image_dir` (by name), cameras rescaled to their size."""
    images, sizes = [], {}
    missing = [n for n in model.image_names if not (image_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{image_dir}: {len(missing)} images of the COLMAP model are missing, e.g. {missing[0]}")
    for name in model.image_names:
        rgb = _to_float_rgb(read_image(image_dir / name, max_side))
        images.append(rgb)
        sizes[name] = (rgb.shape[1], rgb.shape[0])
    return images, model.rescaled(sizes)


def _usable_points(model) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The model's points, or None when too few to initialise from (random init then)."""
    return (model.points, model.point_colors) if len(model.points) >= 2 else (None, None)


def load_colmap_workspace(workspace: Path, image_dir: Path | None = None, max_side: int | None = None,
                          undistort_dir: Path | None = None) -> Capture:
    """A COLMAP workspace's registered images, cameras and points (see the module docstring)."""
    from see3d_torch.splatting import colmap

    model_dir = colmap.find_sparse_model(workspace)
    if model_dir is None:
        raise FileNotFoundError(f"{workspace}: no COLMAP sparse model (sparse/0/cameras.bin or .txt)")
    image_dir = image_dir or workspace / "images"
    models = colmap.colmap_camera_models(model_dir)
    if models - set(colmap.PINHOLE_MODELS):
        if undistort_dir is None:
            raise ValueError(f"{model_dir}: camera model {', '.join(sorted(models))} has lens distortion; expected "
                             f"{' or '.join(colmap.PINHOLE_MODELS)}, or give a folder to undistort into")
        model_dir, image_dir = colmap.undistort_colmap_workspace(model_dir, image_dir, undistort_dir)
    model = colmap.read_colmap_model(model_dir)
    images, model = _match_images_to_model(model, image_dir, max_side)
    return Capture(images, model.cameras, model.image_names, *_usable_points(model), "colmap", workspace)


def sfm_frame_side(max_side: int | None, sfm_config=None) -> int | None:
    """The longer side frames are posed at: `SfMConfig.max_image_side`, or the training size
    `max_side` when that is larger (None: as read)."""
    from see3d_torch.splatting.colmap import SfMConfig

    sfm_side = (sfm_config or SfMConfig()).max_image_side
    return None if max_side is None or sfm_side is None else max(max_side, sfm_side)


def structure_from_motion(frames: Sequence[np.ndarray], workspace: Path, sfm_config=None,
                          max_side: int | None = None) -> Capture:
    """Write `frames` (uint8 BGR) to `workspace/images` and pose them with pycolmap SfM; the
    capture's images are those frames shrunk to `max_side`, with the cameras rescaled.
    Unregistered frames are left out of the capture (SfM fails when too many are)."""
    from see3d_torch.splatting import colmap

    if len(frames) < MIN_SFM_FRAMES:
        raise ValueError(f"structure from motion needs at least {MIN_SFM_FRAMES} frames, got {len(frames)}")
    image_dir = workspace / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.iterdir():  # a rerun with other frames must not mix them
        if stale.suffix.lower() in IMAGE_SUFFIXES:
            stale.unlink()
    for i, frame in enumerate(frames):
        if not cv2.imwrite(str(image_dir / f"frame_{i:04d}.png"), frame):
            raise OSError(f"cannot write {image_dir / f'frame_{i:04d}.png'}")
    model = colmap.run_sfm(image_dir, workspace, sfm_config)
    images, model = _match_images_to_model(model, image_dir, max_side)
    return Capture(images, model.cameras, model.image_names, *_usable_points(model), "sfm", workspace)


def load_capture(
    source: str | os.PathLike,
    cameras_file: str | os.PathLike | None = None,
    workspace: str | os.PathLike | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    sfm_config=None,
) -> Capture:
    """Images, cameras and SfM points from any input of the module docstring. `workspace` is
    where structure from motion writes its COLMAP workspace (needed when the input has no
    cameras) and where distorted workspaces are undistorted."""
    source = Path(source)
    if max_frames is not None and max_frames < MIN_SFM_FRAMES:
        raise ValueError(f"max_frames must be >= {MIN_SFM_FRAMES}, got {max_frames}")
    if max_side is not None and max_side < 8:
        raise ValueError(f"max_side must be >= 8 pixels, got {max_side}")
    workspace = Path(workspace) if workspace is not None else None
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        if cameras_file is not None:
            raise ValueError(f"{source}: a video's frames are posed by structure from motion; --cameras applies to an images folder")
        if workspace is None:
            raise ValueError(f"{source}: structure from motion needs a workspace folder to write to")
        frames = read_video_frames(source, max_frames, sfm_frame_side(max_side, sfm_config))
        return structure_from_motion(frames, workspace, sfm_config, max_side)
    if source.is_file():
        raise ValueError(f"{source}: expected a folder of images, a COLMAP workspace or a video "
                         f"({', '.join(VIDEO_SUFFIXES)})")
    if not source.is_dir():
        raise FileNotFoundError(f"input not found: {source}")
    if cameras_file is not None:
        from see3d_core import trajectories

        images, paths = load_images(source, max_side)
        height, width = images[0].shape[:2]
        cameras = trajectories.load(Path(cameras_file), width, height)
        if len(cameras) != len(images):
            raise ValueError(f"{cameras_file}: {len(cameras)} cameras for {len(images)} images in {source}")
        cameras = [c if (c.width, c.height) == (width, height) else c.resized(width, height) for c in cameras]
        return Capture(images, cameras, [p.name for p in paths], source="cameras")
    from see3d_torch.splatting import colmap

    if colmap.find_sparse_model(source) is not None:
        undistort_dir = workspace / "undistorted" if workspace is not None else None
        return load_colmap_workspace(source, max_side=max_side, undistort_dir=undistort_dir)
    if workspace is None:
        raise ValueError(f"{source}: no cameras (no cameras file, no COLMAP sparse model); structure from motion needs "
                         "a workspace folder to write to")
    paths = image_paths(source)
    frames = [read_image(paths[i], sfm_frame_side(max_side, sfm_config)) for i in evenly_spaced(len(paths), max_frames)]
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"{source}: the photos have different sizes {sorted({f.shape[:2] for f in frames})}; "
                         "structure from motion here assumes one camera")
    return structure_from_motion(frames, workspace, sfm_config, max_side)
