"""Writing a reconstruction to disk: the PLY, renders, depth maps, a fly-through video, the
refined cameras and the metrics.

Layout of `out_dir`:

    splat.ply              standard 3DGS PLY (splat viewers open it)
    cameras.json           the (refined) cameras of every view, kit trajectory JSON
    renders/view_000.png   a render from every view's camera
    depth/view_000.png     its expected depth, colour-mapped (near = bright)
    depth/view_000.npy     the expected depth itself (float32, z-depth)
    flythrough.mp4         renders along a smooth path through the cameras
    mesh.ply               a coloured surface mesh fused from the rendered depths (`mesh.py`)
    metrics.json           `held_out` {psnr, ssim, lpips, views}: the final evaluation on the held-out
                           views (when any); every evaluation, final loss, counts, timings, the
                           camera refinement run
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from see3d_core import trajectories
from see3d_core.cameras import Camera
from see3d_core.images import depth_to_rgb, to_uint8, write_png
from see3d_core.videos import write_mp4


def flythrough_cameras(cameras: Sequence[Camera], num_frames: int) -> list[Camera]:
    """A smooth path through `cameras` in their order (slerp rotations, linear positions)."""
    if len(cameras) == 1:
        return [cameras[0]] * num_frames
    return trajectories.interpolate(list(cameras), num_frames)


def held_out_summary(reconstruction) -> dict | None:
    """The final evaluation on the held-out views: {psnr, ssim, lpips, views}, None without any."""
    if not reconstruction.eval_views or not reconstruction.evaluations:
        return None
    final = reconstruction.evaluations[-1]
    return {**{k: final[k] for k in ("psnr", "ssim", "lpips") if k in final}, "views": list(reconstruction.eval_views)}


def export_reconstruction(
    reconstruction,
    out_dir: str | os.PathLike,
    flythrough_frames: int = 60,
    fps: float = 15.0,
    path_cameras: Sequence[Camera] | None = None,
    mesh_resolution: int = 96,
) -> dict[str, str]:
    """Write everything listed in the module docstring; returns the paths written.
    `mesh_resolution` voxels along the longest side of the mesh's TSDF (0: no mesh)."""
    out = Path(out_dir)
    (out / "renders").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    written = {"ply": str(reconstruction.gaussians.save_ply(out / "splat.ply"))}
    trajectories.save_json(out / "cameras.json", reconstruction.cameras)
    written["cameras"] = str(out / "cameras.json")
    images, depths = reconstruction.render(reconstruction.cameras)
    for i, (rgb, depth) in enumerate(zip(images, depths)):
        write_png(out / "renders" / f"view_{i:03d}.png", rgb)
        write_png(out / "depth" / f"view_{i:03d}.png", depth_to_rgb(depth))
        np.save(out / "depth" / f"view_{i:03d}.npy", depth.astype(np.float32))
    written["renders"] = str(out / "renders")
    written["depth"] = str(out / "depth")
    if mesh_resolution > 0:
        from see3d_torch.splatting.mesh import mesh_from_depths

        mesh = mesh_from_depths(depths, reconstruction.cameras, images, resolution=mesh_resolution)
        written["mesh"] = str(mesh.save_ply(out / "mesh.ply"))
    if flythrough_frames > 0:
        path = list(path_cameras) if path_cameras is not None else flythrough_cameras(reconstruction.cameras, flythrough_frames)
        frames, _ = reconstruction.render(path)
        write_mp4(out / "flythrough.mp4", to_uint8(frames), fps=fps)
        written["video"] = str(out / "flythrough.mp4")
    summary = {
        "num_gaussians": len(reconstruction.gaussians),
        "steps": len(reconstruction.history),
        "seconds": reconstruction.history[-1]["seconds"] if reconstruction.history else 0.0,
        "final_loss": reconstruction.history[-1]["loss"] if reconstruction.history else None,
        "train_views": reconstruction.train_views,
        "eval_views": reconstruction.eval_views,
        "held_out": held_out_summary(reconstruction),
        "evaluations": reconstruction.evaluations,
        "densification": reconstruction.densification,
        "exposure": reconstruction.exposure,
        "camera_refinement": reconstruction.camera_refinement,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    written["metrics"] = str(out / "metrics.json")
    return written
