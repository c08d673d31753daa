"""JAX side of the See3D kit: Flax (NNX) multi-view diffusion model, visual condition, sampler
and sharded training. Never imports torch; exchanges data with `see3d_torch` through files."""
