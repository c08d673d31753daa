"""Gaussian Splatting for the kit: one rasterization interface (gsplat on CUDA, the kit's own
tiled renderer on CPU), reconstruction with camera refinement, PLY and video export.

    from see3d_torch.splatting import CameraRefinementConfig, reconstruct, export_reconstruction
    result = reconstruct(images, cameras, depths, steps=1000, eval_views=(3, 11),
                         camera_refinement=CameraRefinementConfig())  # None (the default): poses as given
    export_reconstruction(result, "out/splat")
"""

from see3d_torch.splatting.camera_refinement import CameraRefinement, CameraRefinementConfig, ExposureCompensation
from see3d_torch.splatting.camera_strategy import CameraRefinementStrategy
from see3d_torch.splatting.densification import DensificationConfig, DensificationStrategy
from see3d_torch.splatting.export import export_reconstruction
from see3d_torch.splatting.gaussians import Gaussians
from see3d_torch.splatting.reconstruct import Reconstruction, ReconstructionConfig, reconstruct
from see3d_torch.splatting.rendering import project_gaussians, rasterization

__all__ = [
    "CameraRefinement", "CameraRefinementConfig", "CameraRefinementStrategy", "DensificationConfig", "DensificationStrategy",
    "ExposureCompensation", "Gaussians", "Reconstruction", "ReconstructionConfig", "export_reconstruction", "project_gaussians", "rasterization", "reconstruct",
]
