"""The See3D pipeline on the released weights (torch): warped views + masks in, generated views out.

Loads a folder in the released layout (`see3d_core.released_layout`), local or by Hugging Face
repository id (`see3d_core.weights.resolve_weights`), and runs the inference of SPEC.md
section 2 exactly as the authors' released code does (`baaivision/See3D`:
`pipeline_mvd_warp_mix_classifier*.py`, `mv_diffusion*.py`, `inference.py`):

- scheduler: `scheduler/scheduler_config.json` with steps_offset forced to 1, clip_sample off
  and zero terminal SNR on (their pipeline's constructor and `mv_diffusion.py`). Timesteps: when
  the file holds `timestep_scaling: "trailing"` the authors' own list 999, 999 - r, ... > 0
  (r = 999 // n: 53 steps for n = 50, 31 for SR's 30), each step still moving by 1000 // n;
  otherwise the scheduler's own timesteps from the file's `timestep_spacing`. When the key is
  absent the authors' code raises (AttributeError); the kit uses the scheduler's own timesteps
  and says so (`See3DPipeline.timesteps_note`);
- context = text embedding of the empty prompt "" + 0.2 x the CLIP-H `image_embeds` of the
  *first* reference view broadcast to all tokens, the CLIP input prepared by transformers'
  `CLIPImageProcessor` (PIL resize of uint8 pixels) from the image in [0, 1];
- precision as the authors run it on a GPU: text encoder, UNet and VAE in `torch_dtype`
  (float16 on CUDA), CLIP vision in float32 (its pixels rounded to `torch_dtype` first);
- condition images are VAE-encoded exactly as given (posterior sampled): hole pixels are not
  repainted; the masks go only into the mask channel (nearest-resized to latent size);
- the UNet input is `cat([x_t, V, M])` (9 channels; the 5-channel `cat([x_t, M])` variant is
  supported too); only the first latent-channel outputs are used; the visual condition
  (t' = t // 5, the piecewise W, fresh noise every step), guidance on the condition
  `(1 + s) cond - s uncond`, references imposed on x_t every step and DDIM are
  `see3d_torch.sampling.sample`;
- the 2x super-resolution stage (`unet/SR`, 30 steps, guidance 1, the clean condition) over
  groups of views as `inference.py` runs it (`released_sr_groups`), on inputs prepared as theirs
  (uint8 images, PIL bicubic 2x, masks thresholded at 0.9).

Deliberate differences from the released code (README "Released weights"): seeded (their seed
is never passed), references in name order (theirs: unsorted glob, although the first drives
CLIP), the base model freed before SR, and SR masks aligned with their views (theirs are
shifted by the number of references).

Arrays are numpy: images [N, H, W, 3] float in [0, 1], masks [N, H, W] with 1 = known pixel
(valid warp), 0 = hole. H and W must be multiples of 8 (512 for the released base model).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from see3d_core.diffusion import DDIMConfig, num_sampler_steps
from see3d_core.images import to_uint8
from see3d_core.released_layout import CLIP_VISION_DIR, CONFIG_FILE, UNET_VARIANTS, WEIGHTS_FILE, released_unet_dir
from see3d_core.weights import RELEASED_SEE3D_REPO, WeightsError, resolve_weights, safetensors_header
from see3d_torch.condition import RELEASED, ConditionConfig, resize_masks_nearest
from see3d_torch.sampling import SamplerNoise, sample
from see3d_torch.unet import MultiViewUNet

LOG = logging.getLogger(__name__)
CLIP_IMAGE_WEIGHT = 0.2  # context = empty-prompt embedding + 0.2 x CLIP image embedding
SR_CONDITION = ConditionConfig(variant="masked")  # the SR model sees the clean latents of the base views
MASK_FILE_THRESHOLD = 0.9  # mask images read from disk: known where value / 255 > 0.9 (inference.py)


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
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def released_allow_patterns(variant: str) -> list[str]:
    """The files of the released repository one variant needs (not the other two UNets)."""
    unet = released_unet_dir(".", variant).as_posix().lstrip("./")
    shared = ["model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/*", "vae/*", f"{CLIP_VISION_DIR}/*", f"{unet}/*"]
    return shared + [f"*/{p}" for p in shared]  # the repository may hold the folder one level down (MVD_weights/)


def resolve_release(name_or_path: str | Path = RELEASED_SEE3D_REPO, variant: str = "sparse", offline: bool | None = None) -> Path:
    """The local released folder for a path or a Hugging Face repository id (default: the
    authors' repository), fetching only the files `variant` needs."""
    if variant not in UNET_VARIANTS:
        raise ValueError(f"variant must be one of {UNET_VARIANTS}, got {variant!r}")
    return resolve_weights(name_or_path, allow_patterns=released_allow_patterns(variant), offline=offline,
                           marker="model_index.json", argument="weights")


def check_release_folder(root: str | Path, variant: str) -> Path:
    """Raise FileNotFoundError naming the first file of the released layout that is missing,
    and WeightsError naming a weights file that is corrupt or truncated (a partial download)."""
    root = Path(root)
    _require(root, "See3D checkpoint folder")
    needed = [
        (root / "scheduler" / "scheduler_config.json", "scheduler config"),
        (root / "tokenizer", "tokenizer folder"),
        (root / "text_encoder" / "config.json", "text encoder config"),
        (root / "vae" / "config.json", "VAE config"),
        (root / "vae" / WEIGHTS_FILE, "VAE weights"),
        (root / CLIP_VISION_DIR / "config.json", "CLIP image encoder config"),
        (root / CLIP_VISION_DIR / "preprocessor_config.json", "CLIP preprocessor config"),
        (released_unet_dir(root, variant) / CONFIG_FILE, f"UNet ({variant}) config"),
        (released_unet_dir(root, variant) / WEIGHTS_FILE, f"UNet ({variant}) weights"),
    ]
    for path, what in needed:
        _require(path, what)
    for folder, what in ((root / "text_encoder", "text encoder"), (root / CLIP_VISION_DIR, "CLIP image encoder")):
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{what} weights not found: {folder}/*.safetensors")
    for folder in (root / "text_encoder", root / CLIP_VISION_DIR, root / "vae", released_unet_dir(root, variant)):
        for weights in sorted(folder.glob("*.safetensors")):
            safetensors_header(weights)  # a truncated file is named here, not deep inside a library
    return root


def _load_component(what: str, folder: Path, load: Callable):
    """Run a library loader; its exceptions become one WeightsError naming the folder."""
    try:
        return load()
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        if isinstance(e, (WeightsError, FileNotFoundError)):
            raise
        raise WeightsError(f"{folder}: the {what} could not be loaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def released_scheduler(scheduler_config: dict):
    """(DDIMScheduler, whether to use the authors' timestep list, note) as the authors build theirs from the released
    `scheduler_config.json`: steps_offset 1 and clip_sample off (their pipeline's constructor),
    zero terminal SNR (`mv_diffusion.py`); timesteps from `timestep_scaling` (module docstring)."""
    from diffusers import DDIMScheduler

    config = dict(scheduler_config)
    scaling = config.get("timestep_scaling")
    config.update(steps_offset=1, clip_sample=False, rescale_betas_zero_snr=True)
    config.pop("timestep_scaling", None)
    scheduler = DDIMScheduler.from_config(config)
    if scaling == "trailing":
        note = "the authors' trailing list (scheduler_config.json: timestep_scaling = 'trailing')"
    elif scaling is not None:
        note = f"the scheduler's own {scheduler.config.timestep_spacing!r} timesteps (timestep_scaling = {scaling!r})"
    else:
        note = (f"the scheduler's own {scheduler.config.timestep_spacing!r} timesteps: scheduler_config.json has no "
                "'timestep_scaling' key (the authors' code raises AttributeError there)")
        LOG.warning("See3D pipeline: %s", note)
    return scheduler, scaling == "trailing", note


def clip_image_processor(folder: Path):
    """transformers' PIL-based CLIP processor from `preprocessor_config.json` (the class the
    authors' transformers 4.x `CLIPImageProcessor` is; transformers 5 names it ...Pil)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as Processor
    return Processor.from_pretrained(folder, local_files_only=True)


def empty_prompt_embedding(root: str | Path, device, dtype) -> torch.Tensor:
    """Text-encoder hidden states of the empty prompt "" [1, 77, D], the encoder run in `dtype`
    (float16 on a GPU, as the authors run it); the encoder is freed after."""
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(root)
    tokenizer = _load_component("tokenizer", root / "tokenizer",
                                lambda: CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True))
    encoder = _load_component("text encoder", root / "text_encoder",
                              lambda: CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True, dtype=dtype))
    encoder = encoder.to(device)
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
    """Released See3D inference. Build with `from_pretrained(root_or_repo_id, variant)`; call with views."""

    def __init__(self, unet: MultiViewUNet, vae, scheduler, empty_prompt: torch.Tensor, image_encoder, clip_processor,
                 device: torch.device, dtype: torch.dtype, vae_slice: int = 1, released_timesteps: bool = False,
                 timesteps_note: str = ""):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.empty_prompt, self.image_encoder, self.clip_processor = empty_prompt, image_encoder, clip_processor
        self.device, self.dtype, self.vae_slice = device, dtype, int(vae_slice)
        self.released_timesteps, self.timesteps_note = bool(released_timesteps), timesteps_note
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
    def from_pretrained(cls, root: str | Path = RELEASED_SEE3D_REPO, variant: str = "sparse", device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, vae_slice: int = 1, offline: bool | None = None) -> "See3DPipeline":
        """Load the released folder, a local path or a Hugging Face repository id (downloaded
        into the cache on first use; `offline` or HF_HUB_OFFLINE=1: the cache only).
        `variant`: single, sparse or SR. `torch_dtype` defaults to float16 on CUDA, float32 elsewhere."""
        from diffusers import AutoencoderKL
        from transformers import CLIPVisionModelWithProjection

        root = check_release_folder(resolve_release(root, variant, offline), variant)
        device = torch.device(device)
        dtype = torch_dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        scheduler_file = root / "scheduler" / "scheduler_config.json"
        try:
            scheduler_config = json.loads(scheduler_file.read_text())
        except json.JSONDecodeError as e:
            raise WeightsError(f"{scheduler_file}: not valid JSON ({e})") from e
        scheduler, released_timesteps, note = released_scheduler(scheduler_config)
        empty_prompt = empty_prompt_embedding(root, device, dtype)
        clip_dir = root / CLIP_VISION_DIR
        image_encoder = _load_component("CLIP image encoder", clip_dir, lambda: CLIPVisionModelWithProjection.from_pretrained(
            clip_dir, local_files_only=True, dtype=torch.float32)).to(device).eval()  # float32, as the authors load it
        clip_processor = _load_component("CLIP preprocessor", clip_dir, lambda: clip_image_processor(clip_dir))
        vae = _load_component("VAE", root / "vae", lambda: AutoencoderKL.from_pretrained(
            root / "vae", local_files_only=True, torch_dtype=dtype)).to(device).eval()
        unet = MultiViewUNet.from_pretrained(released_unet_dir(root, variant), torch_dtype=dtype, device="cpu").to(device)
        return cls(unet, vae, scheduler, empty_prompt, image_encoder, clip_processor, device, dtype, vae_slice,
                   released_timesteps, note)

    def free(self) -> None:
        """Drop every model (and the cached CUDA memory) so the next stage fits."""
        self.unet = self.vae = self.image_encoder = None
        _release_memory()

    # ------------------------------------------------------------------ stages

    def clip_pixels(self, first_reference: torch.Tensor) -> torch.Tensor:
        """CLIP input of the first reference [1, 3, H, W] in [0, 1] (transformers' processor, as the authors)."""
        pixels = self.clip_processor(first_reference.float().cpu(), return_tensors="pt", do_rescale=False).pixel_values
        return pixels.to(self.device, self.dtype)  # the authors cast to the text encoder's dtype

    def context(self, first_reference: torch.Tensor) -> torch.Tensor:
        """Empty-prompt embedding + 0.2 x CLIP image_embeds of the first reference [1, 3, H, W] in [0, 1]."""
        with torch.no_grad():
            image_embeds = self.image_encoder(pixel_values=self.clip_pixels(first_reference)).image_embeds  # [1, D] float32
        return self.empty_prompt + (CLIP_IMAGE_WEIGHT * image_embeds[:, None, :]).to(self.dtype)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """pixels [N, 3, H, W] in [-1, 1] -> scaled latents [N, C, h, w] (posterior samples), `vae_slice` views at a time."""
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

    def num_steps(self, settings: SamplingSettings) -> int:
        """Model evaluations of one call (53 for the released base schedule with the authors' list)."""
        return num_sampler_steps(self.sampler_config(settings), self.scheduler.config.num_train_timesteps)

    @torch.no_grad()
    def time_one_step(self, num_views: int, image_size: tuple[int, int], guided: bool = True) -> float:
        """Seconds of one UNet evaluation on `num_views` views (both guidance branches), measured."""
        h, w = (s // self.vae_factor for s in image_size)
        batch = 2 if guided else 1
        x = torch.zeros(batch, num_views, self.unet.config.in_channels, h, w, device=self.device, dtype=self.dtype)
        t = torch.full((batch,), 999, device=self.device, dtype=torch.long)
        context = self.empty_prompt.expand(batch, -1, -1)
        start = time.perf_counter()
        self.unet(x, t, context)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def sampler_config(self, settings: SamplingSettings) -> DDIMConfig:
        return DDIMConfig.from_scheduler(self.scheduler, num_inference_steps=settings.num_inference_steps,
                                         guidance_scale=settings.guidance_scale, released_timesteps=self.released_timesteps)

    @torch.no_grad()
    def __call__(self, reference_images: np.ndarray, target_images: np.ndarray, target_masks: np.ndarray, *,
                 seed: int = 0, settings: SamplingSettings = SamplingSettings.base(),
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Generate the target views. reference_images [R, H, W, 3], target_images [T, H, W, 3]
        (warped views, encoded as given: hole pixels are not repainted), target_masks [T, H, W]
        (1 = known; > 0.5 counts as known). The first reference drives the CLIP context.
        Returns [T, H, W, 3] float32 in [0, 1]."""
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
        pixels = torch.cat([refs, targets]) * 2 - 1  # encoded as given, as the authors do

        generator = torch.Generator().manual_seed(int(seed))
        context = self.context(refs[:1])
        latents = self.encode(pixels, generator)[None]  # [1, V, C, h, w]
        latent_masks = resize_masks_nearest(pixel_masks, h // self.vae_factor, w // self.vae_factor)[None].to(self.device, self.dtype)
        is_reference = torch.tensor([[True] * n_ref + [False] * n_tgt], device=self.device)
        sampler = self.sampler_config(settings)
        steps = num_sampler_steps(sampler, self.scheduler.config.num_train_timesteps)
        noise = SamplerNoise.draw(generator, steps, latents.shape)
        noise = SamplerNoise(*(n.to(self.device, self.dtype) for n in (noise.initial, noise.condition, noise.step)))
        final = sample(self._model_fn(steps, progress), self.scheduler, latents, latent_masks,
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


# --- inputs as the authors' inference.py prepares them ------------------------------------------------

def resize_images_pil(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [N, size_h, size_w, 3] floats in [0, 1] with PIL's default
    (bicubic) resize, as `inference.py`'s `img.resize((width, height))`."""
    height, width = size
    out = [np.asarray(Image.fromarray(im).resize((width, height)), np.float32) for im in np.asarray(images, np.uint8)]
    return np.stack(out) / np.float32(255)  # their u / 127.5 - 1 in [-1, 1], seen in [0, 1] (equal up to float rounding)


def resize_masks_pil(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks [N, H, W] (1 = known) or uint8 mask images -> [N, size_h, size_w] in {0, 1}: the
    mask image resized by PIL (bicubic) and thresholded at value / 255 > 0.9 (`inference.py`)."""
    masks = np.asarray(masks)
    images = masks if masks.dtype == np.uint8 else to_uint8(masks)
    height, width = size
    out = [np.asarray(Image.fromarray(m, mode="L").resize((width, height)), np.float32) / 255 for m in images]
    return (np.stack(out) > MASK_FILE_THRESHOLD).astype(np.float32)


def read_mask_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask image from disk (any mode, converted to L) -> [H, W] in {0, 1}, known where
    value / 255 > 0.9, resized first (PIL bicubic) when `size` = (height, width) is given."""
    path = Path(path)
    try:
        image = Image.open(path).convert("L")
    except OSError as e:
        raise ValueError(f"mask image {path}: cannot be read ({e})") from e
    array = np.asarray(image, np.uint8)[None]
    return resize_masks_pil(array, size or array.shape[1:])[0]


@dataclasses.dataclass(frozen=True)
class SRGroup:
    """One call of the SR stage: `carried` target indices whose SR outputs re-enter as extra
    (non-reference) views for consistency, then the new `targets`."""

    carried: tuple[int, ...]
    targets: tuple[int, ...]


def released_sr_groups(num_references: int, num_targets: int) -> list[SRGroup]:
    """The SR stage's groups as `inference.py` forms them: groups of (R + T + 3) // 2 targets;
    every group after the first also carries the SR outputs of the middle and the last target
    done so far. Only the new targets' outputs are kept."""
    size = (num_references + num_targets + 3) // 2
    groups = []
    for start in range(0, num_targets, size):
        carried = () if start == 0 else (start // 2, start - 1)
        groups.append(SRGroup(carried, tuple(range(start, min(start + size, num_targets)))))
    return groups


def super_resolution_inputs(reference_images: np.ndarray, generated: np.ndarray, target_masks: np.ndarray, factor: int = 2):
    """The SR stage's inputs as `inference.py` makes them: images through uint8 (as the saved
    PIL outputs) resized `factor`x by PIL (bicubic), masks resized the same way and thresholded
    at 0.9. Returns (references, generated, masks) at `factor`x."""
    h, w = np.asarray(generated).shape[1:3]
    size = (h * factor, w * factor)
    return (resize_images_pil(to_uint8(reference_images), size), resize_images_pil(to_uint8(generated), size),
            resize_masks_pil(target_masks, size))


def super_resolve(pipe: See3DPipeline, references_2x: np.ndarray, generated_2x: np.ndarray, masks_2x: np.ndarray, *,
                  seed: int = 0, settings: SamplingSettings = SamplingSettings.super_resolution(), grouping: str = "released",
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Run the SR model over the views: `grouping="released"` in the groups of `released_sr_groups`
    (carried views enter as their SR outputs through uint8, as the authors' PIL images);
    "single": one call with every view (multi-view attention over all of them: not the same
    result, and more memory)."""
    if grouping not in ("released", "single"):
        raise ValueError(f"grouping: expected 'released' or 'single', got {grouping!r}")
    groups = [SRGroup((), tuple(range(len(generated_2x))))] if grouping == "single" else released_sr_groups(len(references_2x), len(generated_2x))
    outputs: dict[int, np.ndarray] = {}
    for group in groups:
        carried = list(group.carried)  # SR outputs re-enter through uint8, as the authors' saved PIL images
        carried_images = [to_uint8(outputs[i]).astype(np.float32) / np.float32(255) for i in carried]
        images = np.stack(carried_images + list(generated_2x[list(group.targets)]))
        result = pipe(references_2x, images, masks_2x[carried + list(group.targets)], seed=seed, settings=settings, progress=progress)
        for i, image in zip(group.targets, result[len(carried):]):
            outputs[i] = image
    return np.stack([outputs[i] for i in range(len(generated_2x))])


def generate_with_super_resolution(root: str | Path, reference_images: np.ndarray, target_images: np.ndarray,
                                   target_masks: np.ndarray, *, variant: str = "sparse", seed: int = 0,
                                   device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None,
                                   base: SamplingSettings = SamplingSettings.base(),
                                   sr: SamplingSettings = SamplingSettings.super_resolution(),
                                   sr_grouping: str = "released", offline: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Base generation at the input size, then the SR model at 2x over groups of views
    (`super_resolve`). The base models are freed before the SR UNet is loaded. Returns
    (base [T, H, W, 3], super-resolved [T, 2H, 2W, 3])."""
    pipe = See3DPipeline.from_pretrained(root, variant=variant, device=device, torch_dtype=torch_dtype, offline=offline)
    generated = pipe(reference_images, target_images, target_masks, seed=seed, settings=base)
    pipe.free()
    del pipe
    _release_memory()
    refs_2x, generated_2x, masks_2x = super_resolution_inputs(reference_images, generated, target_masks)
    sr_pipe = See3DPipeline.from_pretrained(root, variant="SR", device=device, torch_dtype=torch_dtype, offline=offline)
    upscaled = super_resolve(sr_pipe, refs_2x, generated_2x, masks_2x, seed=seed, settings=sr, grouping=sr_grouping)
    sr_pipe.free()
    return generated, upscaled


def load_released_inputs(reference_dir: str | Path, warp_dir: str | Path, size: tuple[int, int] = (512, 512)):
    """Inputs in the layout of the authors' example data and `inference.py`: reference images in
    `reference_dir`, `warp_*` images and their `mask_*` twins in `warp_dir`. Read as they read
    them (PIL, resized with PIL's default bicubic to `size` = (height, width); masks known where
    value / 255 > 0.9), references in name order (theirs: unsorted glob). Returns (references
    [R, H, W, 3], warps [T, H, W, 3], masks [T, H, W], warp names)."""
    def read(path: Path) -> np.ndarray:
        try:
            image = Image.open(path).convert("RGB")
        except OSError as e:
            raise ValueError(f"image {path}: cannot be read ({e})") from e
        return np.asarray(image.resize((size[1], size[0])), np.uint8)

    references = [read(p) for p in sorted_image_files(reference_dir)]
    warp_dir = _require(Path(warp_dir), "warp folder")
    warps = sorted(p for p in warp_dir.glob("warp_*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
    if not warps:
        raise FileNotFoundError(f"no warp_* images in {warp_dir} (expected warp_XXX.png with mask_XXX.png beside)")
    masks = []
    for w in warps:
        mask = w.with_name(w.name.replace("warp", "mask", 1))
        if not mask.is_file():
            raise FileNotFoundError(f"mask for {w.name} not found: {mask}")
        masks.append(read_mask_image(mask, size))
    to01 = lambda images: np.stack(images).astype(np.float32) / np.float32(255)  # noqa: E731
    return to01(references), to01([read(w) for w in warps]), np.stack(masks), [w.stem for w in warps]


def sorted_image_files(folder: str | Path) -> list[Path]:
    """Image files of a folder in name order (the released code used an unsorted glob although
    the first reference drives the CLIP context)."""
    folder = _require(Path(folder), "image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
    if not files:
        raise FileNotFoundError(f"no images (.png, .jpg, .jpeg, .webp, .bmp) in {folder}")
    return files


__all__ = [
    "SRGroup",
    "SamplingSettings",
    "See3DPipeline",
    "check_release_folder",
    "empty_prompt_embedding",
    "generate_with_super_resolution",
    "load_released_inputs",
    "read_mask_image",
    "released_scheduler",
    "released_sr_groups",
    "resolve_release",
    "sorted_image_files",
    "super_resolution_inputs",
    "super_resolve",
]
