"""Warp-and-align generation (Fig. 4 of the paper): from one or a few images and a camera
trajectory to generated views, cameras, depths, masks and the conditions used.

- `loop`: `generate_views`, `GenerationConfig`, `GenerationResult` (the iterative loop);
- `anchors`: which targets come next and which known views condition them;
- `backends`: the `MultiViewBackend` protocol (numpy in, numpy out) and the torch backends;
  the JAX one is `see3d_jax.generation_backend`;
- `inputs`: cameras for the user's images (given, assumed or estimated) and named trajectories;
- `report`: PNG/grid/HTML output;
- `demo`: `see3d demo`, the whole pipeline on a synthetic scene with metrics.
"""

from see3d_torch.generation.backends import MultiViewBackend, WarpOnlyBackend
from see3d_torch.generation.loop import GenerationConfig, GenerationResult, generate_views

__all__ = ["GenerationConfig", "GenerationResult", "MultiViewBackend", "WarpOnlyBackend", "generate_views"]
