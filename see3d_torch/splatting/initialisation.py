"""Where the Gaussians start: `initial_gaussians` picks and builds the initialisation of a run.

Without SfM points the Gaussians start from the given depth maps (one per sampled training
pixel, as for generated views) or at random in the volume the cameras see.

A few thousand SfM points make a few thousand blurred Gaussians, which a CPU run of a few hundred
steps cannot grow into a sharp scene (issue 19: 1,768 points on a real orbit video ended at
19.2 dB held-out, training views as low). `sfm_depth_maps` turns the points into a dense depth
map per view instead (inverse depth interpolated linearly between the points the view sees), so
that the depth initialisation (`Gaussians.from_depths`) can put one small Gaussian at each of many
training pixels, with that pixel's colour: the scene starts as sharp as its views.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from see3d_core.cameras import Camera, pixel_grid
from see3d_torch.splatting.gaussians import Gaussians


def visible_points(points: np.ndarray, camera: Camera, occlusion_radius_px: float = 3.0,
                   occlusion_ratio: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions [M, 2] and z-depths [M] of the `points` [N, 3] in front of `camera` and
    inside its image, without those hidden behind another point: a point is dropped when a point
    projecting within `occlusion_radius_px` of it is nearer than `occlusion_ratio` x its depth
    (SfM points are sparse, so a surface in front shows as nearer points around it)."""
    from scipy.spatial import cKDTree

    uv, z = camera.project(np.asarray(points, dtype=np.float64))
    inside = ((z > 0) & (uv[:, 0] > -0.5) & (uv[:, 0] < camera.width - 0.5)
              & (uv[:, 1] > -0.5) & (uv[:, 1] < camera.height - 0.5))
    uv, z = uv[inside], z[inside]
    if len(z) < 2:
        return uv, z
    k = min(16, len(z))
    distances, neighbours = cKDTree(uv).query(uv, k=k, distance_upper_bound=occlusion_radius_px)
    found = np.isfinite(distances)
    neighbour_depth = np.where(found, z[np.minimum(neighbours, len(z) - 1)], np.inf)
    hidden = neighbour_depth.min(axis=1) < occlusion_ratio * z
    return uv[~hidden], z[~hidden]


def sfm_depth_maps(points: np.ndarray, cameras: Sequence[Camera], occlusion_radius_px: float = 3.0,
                   occlusion_ratio: float = 0.85) -> list[np.ndarray]:
    """One z-depth map [H, W] per camera, interpolated between the SfM `points` [N, 3] it sees
    (`visible_points`): linearly in inverse depth inside their convex hull, from the nearest point
    outside it. A camera that sees fewer than 3 points gets an all-NaN map (no depth)."""
    from scipy.interpolate import griddata
    from scipy.spatial import QhullError

    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {points.shape}")
    depths = []
    for camera in cameras:
        uv, z = visible_points(points, camera, occlusion_radius_px, occlusion_ratio)
        if len(z) < 3:
            depths.append(np.full((camera.height, camera.width), np.nan, np.float32))
            continue
        grid = pixel_grid(camera.width, camera.height)
        nearest = griddata(uv, 1.0 / z, grid, method="nearest")
        try:
            inverse = griddata(uv, 1.0 / z, grid, method="linear")
        except QhullError:  # all points on a line: no triangles to interpolate in
            inverse = nearest
        inverse = np.where(np.isfinite(inverse), inverse, nearest)
        depths.append((1.0 / inverse).astype(np.float32))
    return depths


def initial_gaussians(config, images, cameras: Sequence[Camera], train_views: Sequence[int], init_views: Sequence[int],
                      depths, points, scene_scale: float) -> Gaussians:
    """The Gaussians a `ReconstructionConfig` run starts from (`config.init`, see there).

    images: [V, H, W, 3] tensor of all views; depths: per-view depth maps or None; points: (SfM
    points [N, 3], colours [N, 3]) or None; init_views: the views whose pixels the (sfm-)depth
    initialisations use (training views); scene_scale: the random initialisation's unit."""
    init = config.init
    if init == "auto":
        init = "sfm-depth" if points is not None else "depth" if depths is not None else "random"
    if init in ("points", "sfm-depth") and points is None:
        raise ValueError(f"init={init!r} needs points (structure-from-motion points)")
    if init == "depth" and depths is None:
        raise ValueError("init='depth' needs depths")
    if init == "points":
        return Gaussians.from_sfm_points(points[0], points[1], config.sh_degree, config.init_opacity, config.seed,
                                         radius_factor=config.init_scale)
    if init in ("depth", "sfm-depth"):
        if any(i not in train_views for i in init_views):
            raise ValueError(f"init_views {list(init_views)} must be training views (not held out)")
        init_cameras = [cameras[i] for i in init_views]
        init_depths = [depths[i] for i in init_views] if init == "depth" else sfm_depth_maps(points[0], init_cameras)
        return Gaussians.from_depths(
            [images[i].numpy() for i in init_views], init_depths, init_cameras,
            max_points=config.init_points, pixel_footprint=config.init_footprint_px, sh_degree=config.sh_degree,
            opacity=config.init_opacity, seed=config.seed,
        )
    near, far = config.random_init_depths
    return Gaussians.in_frustums(config.init_points, [cameras[i] for i in train_views], near * scene_scale,
                                 far * scene_scale, config.sh_degree, 0.1, config.seed)
