"""PyTorch side of the See3D kit: curation, depth alignment, warping, the released-weights
pipeline, generation loop and Gaussian Splatting. Never imports jax; exchanges data with
`see3d_jax` through files (clip datasets, safetensors checkpoints)."""
