"""The JAX sampler behind the generation loop (`see3d_torch.generation`), as a backend of the
same numpy protocol (`see3d_torch.generation.backends.MultiViewBackend`): images [N, H, W, 3]
in [0, 1], masks [N, H, W] with 1 = known, the generated targets back as numpy.

It never imports torch: the loop imports it through the `see3d` command, which picks a backend
lazily. The model comes from a model folder (`see3d_jax.convert.from_pretrained`: config.json +
diffusion_pytorch_model.safetensors, written by either framework, e.g. the trainer's
`WORKDIR/ema`). Pixel-space models only, like the torch UNet backend; the context is zeros (the
small models are trained without text/CLIP context).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np


class JaxSamplerBackend:
    """DDIM with the Eq. 20 condition (`see3d_jax.sampling.sample`), jitted per view count."""

    def __init__(self, folder: str | Path, num_inference_steps: int = 25, guidance_scale: float = 0.0, max_views: int = 4):
        import jax

        from see3d_jax import convert
        from see3d_jax.unet import UNet

        folder = Path(folder)
        self.model = convert.from_pretrained(folder)
        if not isinstance(self.model, UNet):
            raise ValueError(f"{folder}: holds a {type(self.model).__name__}, not a UNet")
        cfg = self.model.config
        if not cfg.pixel_space:
            raise ValueError(f"{folder}: a latent-space UNet; JaxSamplerBackend runs pixel-space models")
        self.name = f"jax:{folder.name}"
        self.image_size = (cfg.sample_size, cfg.sample_size)
        self.max_views = int(max_views)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self._jax = jax
        self._compiled: dict[tuple, Callable] = {}

    def _sampler(self, shape: tuple[int, ...]) -> Callable:
        if shape in self._compiled:
            return self._compiled[shape]
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from see3d_jax.sampling import DDIMConfig, SamplerNoise, sample
        from see3d_jax.schedules import ScheduleConfig, make_noise_schedule

        cfg = self.model.config
        config = DDIMConfig(num_inference_steps=self.num_inference_steps, prediction_type=cfg.prediction_type,
                            guidance_scale=self.guidance_scale)
        schedule = make_noise_schedule(ScheduleConfig.see3d())
        graphdef, state = nnx.split(self.model)

        @jax.jit
        def run(state, pixels, masks, is_reference, key):
            model = nnx.merge(graphdef, state)

            def model_fn(x_t, condition, mask, t, context):
                return model(jnp.concatenate([x_t, condition, mask], axis=-1), t, context)

            noise = SamplerNoise.draw(key, config.num_inference_steps, pixels.shape)
            context = jnp.zeros((pixels.shape[0], cfg.context_tokens, cfg.context_dim), pixels.dtype)
            return sample(model_fn, schedule, pixels, masks, is_reference, noise, context, config)

        self._compiled[shape] = lambda *a: run(state, *a)
        return self._compiled[shape]

    def generate(self, reference_images: np.ndarray, target_images: np.ndarray, target_masks: np.ndarray, *,
                 reference_cameras: Sequence = (), target_cameras: Sequence = (), seed: int = 0, progress=None) -> np.ndarray:
        import jax
        import jax.numpy as jnp

        for name, arr in (("reference_images", reference_images), ("target_images", target_images)):
            if arr.ndim != 4 or arr.shape[-1] != 3:
                raise ValueError(f"{name} must be [N, H, W, 3], got shape {arr.shape}")
        if target_masks.shape != target_images.shape[:3]:
            raise ValueError(f"target_masks must be [T, H, W] = {target_images.shape[:3]}, got {target_masks.shape}")
        n_ref = len(reference_images)
        known = (target_masks > 0.5).astype(np.float32)
        images = np.concatenate([reference_images, target_images * known[..., None]]).astype(np.float32)
        masks = np.concatenate([np.ones((n_ref,) + known.shape[1:], np.float32), known])
        pixels = jnp.asarray(images * 2 - 1)[None]  # [1, V, H, W, 3], holes black (-1)
        is_reference = jnp.asarray([[True] * n_ref + [False] * len(target_images)])
        run = self._sampler(pixels.shape)
        final = run(pixels, jnp.asarray(masks)[None, ..., None], is_reference, jax.random.key(int(seed)))
        if progress is not None:  # one compiled scan: report the steps at the end
            progress(self.num_inference_steps, self.num_inference_steps)
        return np.clip((np.asarray(final[0, n_ref:]) + 1) / 2, 0, 1).astype(np.float32)
