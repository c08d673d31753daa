"""Per-camera pose refinement, per-image exposure compensation and pose error measures.

Pose refinement learns, for every training camera, a rotation delta in the continuous 6D
representation (Zhou et al. 2019: two columns, Gram-Schmidt) and a translation delta, both
zero at the start, applied in the camera's own frame: `c2w' = c2w [R(d) | t]`.

Exposure compensation learns a per-image, per-channel affine map `I' = (1 + g) I + b`
(zero at the start), for views whose brightness differs (generated views often do).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from see3d_core.cameras import Camera, axis_angle_to_rotation, nearest_rotation, rotation_angle_deg, similarity_aligned

_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """[..., 6] (two 3-vectors) -> rotation [..., 3, 3] whose first two columns follow them."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 transforms [..., 4, 4] (c2w <-> w2c), differentiable."""
    R_t = T[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = R_t
    out[..., :3, 3] = -(R_t @ T[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


class CameraRefinement(nn.Module):
    """Learned pose corrections for `num_cameras` cameras (identity at the start).

    Every camera has its own parameter tensors, so that an optimiser stepping after a render
    of some cameras moves only those (Adam skips parameters without a gradient); with one
    [V, 6] tensor, Adam's momentum would keep moving every camera on every step."""

    def __init__(self, num_cameras: int):
        super().__init__()
        if num_cameras < 1:
            raise ValueError(f"num_cameras must be >= 1, got {num_cameras}")
        self.rotation_deltas = nn.ParameterList([nn.Parameter(torch.zeros(6)) for _ in range(num_cameras)])
        self.translation_deltas = nn.ParameterList([nn.Parameter(torch.zeros(3)) for _ in range(num_cameras)])
        self.register_buffer("identity_6d", torch.tensor(_IDENTITY_6D))

    def deltas(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """[B, 4, 4] camera-frame corrections of the cameras `indices`."""
        indices = [int(i) for i in indices]
        rotation = torch.stack([self.rotation_deltas[i] for i in indices])
        translation = torch.stack([self.translation_deltas[i] for i in indices])
        R = rotation_6d_to_matrix(rotation + self.identity_6d)
        T = torch.zeros(R.shape[:-2] + (4, 4), dtype=R.dtype, device=R.device)
        T[..., :3, :3] = R
        T[..., :3, 3] = translation
        T[..., 3, 3] = 1.0
        return T

    def forward(self, c2w: torch.Tensor, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Refined c2w [B, 4, 4] of the cameras `indices`, whose given c2w are `c2w` [B, 4, 4]."""
        return c2w @ self.deltas(indices)


class ExposureCompensation(nn.Module):
    """Per-image affine colour correction `(1 + gain) * image + bias` (identity at the start)."""

    def __init__(self, num_images: int):
        super().__init__()
        self.gains = nn.Parameter(torch.zeros(num_images, 3))
        self.biases = nn.Parameter(torch.zeros(num_images, 3))

    def forward(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """images [B, H, W, 3] of the views `indices` -> corrected images."""
        gains = 1.0 + self.gains[indices][:, None, None, :]
        return images * gains + self.biases[indices][:, None, None, :]


# --- measuring pose errors ------------------------------------------------------------------------

def rotation_errors_deg(estimated: Sequence[Camera], reference: Sequence[Camera], align: bool = True) -> np.ndarray:
    """Per-camera rotation error in degrees between two sets of cameras.

    With `align`, a single global rotation is removed first (the best one in the chordal
    sense): jointly refined cameras and scene are only defined up to such a change of frame.
    """
    if len(estimated) != len(reference) or not estimated:
        raise ValueError(f"need the same non-zero number of cameras, got {len(estimated)} and {len(reference)}")
    R_est = np.stack([c.c2w[:3, :3] for c in estimated])
    R_ref = np.stack([c.c2w[:3, :3] for c in reference])
    G = nearest_rotation(np.einsum("nij,nkj->ik", R_ref, R_est)) if align else np.eye(3)
    return np.array([rotation_angle_deg(G @ a, b) for a, b in zip(R_est, R_ref)])


def translation_errors(estimated: Sequence[Camera], reference: Sequence[Camera], align: bool = True) -> np.ndarray:
    """Per-camera distance between camera centres, after a similarity alignment (Umeyama)
    of the estimated centres onto the reference ones when `align` is set."""
    A = np.stack([c.center for c in estimated])
    B = np.stack([c.center for c in reference])
    if align and len(A) >= 3:
        A = similarity_aligned(A, B)
    return np.linalg.norm(A - B, axis=1)


def align_cameras(cameras: Sequence[Camera], reference: Sequence[Camera]) -> list[Camera]:
    """`cameras` moved by the one rigid transform that best maps them onto `reference`: the
    chordal mean of the rotation changes, then the mean centre. Refining poses against a scene
    rebuilt from those poses leaves this gauge free; aligning after every round stops it drifting."""
    if len(cameras) != len(reference) or not cameras:
        raise ValueError(f"need the same non-zero number of cameras, got {len(cameras)} and {len(reference)}")
    R_cam = np.stack([c.c2w[:3, :3] for c in cameras])
    R_ref = np.stack([c.c2w[:3, :3] for c in reference])
    T = np.eye(4)
    T[:3, :3] = nearest_rotation(np.einsum("nij,nkj->ik", R_ref, R_cam))
    T[:3, 3] = np.mean([c.center for c in reference], axis=0) - T[:3, :3] @ np.mean([c.center for c in cameras], axis=0)
    return [Camera(c.K, T @ c.c2w, c.width, c.height) for c in cameras]


def perturb_cameras(
    cameras: Sequence[Camera], rotation_deg: float, translation: float, seed: int = 0
) -> list[Camera]:
    """Cameras rotated by exactly `rotation_deg` about a random axis and moved by exactly
    `translation` (world units) in a random direction, each independently."""
    rng = np.random.default_rng(seed)
    out = []
    for cam in cameras:
        axis = rng.normal(size=3)
        direction = rng.normal(size=3)
        c2w = cam.c2w.copy()
        c2w[:3, :3] = axis_angle_to_rotation(axis, np.deg2rad(rotation_deg)) @ c2w[:3, :3]
        c2w[:3, 3] += translation * direction / np.linalg.norm(direction)
        out.append(Camera(cam.K, c2w, cam.width, cam.height))
    return out
