"""The See3D pipeline on the released weights (torch): warped views + masks in, generated views out.

Loads a folder in the released layout (`see3d_core.released_layout`) with local files only
and runs the inference of SPEC.md section 2:

- context = text embedding of the empty prompt "" (computed once, the text encoder is then
  freed) + 0.2 x the CLIP-H `image_embeds` of the *first* reference view, broadcast to all
  tokens; the CLIP input is the image in [0, 1];
- the UNet input is `cat([x_t, V, M])` (9 channels; the 5-channel `cat([x_t, M])` variant is
  supported too); only the first latent-channel outputs are used;
- the visual condition, its schedule (t' = t // 5, the piecewise W), guidance on the condition
  `(1 + s) cond - s uncond`, references imposed on x_t every step and DDIM are
  `see3d_torch.sampling.sample` (diffusers' DDIMScheduler with zero terminal SNR and trailing
  timesteps, read from `scheduler/` with those two settings forced on);
- VAE encode (posterior sample from the seeded generator) / decode, sliced per view;
- everything seeded by `seed`: two runs with the same inputs give the same images;
- `torch_dtype=torch.float16` or `bfloat16` on a GPU; float32 on a CPU;
- the optional 2x super-resolution stage (`unet/SR`): `generate_with_super_resolution` frees
  the base model before loading it.

Arrays are numpy: images [N, H, W, 3] float in [0, 1], masks [N, H, W] with 1 = known pixel
(valid warp), 0 = hole. H and W must be multiples of 8 (512 for the released base model).
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from see3d_core.released_layout import CLIP_VISION_DIR, UNET_CONFIG, UNET_VARIANTS, UNET_WEIGHTS, released_unet_dir
from see3d_torch.condition import RELEASED, ConditionConfig, fill_holes, resize_masks_nearest
from see3d_torch.sampling import DDIMConfig, SamplerNoise, sample
from see3d_torch.unet import MultiViewUNet

CLIP_IMAGE_WEIGHT = 0.2  # context = empty-prompt embedding + 0.2 x CLIP image embedding
SR_CONDITION = ConditionConfig(variant="masked")  # the SR model sees the clean upscaled views


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Per-stage sampler settings (released: base 50 steps, guidance 2.0; SR 30 steps, 1.0)."""

    num_inference_steps: int = 50
    guidance_scale: float = 2.0
    condition: ConditionConfig = RELEASED

    @classmethod
    def base(cls) -> "SamplingSettings":
        return cls()

    @classmethod
    def super_resolution(cls) -> "SamplingSettings":
        return cls(num_inference_steps=30, guidance_scale=1.0, condition=SR_CONDITION)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (the pipeline loads local files only)")
    return path


def check_release_folder(root: str | Path, variant: str) -> Path:
    """Raise FileNotFoundError naming the first file of the released layout that is missing."""
    root = Path(root)
    _require(root, "See3D checkpoint folder")
    needed = [
        (root / "scheduler" / "scheduler_config.json", "scheduler config"),
        (root / "tokenizer", "tokenizer folder"),
        (root / "text_encoder" / "config.json", "text encoder config"),
        (root / "vae" / "config.json", "VAE config"),
        (root / "vae" / UNET_WEIGHTS, "VAE weights"),
        (root / CLIP_VISION_DIR / "config.json", "CLIP image encoder config"),
        (root / CLIP_VISION_DIR / "preprocessor_config.json", "CLIP preprocessor config"),
        (released_unet_dir(root, variant) / UNET_CONFIG, f"UNet ({variant}) config"),
        (released_unet_dir(root, variant) / UNET_WEIGHTS, f"UNet ({variant}) weights"),
    ]
    for path, what in needed:
        _require(path, what)
    if not any((root / "text_encoder").glob("*.safetensors")):
        raise FileNotFoundError(f"text encoder weights not found: {root / 'text_encoder'}/*.safetensors")
    if not any((root / CLIP_VISION_DIR).glob("*.safetensors")):
        raise FileNotFoundError(f"CLIP image encoder weights not found: {root / CLIP_VISION_DIR}/*.safetensors")
    return root


@dataclasses.dataclass(frozen=True)
class ClipPreprocess:
    """CLIP image preprocessing in torch (no torchvision): shortest side -> `size` (bicubic),
    centre crop `crop`, normalise; values from `preprocessor_config.json`."""

    size: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_json(cls, path: str | Path) -> "ClipPreprocess":
        raw = json.loads(_require(Path(path), "CLIP preprocessor config").read_text())
        size, crop = raw.get("size", 224), raw.get("crop_size", 224)
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = crop.get("height") if isinstance(crop, dict) else crop
        return cls(int(size), int(crop), tuple(raw["image_mean"]), tuple(raw["image_std"]))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1] -> [N, 3, crop, crop] normalised."""
        h, w = images.shape[-2:]
        scale = self.size / min(h, w)
        size = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
        resized = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        crop = resized[..., top : top + self.crop, left : left + self.crop]
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (crop - mean) / std


def empty_prompt_embedding(root: str | Path, device, dtype) -> torch.Tensor:
    """Text-encoder hidden states of the empty prompt "" [1, 77, D]; the encoder is freed after."""
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(root)
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True).to(device)
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        embedding = encoder(ids.to(device))[0].to(dtype)
    del encoder
    _release_memory()
    return embedding


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _to_pixels(images: np.ndarray, name: str) -> torch.Tensor:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name}: expected [N, H, W, 3] floats in [0, 1], got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)


class See3DPipeline:
    """Released See3D inference. Build with `from_pretrained(root, variant)`; call with views."""

    def __init__(self, unet: MultiViewUNet, vae, scheduler, empty_prompt: torch.Tensor, image_encoder, clip_preprocess: ClipPreprocess,
                 device: torch.device, dtype: torch.dtype, vae_slice: int = 1):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.empty_prompt, self.image_encoder, self.clip_preprocess = empty_prompt, image_encoder, clip_preprocess
        self.device, self.dtype, self.vae_slice = device, dtype, int(vae_slice)
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        cin = unet.config.in_channels
        if cin not in (2 * self.latent_channels + 1, self.latent_channels + 1):
            raise ValueError(
                f"UNet in_channels={cin}: expected {2 * self.latent_channels + 1} (x_t, V, M) or {self.latent_channels + 1} (x_t, M)"
            )
        if unet.config.out_channels < self.latent_channels:
            raise ValueError(f"UNet out_channels={unet.config.out_channels} < latent channels {self.latent_channels}")

    @classmethod
    def from_pretrained(cls, root: str | Path, variant: str = "sparse", device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, vae_slice: int = 1) -> "See3DPipeline":
        """Load the released folder (local files only). `variant`: single, sparse or SR.
        `torch_dtype` defaults to float16 on CUDA, float32 elsewhere."""
        from diffusers import AutoencoderKL, DDIMScheduler
        from transformers import CLIPVisionModelWithProjection

        if variant not in UNET_VARIANTS:
            raise ValueError(f"variant must be one of {UNET_VARIANTS}, got {variant!r}")
        root = check_release_folder(root, variant)
        device = torch.device(device)
        dtype = torch_dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        released = DDIMScheduler.from_pretrained(root / "scheduler", local_files_only=True)
        # the released sampler: zero terminal SNR and trailing timesteps, whatever the file says
        scheduler = DDIMScheduler.from_config(released.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
        empty_prompt = empty_prompt_embedding(root, device, dtype)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(root / CLIP_VISION_DIR, local_files_only=True, dtype=dtype).to(device).eval()
        clip_preprocess = ClipPreprocess.from_json(root / CLIP_VISION_DIR / "preprocessor_config.json")
        vae = AutoencoderKL.from_pretrained(root / "vae", local_files_only=True, torch_dtype=dtype).to(device).eval()
        unet = MultiViewUNet.from_pretrained(released_unet_dir(root, variant), torch_dtype=dtype, device="cpu").to(device)
        return cls(unet, vae, scheduler, empty_prompt, image_encoder, clip_preprocess, device, dtype, vae_slice)

    def free(self) -> None:
        """Drop every model (and the cached CUDA memory) so the next stage fits."""
        self.unet = self.vae = self.image_encoder = None
        _release_memory()

    # ------------------------------------------------------------------ stages

    def context(self, first_reference: torch.Tensor) -> torch.Tensor:
        """Empty-prompt embedding + 0.2 x CLIP image_embeds of the first reference [1, 3, H, W] in [0, 1]."""
        pixels = self.clip_preprocess(first_reference.to(self.device)).to(self.dtype)
        with torch.no_grad():
            image_embeds = self.image_encoder(pixel_values=pixels).image_embeds  # [1, D]
        return self.empty_prompt + CLIP_IMAGE_WEIGHT * image_embeds[:, None, :].to(self.dtype)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """pixels [N, 3, H, W] in [-1, 1] -> scaled latents [N, C, h, w], `vae_slice` views at a time."""
        out = []
        for chunk in pixels.split(self.vae_slice):
            dist = self.vae.encode(chunk.to(self.device, self.dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(self.device, dist.mean.dtype)
            out.append((dist.mean + dist.std * eps) * self.scaling_factor)
        return torch.cat(out)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents [N, C, h, w] -> images [N, 3, H, W] in [0, 1] (float32)."""
        out = [self.vae.decode(chunk / self.scaling_factor).sample.float() for chunk in latents.split(self.vae_slice)]
        return ((torch.cat(out) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def __call__(self, reference_images: np.ndarray, target_images: np.ndarray, target_masks: np.ndarray, *,
                 seed: int = 0, settings: SamplingSettings = SamplingSettings.base(),
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Generate the target views. reference_images [R, H, W, 3], target_images [T, H, W, 3]
        (warped views, holes anything: they are painted black), target_masks [T, H, W] (1 = known).
        The first reference drives the CLIP context. Returns [T, H, W, 3] float32 in [0, 1]."""
        if self.unet is None:
            raise RuntimeError("this pipeline was freed; load it again with See3DPipeline.from_pretrained")
        refs, targets = _to_pixels(reference_images, "reference_images"), _to_pixels(target_images, "target_images")
        masks = np.asarray(target_masks)
        if len(refs) < 1:
            raise ValueError("reference_images: at least one reference view is needed")
        if refs.shape[1:] != targets.shape[1:]:
            raise ValueError(f"reference_images {tuple(refs.shape)} and target_images {tuple(targets.shape)} differ in size")
        if masks.shape != (targets.shape[0],) + tuple(targets.shape[2:]):
            raise ValueError(f"target_masks: expected shape {(targets.shape[0],) + tuple(targets.shape[2:])}, got {masks.shape}")
        h, w = refs.shape[2:]
        if h % self.vae_factor or w % self.vae_factor:
            raise ValueError(f"images: height and width must be multiples of {self.vae_factor}, got {h}x{w}")
        n_ref, n_tgt = len(refs), len(targets)
        pixel_masks = torch.cat([torch.ones(n_ref, 1, h, w), torch.from_numpy((masks > 0.5).astype(np.float32))[:, None]])
        pixels = fill_holes(torch.cat([refs, targets]) * 2 - 1, pixel_masks)  # holes black, as in training

        generator = torch.Generator().manual_seed(int(seed))
        context = self.context(refs[:1])
        latents = self.encode(pixels, generator)[None]  # [1, V, C, h, w]
        latent_masks = resize_masks_nearest(pixel_masks, h // self.vae_factor, w // self.vae_factor)[None].to(self.device, self.dtype)
        is_reference = torch.tensor([[True] * n_ref + [False] * n_tgt], device=self.device)
        noise = SamplerNoise.draw(generator, settings.num_inference_steps, latents.shape)
        noise = SamplerNoise(*(n.to(self.device, self.dtype) for n in (noise.initial, noise.condition, noise.step)))
        sampler = DDIMConfig.from_scheduler(self.scheduler, num_inference_steps=settings.num_inference_steps,
                                            guidance_scale=settings.guidance_scale)
        final = sample(self._model_fn(settings.num_inference_steps, progress), self.scheduler, latents, latent_masks,
                       is_reference, noise, context, sampler, settings.condition)
        images = self.decode(final[0, n_ref:])
        return images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)

    def _model_fn(self, num_steps: int, progress):
        with_condition = self.unet.config.in_channels == 2 * self.latent_channels + 1
        calls = [0]

        def model_fn(x_t, condition, mask, t, context):
            inputs = [x_t, condition, mask] if with_condition else [x_t, mask]
            out = self.unet(torch.cat(inputs, dim=2).to(self.dtype), t, context)
            calls[0] += 1
            if progress is not None:
                progress(calls[0], num_steps)
            return out[:, :, : self.latent_channels].to(x_t.dtype)  # only the first latent channels are used

        return model_fn


def upscale_inputs(reference_images: np.ndarray, generated: np.ndarray, factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The SR stage's inputs: references and base outputs resized `factor`x (bicubic)."""
    def up(images):
        t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        return F.interpolate(t, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    return up(reference_images), up(generated)


def generate_with_super_resolution(root: str | Path, reference_images: np.ndarray, target_images: np.ndarray,
                                   target_masks: np.ndarray, *, variant: str = "sparse", seed: int = 0,
                                   device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None,
                                   base: SamplingSettings = SamplingSettings.base(),
                                   sr: SamplingSettings = SamplingSettings.super_resolution()) -> tuple[np.ndarray, np.ndarray]:
    """Base generation at the input size, then the SR model at 2x. The base models are freed
    before the SR UNet is loaded. Returns (base [T, H, W, 3], super-resolved [T, 2H, 2W, 3])."""
    pipe = See3DPipeline.from_pretrained(root, variant=variant, device=device, torch_dtype=torch_dtype)
    generated = pipe(reference_images, target_images, target_masks, seed=seed, settings=base)
    pipe.free()
    del pipe
    _release_memory()
    refs_2x, generated_2x = upscale_inputs(reference_images, generated)
    masks_2x = np.repeat(np.repeat(np.asarray(target_masks), 2, axis=1), 2, axis=2)
    sr_pipe = See3DPipeline.from_pretrained(root, variant="SR", device=device, torch_dtype=torch_dtype)
    upscaled = sr_pipe(refs_2x, generated_2x, masks_2x, seed=seed, settings=sr)
    sr_pipe.free()
    return generated, upscaled


def sorted_image_files(folder: str | Path) -> list[Path]:
    """Image files of a folder in name order (the released code used an unsorted glob although
    the first reference drives the CLIP context)."""
    folder = _require(Path(folder), "image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
    if not files:
        raise FileNotFoundError(f"no images (.png, .jpg, .jpeg, .webp, .bmp) in {folder}")
    return files


__all__ = [
    "ClipPreprocess",
    "SamplingSettings",
    "See3DPipeline",
    "check_release_folder",
    "empty_prompt_embedding",
    "generate_with_super_resolution",
    "sorted_image_files",
    "upscale_inputs",
]
