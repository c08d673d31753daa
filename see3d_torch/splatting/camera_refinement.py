"""Per-camera pose refinement, per-image exposure compensation and pose error measures.

Pose refinement learns, for every training camera, a rotation delta in the continuous 6D
representation (Zhou et al. 2019: two columns, Gram-Schmidt) and a translation delta, both
zero at the start, applied in the camera's own frame: `c2w' = c2w [R(d) | t]`.

Exposure compensation learns a per-image, per-channel affine map `I' = (1 + g) I + b`
(zero at the start), for views whose brightness differs (generated views often do).

`CameraRefinementConfig` is how a reconstruction refines its poses
(`ReconstructionConfig.camera_refinement`); `camera_strategy.CameraRefinementStrategy` runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from see3d_core.cameras import Camera, axis_angle_to_rotation, nearest_rotation, rotation_angle_deg, similarity_aligned

_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CAMERA_REFINEMENT_METHODS = ("auto", "depth", "photometric", "depth+photometric")


@dataclasses.dataclass
class CameraRefinementConfig:
    """Camera pose refinement of a reconstruction (`ReconstructionConfig.camera_refinement`)."""

    # "depth": multi-view point-to-plane ICP between the given depth maps (`depth_registration.py`),
    # then the scene trained with those poses fixed; "photometric": the alternating rounds below,
    # then poses refined jointly with the scene; "depth+photometric": both in turn; "auto":
    # the ICP first when depths are given, then the photometric stages only if the depth maps
    # still disagree under the registered poses (median point-to-plane distance above
    # `depth_agreement` of the depth) and the disagreement is smooth (a share above
    # `depth_smooth_fraction` explained by a smooth field), else "photometric". Why: with
    # depths that agree (exact, or off by a per-view scale) or that are only noisy, the ICP alone
    # is best and the photometric stages add ~0.5 deg of wander; smoothly distorted depths
    # (monocular estimates, as the generation loop makes) bias the ICP, and both in turn did best
    # there (RESULTS.md, issue 8)
    method: str = "auto"
    depth_registration_iters: int = 10  # Gauss-Newton iterations of the ICP
    depth_agreement: float = 1e-3  # "auto": depth disagreement up to which the ICP poses are kept
    depth_smooth_fraction: float = 0.1  # "auto": below it the disagreement is noise the ICP averages out
    # before the joint phase, one round per entry: a scene trained (poses fixed) on the views
    # shrunk by this factor, then every pose registered alone against it (coarse to fine)
    round_downscales: tuple[int, ...] = (2, 2, 2, 1)
    round_steps: int = 150  # scene steps per round
    round_points: int = 8_000  # depth-init Gaussians per round scene
    # round scenes start from this many evenly spaced views' depths; so does the main scene under
    # photometric refinement (each view's own points would pin its pose)
    round_init_views: int = 3
    registration_iters: int = 25  # all poses per iteration; more overfits the round's blurred scene
    registration_lr: float = 1e-2  # Adam on the 6D rotation and translation/scene-scale deltas
    registration_lr_decay: float = 0.8  # per round
    # joint phase (the main training)
    rotation_lr: float = 1e-2
    translation_lr: float = 5e-3  # multiplied by the scene scale
    lr_final_factor: float = 0.05  # exponential decay over the run, like the means

    def __post_init__(self):
        if self.method not in CAMERA_REFINEMENT_METHODS:
            raise ValueError("camera refinement method must be 'auto', 'depth', 'photometric' or 'depth+photometric', "
                             f"got {self.method!r}")
        self.round_downscales = tuple(int(f) for f in self.round_downscales)
        if any(f < 1 for f in self.round_downscales):
            raise ValueError(f"round_downscales must be integers >= 1, got {self.round_downscales}")
        if not self.depth_agreement >= 0:
            raise ValueError(f"depth_agreement must be >= 0, got {self.depth_agreement}")
        if not 0 <= self.depth_smooth_fraction <= 1:
            raise ValueError(f"depth_smooth_fraction must be in [0, 1], got {self.depth_smooth_fraction}")
        if self.depth_registration_iters < 1:
            raise ValueError(f"depth_registration_iters must be >= 1, got {self.depth_registration_iters}")
        if self.round_init_views < 1 or self.round_steps < 1 or self.registration_iters < 1:
            raise ValueError("round_init_views, round_steps and registration_iters must be >= 1")


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """[..., 6] (two 3-vectors) -> rotation [..., 3, 3] whose first two columns follow them."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def camera_tensors(cameras: Sequence[Camera], device) -> tuple[torch.Tensor, torch.Tensor]:
    """c2w [V, 4, 4] and K [V, 3, 3] of kit cameras, float32 on `device`."""
    c2w = torch.tensor(np.stack([c.c2w for c in cameras]), dtype=torch.float32, device=device)
    Ks = torch.tensor(np.stack([c.K for c in cameras]), dtype=torch.float32, device=device)
    return c2w, Ks


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
