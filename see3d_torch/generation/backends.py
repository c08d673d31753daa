"""The multi-view model behind the generation loop, as a small protocol over numpy arrays.

The loop (`see3d_torch.generation.loop`) never sees a framework: it hands a backend the anchor
views and the warped target views with their masks, and gets the generated target views back.
Backends:

- `WarpOnlyBackend`: no model; the warped views (holes filled by OpenCV inpainting) are the
  output. The baseline every model must beat.
- `TorchUNetBackend`: a multi-view UNet checkpoint folder in torch (`config.json` +
  safetensors; the demo's small pixel-space model converted from Flax), sampled with the
  See3D inference condition (Eq. 20) and DDIM.
- `See3DPipelineBackend`: the released See3D weights through `see3d_torch.pipeline`.
- `see3d_jax.generation_backend.JaxSamplerBackend`: a Flax checkpoint sampled in JAX (lives on
  the JAX side; it never imports torch, and this module never imports jax).

Array conventions (every backend): images float32 [N, H, W, 3] in [0, 1]; masks float32
[N, H, W] with 1 = known pixel, 0 = hole (warped images are black in holes); cameras are
`see3d_core.cameras.Camera` (See3D itself ignores them: it is pose-free).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from see3d_core.cameras import Camera
from see3d_core.images import to_uint8

ProgressFn = Callable[[int, int], None]  # (steps done, steps total)


@runtime_checkable
class MultiViewBackend(Protocol):
    """What the generation loop needs from a multi-view model."""

    name: str
    image_size: tuple[int, int] | None  # (height, width) the model works at; None: any size
    max_views: int  # references + targets the model takes in one call

    def generate(
        self,
        reference_images: np.ndarray,
        target_images: np.ndarray,
        target_masks: np.ndarray,
        *,
        reference_cameras: Sequence[Camera],
        target_cameras: Sequence[Camera],
        seed: int,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Generated target views [T, H, W, 3] in [0, 1], same size as `target_images`."""
        ...


def check_request(reference_images: np.ndarray, target_images: np.ndarray, target_masks: np.ndarray) -> None:
    """Raise a ValueError naming the argument whose shape or range breaks the convention."""
    for name, arr in (("reference_images", reference_images), ("target_images", target_images)):
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"{name} must be [N, H, W, 3], got shape {arr.shape}")
        if arr.size and (arr.min() < -1e-3 or arr.max() > 1 + 1e-3):
            raise ValueError(f"{name} must be in [0, 1], got range [{arr.min():.3f}, {arr.max():.3f}]")
    if target_masks.shape != target_images.shape[:3]:
        raise ValueError(f"target_masks must be [T, H, W] = {target_images.shape[:3]}, got {target_masks.shape}")
    if reference_images.shape[1:3] != target_images.shape[1:3]:
        raise ValueError(f"reference and target images differ in size: {reference_images.shape[1:3]} vs {target_images.shape[1:3]}")


def inpaint_holes(image: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """Fill the holes (mask 0) of an image in [0, 1] with OpenCV's Telea inpainting."""
    holes = (mask < 0.5).astype(np.uint8)
    if not holes.any():
        return image.astype(np.float32)
    if holes.all():  # nothing to propagate from
        return np.full_like(image, 0.5, dtype=np.float32)
    img8 = to_uint8(image)
    filled = cv2.inpaint(img8, holes, radius, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
    out = np.where(holes[..., None] > 0, filled, image)  # known pixels stay exact
    return out.astype(np.float32)


class WarpOnlyBackend:
    """No model: the warped target views are the output, holes filled by inpainting
    (`hole_fill="inpaint"`, what a fair baseline does) or left black (`"black"`)."""

    name = "warp-only"
    image_size = None

    def __init__(self, max_views: int = 8, hole_fill: str = "inpaint"):
        if hole_fill not in ("inpaint", "black"):
            raise ValueError(f"hole_fill must be 'inpaint' or 'black', got {hole_fill!r}")
        self.max_views = int(max_views)
        self.hole_fill = hole_fill

    def generate(self, reference_images, target_images, target_masks, *, reference_cameras, target_cameras, seed, progress=None):
        check_request(reference_images, target_images, target_masks)
        out = []
        for i, (img, mask) in enumerate(zip(target_images, target_masks)):
            out.append(inpaint_holes(img, mask) if self.hole_fill == "inpaint" else img * (mask[..., None] > 0.5))
            if progress is not None:
                progress(i + 1, len(target_images))
        return np.stack(out).astype(np.float32) if out else np.zeros_like(target_images)


class TorchUNetBackend:
    """A pixel-space multi-view UNet model folder in torch (`config.json` + safetensors, as
    either framework's `save_pretrained` or the trainer's `RUN/ema` export write it), sampled
    with DDIM and the inference condition of Eq. 20 (`see3d_torch.sampling.sample`).

    Pixels enter in [-1, 1]; holes are black (-1) in the condition, as in training. The
    context is zeros: the small models are trained without text or CLIP context. An optional
    `scheduler_config.json` (diffusers DDIMScheduler) in the folder overrides the default
    See3D schedule (scaled-linear betas, zero terminal SNR, trailing steps)."""

    def __init__(self, folder: str | Path, device: str = "cpu", num_inference_steps: int = 25,
                 guidance_scale: float = 0.0, max_views: int | None = None):
        import torch

        from see3d_torch.unet import MultiViewUNet

        folder = Path(folder)
        self.unet = MultiViewUNet.from_pretrained(folder, device=device).to(device)
        cfg = self.unet.config
        if not cfg.pixel_space:
            raise ValueError(f"{folder}: a latent-space UNet; TorchUNetBackend runs pixel-space models "
                             "(use the released pipeline folder with See3DPipelineBackend for latent models)")
        self.name = f"unet:{folder.name}"
        self.folder = folder
        self.device = torch.device(device)
        self.image_size = (cfg.sample_size, cfg.sample_size)
        self.max_views = int(max_views or 4)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)

    def _scheduler(self):
        from see3d_torch.sampling import DDIMConfig
        from see3d_torch.schedules import ScheduleConfig, make_ddim_scheduler

        sampler = DDIMConfig(num_inference_steps=self.num_inference_steps, prediction_type=self.unet.config.prediction_type,
                             guidance_scale=self.guidance_scale)
        if (self.folder / "scheduler_config.json").is_file():
            from diffusers import DDIMScheduler

            scheduler = DDIMScheduler.from_pretrained(self.folder, local_files_only=True)
            return scheduler, DDIMConfig.from_scheduler(scheduler, num_inference_steps=self.num_inference_steps,
                                                        guidance_scale=self.guidance_scale)
        return make_ddim_scheduler(ScheduleConfig.see3d(), sampler), sampler

    def generate(self, reference_images, target_images, target_masks, *, reference_cameras, target_cameras, seed, progress=None):
        import torch

        from see3d_torch.sampling import SamplerNoise, sample

        check_request(reference_images, target_images, target_masks)
        n_ref, n_tgt = len(reference_images), len(target_images)
        images = np.concatenate([reference_images, target_images * (target_masks[..., None] > 0.5)])
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)[None].float().to(self.device) * 2 - 1  # [1, V, 3, H, W]
        masks = torch.from_numpy(np.concatenate([np.ones((n_ref,) + target_masks.shape[1:], np.float32), target_masks]))
        masks = (masks > 0.5).float()[None, :, None].to(self.device)
        is_reference = torch.tensor([[True] * n_ref + [False] * n_tgt], device=self.device)
        cfg = self.unet.config
        context = torch.zeros(1, cfg.context_tokens, cfg.context_dim, device=self.device)
        scheduler, sampler = self._scheduler()
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = SamplerNoise.draw(generator, self.num_inference_steps, pixels.shape)
        noise = SamplerNoise(*(n.to(self.device) for n in (noise.initial, noise.condition, noise.step)))
        steps = [0]

        def model_fn(x_t, condition, mask, t, ctx):
            out = self.unet(torch.cat([x_t, condition, mask], dim=2), t, ctx)
            steps[0] += 1  # one call per step: guidance batches both branches into it
            if progress is not None:
                progress(steps[0], self.num_inference_steps)
            return out

        final = sample(model_fn, scheduler, pixels, masks, is_reference, noise, context, sampler)
        out = (final[0, n_ref:].permute(0, 2, 3, 1).float().cpu().numpy() + 1) / 2
        return np.clip(out, 0, 1).astype(np.float32)


class See3DPipelineBackend:
    """The released See3D weights (`MVD_weights`: diffusers layout with `unet/{single,sparse,SR}`)
    through `see3d_torch.pipeline.See3DPipeline`: latent space, the context of the first
    reference (CLIP-H + empty prompt), guidance on the visual condition, DDIM.

    `variant` picks the UNet: `single` (one input image) or `sparse` (several); the images are
    generated at the base model's size (512 px for the release: the UNet's sample size times the
    VAE factor). The 2x super-resolution stage is `see3d_torch.pipeline.generate_with_super_resolution`;
    the loop runs at the base size because every generated view is warped again."""

    def __init__(self, folder: str | Path, variant: str = "sparse", device: str = "cpu", num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, max_views: int = 8, torch_dtype=None, offline: bool | None = None):
        from see3d_torch.pipeline import SamplingSettings, See3DPipeline

        folder = Path(folder)
        self.pipeline = See3DPipeline.from_pretrained(folder, variant=variant, device=device, torch_dtype=torch_dtype, offline=offline)
        base = SamplingSettings.base()
        self.settings = dataclasses.replace(
            base,
            num_inference_steps=int(num_inference_steps or base.num_inference_steps),
            guidance_scale=float(base.guidance_scale if guidance_scale is None else guidance_scale),
        )
        side = int(self.pipeline.unet.config.sample_size) * self.pipeline.vae_factor
        self.name = f"see3d:{folder.name}/{variant}"
        self.image_size = (side, side)
        self.max_views = int(max_views)

    def generate(self, reference_images, target_images, target_masks, *, reference_cameras, target_cameras, seed, progress=None):
        check_request(reference_images, target_images, target_masks)
        return self.pipeline(reference_images, target_images, target_masks, seed=seed, settings=self.settings, progress=progress)

    def seconds_per_call(self) -> float:
        """One generation call's cost, measured: one guided model step on `max_views` views of
        the base size, times the sampler's steps (VAE and CLIP are small beside it)."""
        return self.pipeline.time_one_step(self.max_views, self.image_size) * self.pipeline.num_steps(self.settings)
