"""Which views to generate next, and which known views condition them (Fig. 4 of the paper).

A trajectory is generated in iterations: each iteration takes the targets closest to what is
already known (so warps have small holes), and conditions them on the known views closest to
those targets (the anchors). Generated views become known, and so anchors, for later
iterations. Closeness mixes camera-centre distance and viewing-direction angle, because an
orbit at a fixed radius and a pan in place both need a distance that is not zero.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from see3d_core.cameras import Camera, camera_spread, rotation_angle_deg


def camera_distance(a: Camera, b: Camera, scene_scale: float, degrees_per_scale: float = 30.0) -> float:
    """Centre distance in units of `scene_scale` plus rotation angle in units of
    `degrees_per_scale` degrees: a rotation of 30 degrees counts as much as moving one scene
    scale."""
    if scene_scale <= 0:
        raise ValueError(f"scene_scale must be positive, got {scene_scale}")
    moved = float(np.linalg.norm(a.center - b.center)) / scene_scale
    turned = rotation_angle_deg(a.c2w[:3, :3], b.c2w[:3, :3]) / degrees_per_scale
    return moved + turned


def distance_matrix(known: Sequence[Camera], targets: Sequence[Camera], scene_scale: float) -> np.ndarray:
    """[len(known), len(targets)] camera distances."""
    return np.array([[camera_distance(k, t, scene_scale) for t in targets] for k in known]).reshape(len(known), len(targets))


def next_targets(known: Sequence[Camera], pending: Sequence[Camera], count: int, scene_scale: float) -> list[int]:
    """Indices into `pending` of the `count` targets nearest to the known views, nearest
    first: targets are warped from known views only, so their distance to the known set
    decides how much of them a warp covers."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not known:
        raise ValueError("next_targets needs at least one known view")
    nearest = distance_matrix(known, pending, scene_scale).min(axis=0)
    return [int(i) for i in np.argsort(nearest, kind="stable")[:count]]


def choose_anchors(known: Sequence[Camera], targets: Sequence[Camera], count: int, scene_scale: float) -> list[int]:
    """Indices into `known` of the `count` known views nearest to any of `targets`, nearest
    first (the first anchor drives the CLIP embedding of the released model)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not targets:
        raise ValueError("choose_anchors needs at least one target")
    nearest = distance_matrix(known, targets, scene_scale).min(axis=1)
    return [int(i) for i in np.argsort(nearest, kind="stable")[:count]]


def scene_scale_of(cameras: Sequence[Camera], fallback: float = 1.0) -> float:
    """A length for `camera_distance`: the spread of the camera centres (or `fallback` when
    all cameras share one centre, e.g. a pan)."""
    spread = camera_spread(cameras)
    return spread if spread > 1e-9 else fallback
