"""The kit's one camera convention, and the geometry built on it.

Convention (OpenCV / COLMAP):
- camera frame: x right, y down, z forward (the camera looks along +z);
- poses are 4x4 matrices named explicitly: `c2w` maps camera coordinates to world
  coordinates, `w2c` is its inverse; never an unnamed "pose";
- intrinsics `K` are 3x3 in pixels, pixel centres at integer coordinates: the centre of the
  top-left pixel is (0, 0), so an image of width W spans x in [-0.5, W - 0.5];
- depth is z-depth (the camera-frame z of the surface point), not the ray length;
- world "up" in the synthetic world and the trajectory generators is -y, so that an identity
  `c2w` is an upright camera looking along +z.

All functions accept leading batch dimensions where that is natural.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

WORLD_UP = np.array([0.0, -1.0, 0.0])


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def intrinsics_from_fov(fov_x_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole intrinsics with square pixels and the principal point at the image centre."""
    if not 0.0 < fov_x_deg < 180.0:
        raise ValueError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
    fx = 0.5 * width / np.tan(np.deg2rad(fov_x_deg) / 2.0)
    return intrinsics_matrix(fx, fx, (width - 1) / 2.0, (height - 1) / 2.0)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """Intrinsics for an image resized by (sx, sy), keeping pixel-centre conventions."""
    sy = sx if sy is None else sy
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 0] *= sx
    K[..., 1, 1] *= sy
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return K


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 transforms (c2w <-> w2c) without a general matrix inverse."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points [..., 3]."""
    T = np.asarray(T)
    return points @ T[:3, :3].T + T[:3, 3]


def project(points_world: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points [..., 3] -> pixel coordinates [..., 2] (x, y) and z-depth [...]."""
    p_cam = transform_points(w2c, points_world)
    z = p_cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (p_cam[..., :2] / z[..., None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z


def unproject(uv: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Pixel coordinates [..., 2] and z-depth [...] -> world points [..., 3]."""
    x = (uv[..., 0] - K[0, 2]) / K[0, 0]
    y = (uv[..., 1] - K[1, 2]) / K[1, 1]
    p_cam = np.stack([x * depth, y * depth, depth], axis=-1)
    return transform_points(c2w, p_cam)


def pixel_grid(width: int, height: int) -> np.ndarray:
    """[H, W, 2] pixel-centre coordinates (x, y)."""
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack([xs, ys], axis=-1)


def depth_to_points(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """A z-depth map [H, W] -> world points [H, W, 3]."""
    h, w = depth.shape
    return unproject(pixel_grid(w, h), depth.astype(np.float64), K, c2w)


def camera_rays(K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins [3] and directions [H, W, 3] scaled so that a ray parameter is z-depth."""
    uv = pixel_grid(width, height)
    d_cam = np.stack(
        [(uv[..., 0] - K[0, 2]) / K[0, 0], (uv[..., 1] - K[1, 2]) / K[1, 1], np.ones((height, width))],
        axis=-1,
    )
    return c2w[:3, 3].copy(), d_cam @ c2w[:3, :3].T


def camera_spread(centres) -> float:
    """The largest distance of a camera centre ([N, 3], or cameras with `.center`) from their
    mean: the length scale of a set of views (0 for one view or a pure pan)."""
    centres = np.array([getattr(c, "center", c) for c in centres], dtype=np.float64).reshape(-1, 3)
    if len(centres) < 2:
        return 0.0
    return float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max())


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """c2w of a camera at `eye` looking at `target`, image y axis along -up."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    forward /= norm
    down = -np.asarray(up, dtype=np.float64)
    right = np.cross(down, forward)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


# --- rotations ------------------------------------------------------------------------------

def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (w, x, y, z) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions along the shorter arc."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: lerp is accurate and avoids dividing by sin(~0)
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    return (np.sin((1 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / np.sin(theta)


def axis_angle_to_rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * Kx + (1 - np.cos(angle_rad)) * Kx @ Kx


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Geodesic angle between two rotations, in degrees."""
    cos = (np.trace(np.asarray(R_a).T @ np.asarray(R_b)) - 1.0) / 2.0
    return float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation closest to a 3x3 matrix in the Frobenius sense (SVD, determinant +1)."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def similarity_aligned(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Points `source` [N, 3] moved by the scale, rotation and translation that best fit them
    onto `target` [N, 3] in the least-squares sense (Umeyama). Pose estimates from images are
    only defined up to such a transform, so they are compared with the truth after it."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s_c, t_c = source - mu_s, target - mu_t
    U, S, Vt = np.linalg.svd(t_c.T @ s_c / len(source))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    scale = np.trace(np.diag(S) @ D) / max((s_c ** 2).sum(1).mean(), 1e-12)
    return scale * s_c @ (U @ D @ Vt).T + mu_t


# --- a camera as a value ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Camera:
    """A pinhole camera: pixel intrinsics, a camera-to-world pose and the image size."""

    K: np.ndarray
    c2w: np.ndarray
    width: int
    height: int

    def __post_init__(self):
        K = np.asarray(self.K, dtype=np.float64)
        c2w = np.asarray(self.c2w, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"Camera.K must be 3x3, got shape {K.shape}")
        if c2w.shape != (4, 4):
            raise ValueError(f"Camera.c2w must be 4x4, got shape {c2w.shape}")
        if not np.allclose(c2w[3], [0, 0, 0, 1]):
            raise ValueError(f"Camera.c2w last row must be [0, 0, 0, 1], got {c2w[3].tolist()}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"Camera size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "c2w", c2w)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def w2c(self) -> np.ndarray:
        return invert_pose(self.c2w)

    @property
    def center(self) -> np.ndarray:
        return self.c2w[:3, 3]

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return project(points_world, self.K, self.w2c)

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        return unproject(uv, depth, self.K, self.c2w)

    def resized(self, width: int, height: int) -> "Camera":
        return Camera(scale_intrinsics(self.K, width / self.width, height / self.height), self.c2w, width, height)

    def to_dict(self) -> dict[str, Any]:
        return {"K": self.K.tolist(), "c2w": self.c2w.tolist(), "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Camera":
        missing = {"K", "c2w", "width", "height"} - set(d)
        if missing:
            raise ValueError(f"camera entry is missing {sorted(missing)}")
        return cls(np.array(d["K"]), np.array(d["c2w"]), d["width"], d["height"])
