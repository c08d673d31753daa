"""Camera trajectories and their file formats.

Every generator returns a list of `Camera` in the kit's OpenCV convention (see `cameras`).
Angles are in degrees. World up is -y: positive elevation puts the camera above its target.

File formats:
- JSON: `{"convention": "opencv", "frames": [{"K": 3x3, "c2w": 4x4, "width": W, "height": H}, ...]}`.
- RealEstate10K text: first line a source URL (or anything), then one line per frame:
  `timestamp fx fy cx cy 0 0 w2c[0, :4] w2c[1, :4] w2c[2, :4]` with intrinsics normalised by
  the image width/height in the pixel-corner convention (cx = 0.5 is the image centre).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from see3d_core.cameras import (
    Camera,
    axis_angle_to_rotation,
    invert_pose,
    look_at,
    quaternion_to_rotation,
    rotation_to_quaternion,
    slerp,
)


def _as_range(value, n: int) -> np.ndarray:
    """A scalar stays constant; a (start, end) pair is spaced linearly over n frames."""
    if np.isscalar(value):
        return np.full(n, float(value))
    start, end = value
    return np.linspace(float(start), float(end), n)


def orbit(
    center: Sequence[float],
    radius: float,
    num_frames: int,
    K: np.ndarray,
    width: int,
    height: int,
    azimuth_deg=(0.0, 360.0),
    elevation_deg=15.0,
    endpoint: bool = False,
) -> list[Camera]:
    """Cameras on a sphere around `center`, looking at it.

    `azimuth_deg` and `elevation_deg` are scalars or (start, end) ranges. With the default full
    circle, `endpoint=False` avoids repeating the first view at the end.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    center = np.asarray(center, dtype=np.float64)
    if np.isscalar(azimuth_deg):
        az = np.full(num_frames, float(azimuth_deg))
    else:
        az = np.linspace(azimuth_deg[0], azimuth_deg[1], num_frames, endpoint=endpoint or num_frames == 1)
    el = _as_range(elevation_deg, num_frames)
    cams = []
    for a, e in zip(np.deg2rad(az), np.deg2rad(el)):
        offset = radius * np.array([np.sin(a) * np.cos(e), -np.sin(e), -np.cos(a) * np.cos(e)])
        cams.append(Camera(K, look_at(center + offset, center), width, height))
    return cams


def forward(start: Camera, distance: float, num_frames: int) -> list[Camera]:
    """Dolly: move along the starting camera's viewing direction (+z) by `distance`."""
    steps = np.linspace(0.0, distance, num_frames)
    out = []
    for s in steps:
        c2w = start.c2w.copy()
        c2w[:3, 3] += s * start.c2w[:3, 2]
        out.append(Camera(start.K, c2w, start.width, start.height))
    return out


def pan(start: Camera, yaw_deg=(-30.0, 30.0), num_frames: int = 16, pitch_deg=0.0) -> list[Camera]:
    """Rotate in place about the camera's own vertical axis (yaw) and horizontal axis (pitch)."""
    yaws = _as_range(yaw_deg, num_frames)
    pitches = _as_range(pitch_deg, num_frames)
    out = []
    for y, p in zip(np.deg2rad(yaws), np.deg2rad(pitches)):
        R_local = axis_angle_to_rotation([0, 1, 0], y) @ axis_angle_to_rotation([1, 0, 0], p)
        c2w = start.c2w.copy()
        c2w[:3, :3] = start.c2w[:3, :3] @ R_local
        out.append(Camera(start.K, c2w, start.width, start.height))
    return out


def spiral(
    start: Camera,
    focus_distance: float,
    num_frames: int,
    radius_xy: float | tuple[float, float] = 0.3,
    depth_amplitude: float = 0.2,
    rotations: float = 2.0,
) -> list[Camera]:
    """LLFF-style forward-facing spiral around the starting camera, looking at a focus point.

    The camera circles in its own image plane (radius_xy, optionally elliptic) while moving
    back and forth along its viewing axis, always looking at the point `focus_distance` ahead.
    """
    rx, ry = (radius_xy, radius_xy) if np.isscalar(radius_xy) else radius_xy
    focus = start.c2w[:3, 3] + focus_distance * start.c2w[:3, 2]
    up = -start.c2w[:3, 1]
    out = []
    for theta in np.linspace(0.0, 2 * np.pi * rotations, num_frames, endpoint=False):
        local = np.array([rx * np.cos(theta), -ry * np.sin(theta), depth_amplitude * np.sin(0.5 * theta)])
        eye = start.c2w[:3, :3] @ local + start.c2w[:3, 3]
        out.append(Camera(start.K, look_at(eye, focus, up), start.width, start.height))
    return out


def zoom(start: Camera, focal_scale=(1.0, 2.0), num_frames: int = 16) -> list[Camera]:
    """Fixed pose, focal length scaled by the given factors (principal point kept)."""
    out = []
    for s in _as_range(focal_scale, num_frames):
        K = start.K.copy()
        K[0, 0] *= s
        K[1, 1] *= s
        out.append(Camera(K, start.c2w, start.width, start.height))
    return out


def interpolate(keys: Sequence[Camera], num_frames: int) -> list[Camera]:
    """Piecewise interpolation through key cameras: positions and intrinsics linearly,
    rotations by quaternion slerp, evenly spaced in key index."""
    if len(keys) < 2:
        raise ValueError(f"interpolate needs at least 2 key cameras, got {len(keys)}")
    if len({(k.width, k.height) for k in keys}) != 1:
        raise ValueError("interpolate: key cameras must share one image size")
    quats = [rotation_to_quaternion(k.c2w[:3, :3]) for k in keys]
    out = []
    for s in np.linspace(0.0, len(keys) - 1, num_frames):
        i = min(int(np.floor(s)), len(keys) - 2)
        a = s - i
        c2w = np.eye(4)
        c2w[:3, :3] = quaternion_to_rotation(slerp(quats[i], quats[i + 1], a))
        c2w[:3, 3] = (1 - a) * keys[i].c2w[:3, 3] + a * keys[i + 1].c2w[:3, 3]
        K = (1 - a) * keys[i].K + a * keys[i + 1].K
        out.append(Camera(K, c2w, keys[0].width, keys[0].height))
    return out


# --- files ------------------------------------------------------------------------------------

def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_json(path: str | os.PathLike, cameras: Sequence[Camera]) -> None:
    path = Path(path)
    payload = {"convention": "opencv", "frames": [c.to_dict() for c in cameras]}
    _atomic_write_text(path, json.dumps(payload, indent=1))


def load_json(path: str | os.PathLike) -> list[Camera]:
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"trajectory file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(payload, dict) or "frames" not in payload:
        raise ValueError(f"{path}: expected an object with a 'frames' list")
    if payload.get("convention", "opencv") != "opencv":
        raise ValueError(f"{path}: convention {payload['convention']!r} is not supported; expected 'opencv'")
    cams = []
    for i, frame in enumerate(payload["frames"]):
        try:
            cams.append(Camera.from_dict(frame))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: frame {i}: {e}") from None
    return cams


def save_realestate10k(
    path: str | os.PathLike, cameras: Sequence[Camera], timestamps: Sequence[int] | None = None, url: str = "synthetic"
) -> None:
    """Write the RealEstate10K text format (normalised intrinsics, row-major 3x4 w2c)."""
    timestamps = list(range(len(cameras))) if timestamps is None else list(timestamps)
    lines = [url]
    for ts, cam in zip(timestamps, cameras):
        K, w, h = cam.K, cam.width, cam.height
        intr = [K[0, 0] / w, K[1, 1] / h, (K[0, 2] + 0.5) / w, (K[1, 2] + 0.5) / h]
        w2c = cam.w2c[:3, :4].reshape(-1)
        lines.append(" ".join([str(int(ts))] + [repr(float(v)) for v in intr] + ["0", "0"] + [repr(float(v)) for v in w2c]))
    _atomic_write_text(Path(path), "\n".join(lines) + "\n")


def load_realestate10k(path: str | os.PathLike, width: int, height: int) -> tuple[list[Camera], list[int]]:
    """Read the RealEstate10K text format for images of the given size."""
    path = Path(path)
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: empty RealEstate10K file")
    cams, stamps = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if len(parts) != 19:
            raise ValueError(f"{path}:{lineno}: expected 19 numbers per frame, got {len(parts)}")
        vals = [float(v) for v in parts]
        fx, fy, cx, cy = vals[1:5]
        K = np.array([[fx * width, 0, cx * width - 0.5], [0, fy * height, cy * height - 0.5], [0, 0, 1]])
        w2c = np.eye(4)
        w2c[:3, :4] = np.array(vals[7:19]).reshape(3, 4)
        cams.append(Camera(K, invert_pose(w2c), width, height))
        stamps.append(int(vals[0]))
    return cams, stamps


def load(path: str | os.PathLike, width: int | None = None, height: int | None = None) -> list[Camera]:
    """Load a trajectory file by extension: .json, or .txt (RealEstate10K, needs the size)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return load_json(path)
    if width is None or height is None:
        raise ValueError(f"{path}: RealEstate10K files need the image width and height")
    return load_realestate10k(path, width, height)[0]
