"""Framework-free foundations shared by both sides of the kit.

`see3d_core` depends on numpy, scipy, OpenCV and Pillow only, so that `see3d_jax` (which
never imports torch) and `see3d_torch` (which never imports jax) can both build on it:

- `cameras`: the one camera convention (OpenCV), projection, look-at, rotations.
- `trajectories`: camera paths (orbit, forward, pan, spiral, zoom, key-pose interpolation)
  and their JSON / RealEstate10K file formats.
- `synthetic`: a deterministic procedural world rendered with exact RGB, depth and cameras.
- `videos`: labelled synthetic videos for curation, written as mp4 and frame folders.
- `clips`: the clip dataset format, the contract between curation and training.
"""

__version__ = "0.1.0"
