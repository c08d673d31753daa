"""A surface mesh from rendered depth maps: TSDF fusion, then marching cubes (scikit-image).

Each voxel keeps a truncated signed distance to the surface seen by every camera, `clip((D(p) -
z) / tau, -1, 1)` where `D(p)` is the depth the camera sees at the voxel's projection and `z`
the voxel's own depth, averaged over the cameras that see it in front of (or just behind, within
`tau`) that surface. The zero level set of that average is the fused surface (Curless & Levoy
1996); colours are fused the same way and read at the vertices.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from see3d_core.cameras import Camera, depth_to_points
from see3d_core.images import to_uint8


@dataclasses.dataclass
class Mesh:
    vertices: np.ndarray  # [V, 3] float32, world units
    faces: np.ndarray  # [F, 3] int32 vertex indices
    colors: np.ndarray  # [V, 3] uint8

    def save_ply(self, path: str | os.PathLike) -> Path:
        """Binary little-endian PLY with per-vertex colours (MeshLab, Blender, Open3D read it)."""
        path = Path(path)
        vertex = np.empty(len(self.vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
        for i, c in enumerate("xyz"):
            vertex[c] = self.vertices[:, i]
        for i, c in enumerate(("red", "green", "blue")):
            vertex[c] = self.colors[:, i]
        face = np.empty(len(self.faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
        face["n"] = 3
        face["v"] = self.faces
        header = (
            f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertex)}\n"
            "property float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\n"
            f"element face {len(face)}\nproperty list uchar int vertex_indices\nend_header\n"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(vertex.tobytes())
            f.write(face.tobytes())
        return path


def depth_bounds(depths: Sequence[np.ndarray], cameras: Sequence[Camera], max_depth: float, padding: float = 0.05):
    """Axis-aligned box (lo [3], hi [3]) around the points closer than `max_depth`, the 1st-99th
    percentile per axis, padded by `padding` of its size."""
    points = []
    for depth, cam in zip(depths, cameras):
        near = np.isfinite(depth) & (depth > 0) & (depth < max_depth)
        points.append(depth_to_points(np.where(near, depth, 1.0), cam.K, cam.c2w)[near])
    points = np.concatenate(points)
    if len(points) == 0:
        raise ValueError(f"no depth below max_depth={max_depth:g}: nothing to mesh")
    lo, hi = np.percentile(points, 1, axis=0), np.percentile(points, 99, axis=0)
    pad = padding * (hi - lo).max()
    return lo - pad, hi + pad


def fuse_tsdf(
    depths: Sequence[np.ndarray],
    cameras: Sequence[Camera],
    images: Sequence[np.ndarray] | None = None,
    resolution: int = 96,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    truncation_voxels: float = 3.0,
    max_depth: float | None = None,
):
    """TSDF [R, R, R] (x, y, z order), weights [R, R, R], colours [R, R, R, 3], voxel origin and size.

    `max_depth` (default 2.5 x the median depth) only sets the default bounds: surfaces farther
    away (a sky dome) still carve free space but are not meshed."""
    if len(depths) != len(cameras) or not cameras or (images is not None and len(images) != len(cameras)):
        raise ValueError(f"fuse_tsdf needs one depth (and image) per camera; got {len(depths)} depths, {len(cameras)} cameras")
    depths = [np.asarray(d, dtype=np.float64) for d in depths]
    for i, (d, cam) in enumerate(zip(depths, cameras)):
        if d.shape != (cam.height, cam.width):
            raise ValueError(f"depth {i} is {d.shape}, camera {i} is {cam.height}x{cam.width}")
    if max_depth is None:
        finite = np.concatenate([d[np.isfinite(d) & (d > 0)] for d in depths])
        max_depth = 2.5 * float(np.median(finite))
    lo, hi = bounds if bounds is not None else depth_bounds(depths, cameras, max_depth)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    voxel = float((hi - lo).max()) / (resolution - 1)
    shape = tuple(int(np.ceil((hi[i] - lo[i]) / voxel)) + 1 for i in range(3))
    grid = np.stack(np.meshgrid(*[lo[i] + voxel * np.arange(shape[i]) for i in range(3)], indexing="ij"), -1).reshape(-1, 3)
    tau = truncation_voxels * voxel
    tsdf_sum = np.zeros(len(grid))
    weights = np.zeros(len(grid))
    color_sum = np.zeros((len(grid), 3))
    for i, (depth, cam) in enumerate(zip(depths, cameras)):
        uv, z = cam.project(grid)
        u, v = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
        inside = (z > 0) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        seen = np.zeros(len(grid))
        seen[inside] = depth[v[inside], u[inside]]
        sdf = seen - z
        use = inside & np.isfinite(seen) & (seen > 0) & (sdf > -tau)
        tsdf_sum[use] += np.clip(sdf[use] / tau, -1.0, 1.0)
        weights[use] += 1.0
        if images is not None:
            rgb = np.asarray(images[i], dtype=np.float64)[..., :3]
            color_sum[use] += rgb[v[use], u[use]]
    fused = np.where(weights > 0, tsdf_sum / np.maximum(weights, 1), 1.0)
    colors = color_sum / np.maximum(weights, 1)[:, None]
    return fused.reshape(shape), weights.reshape(shape), colors.reshape(shape + (3,)), lo, voxel


def mesh_from_depths(
    depths: Sequence[np.ndarray],
    cameras: Sequence[Camera],
    images: Sequence[np.ndarray] | None = None,
    resolution: int = 96,
    **options,
) -> Mesh:
    """Fuse the depth maps (`fuse_tsdf`, its `options`) and extract the zero level set."""
    try:
        from skimage.measure import marching_cubes
    except ImportError as error:
        raise ImportError("mesh extraction needs scikit-image: pip install 'see3d-kit[torch]' or scikit-image") from error
    tsdf, weights, colors, origin, voxel = fuse_tsdf(depths, cameras, images, resolution, **options)
    if not (tsdf.min() < 0 < tsdf.max()):
        raise ValueError("the fused depths contain no surface inside the bounds (TSDF never changes sign)")
    # only where some camera looked: unobserved voxels would add a closing wall
    vertices, faces, _, _ = marching_cubes(tsdf, level=0.0, mask=weights > 0)
    index = np.clip(np.round(vertices).astype(np.int64), 0, np.array(tsdf.shape) - 1)
    vertex_colors = colors[index[:, 0], index[:, 1], index[:, 2]] if images is not None else np.full((len(vertices), 3), 0.7)
    return Mesh(
        vertices=(origin + voxel * vertices).astype(np.float32),
        faces=faces.astype(np.int32),
        colors=to_uint8(vertex_colors),
    )
