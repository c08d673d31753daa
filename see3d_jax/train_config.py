"""Training configurations: one small dataclass, three named presets, `key=value` overrides.

`python -m see3d_jax.train --config small ... steps=2000 learning_rate=3e-4 unet.model_channels=32
mesh_fsdp=2` : a top-level field is set by its name, a UNet field by `unet.<name>`, a visual
condition field by `condition.<name>`. Values are parsed as JSON when they can be
(`true`, `[1, 2]`, `3e-4`), else taken as strings.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from see3d_core import unet_config
from see3d_core.dataclass_json import from_json_dict, to_json_dict
from see3d_core.diffusion import ConditionConfig
from see3d_core.released_layout import UNET_VARIANTS
from see3d_core.unet_config import UNetConfig
from see3d_jax.attention import check_implementation
from see3d_jax.sharding import DEFAULT_RULES, LogicalRules


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    unet: UNetConfig = dataclasses.field(default_factory=unet_config.small)
    condition: ConditionConfig = dataclasses.field(default_factory=ConditionConfig)  # `condition.masks.<field>` for the masks
    # data
    num_views: int = 4  # frames drawn at random from each clip (references + targets)
    batch_size: int = 8  # global samples (clips) per optimizer step
    grad_accum_steps: int = 1  # the batch is split into this many micro-batches
    cache_frames: bool = True  # keep decoded, resized frames in memory (small datasets)
    num_workers: int = 0  # grain worker processes (0: read in the main process)
    vae: str | None = None  # latent models: a Flax VAE checkpoint folder (see3d_jax.vae)
    vae_dtype: str = "float32"  # the VAE encoder's compute dtype: "float32" or "bfloat16"
    # latent models: encode every frame once before training (WORKDIR/latent_cache) and use the
    # stored latents as x0; the condition's warped images (new holes every step) are still encoded
    cache_latents: bool = False
    # where the cache is (e.g. made beforehand by `python -m see3d_jax.encode_latents`); None: WORKDIR/latent_cache
    latent_dir: str | None = None
    context: str | None = None  # .npy [T, context_dim] context (e.g. the empty-prompt embedding); zeros if None
    # pretrained weights (see3d_jax.pretrained): a released See3D folder (its UNet init_from_variant), a model
    # folder (torch or Flax) or an SD-2.1 / MVDream LDM .safetensors (4 input channels: the new ones start at
    # zero); weights only (fresh optimizer), ignored when the run resumes from its own checkpoint
    init_from: str | None = None
    init_from_variant: str = "sparse"
    # optimisation
    steps: int = 1000
    learning_rate: float = 2e-4
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1  # cosine decay ends at this fraction of the peak
    weight_decay: float = 0.01
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.999
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (5 in the paper); None: plain MSE
    hole_loss_weight: float = 1.0  # weight of hole pixels (mask 0) of target views relative to known ones
    seed: int = 0
    # numerics and layout
    compute_dtype: str = "float32"  # or "bfloat16"; parameters are always float32
    remat: str = "none"  # see see3d_jax.unet.REMAT_POLICIES
    # see3d_jax.attention.IMPLEMENTATIONS; "auto": cuDNN flash (GPU), Pallas (TPU), blockwise (elsewhere)
    attention_implementation: str = "auto"
    mesh_data: int = -1  # -1: all devices not used by fsdp/tensor
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    sharding_rules: LogicalRules = DEFAULT_RULES
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    # at the end also write WORKDIR/export: step, params and EMA without the optimizer state, sharded
    # (see3d_jax.checkpointing.export_checkpoint)
    export_checkpoint: bool = False
    tensorboard: bool = True
    peak_tflops_per_device: float | None = None  # for MFU / HFU (README: the formulas); None: not reported
    prefetch_batches: int = 2  # global batches assembled and put on devices ahead of the step by a thread (0: inline)
    compilation_cache_dir: str | None = None  # JAX's persistent compilation cache (restarts skip compiling)
    time_limit_minutes: float | None = None  # stop (checkpoint + EMA export) after this much training time

    def __post_init__(self):
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"TrainConfig: batch_size {self.batch_size} is not divisible by grad_accum_steps {self.grad_accum_steps}")
        if self.num_views < 2:
            raise ValueError(f"TrainConfig.num_views must be >= 2 (a reference and a target), got {self.num_views}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ValueError(f"TrainConfig.min_snr_gamma must be > 0 or None, got {self.min_snr_gamma}")
        if self.cache_latents and (self.unet.pixel_space or self.vae is None):
            raise ValueError("TrainConfig.cache_latents needs a latent model (unet.pixel_space=false) and vae=FOLDER")
        if self.latent_dir is not None and not self.cache_latents:
            raise ValueError("TrainConfig.latent_dir is the latent cache's directory: it needs cache_latents=true")
        if self.hole_loss_weight < 0:
            raise ValueError(f"TrainConfig.hole_loss_weight must be >= 0, got {self.hole_loss_weight}")
        check_implementation(self.attention_implementation, "TrainConfig.attention_implementation")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"TrainConfig.compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.prefetch_batches < 0:
            raise ValueError(f"TrainConfig.prefetch_batches must be >= 0, got {self.prefetch_batches}")
        if self.init_from_variant not in UNET_VARIANTS:
            raise ValueError(f"TrainConfig.init_from_variant must be one of {UNET_VARIANTS}, got {self.init_from_variant!r}")
        if self.vae_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"TrainConfig.vae_dtype must be 'float32' or 'bfloat16', got {self.vae_dtype!r}")

    @property
    def image_size(self) -> int:
        """Training image size in pixels (latent models: 8x the latent size of the UNet)."""
        return self.unet.sample_size if self.unet.pixel_space else 8 * self.unet.sample_size

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "train config") -> "TrainConfig":
        return from_json_dict(cls, d, source)


def tiny() -> TrainConfig:
    """Tests: the tiny pixel-space UNet on 16x16 views."""
    return TrainConfig(
        unet=unet_config.tiny(), num_views=3, batch_size=4, steps=50, learning_rate=1e-3, warmup_steps=5,
        log_every=5, checkpoint_every=25, ema_decay=0.99,
    )


def small() -> TrainConfig:
    """CPU experiments: the small pixel-space UNet on 32x32 views (issue 5's recipe: Min-SNR-5,
    hole pixels x2, lr 1e-3; ~2,350 steps in 28 minutes on 4 XLA CPU devices of a 2-core
    machine, `XLA_FLAGS=--xla_force_host_platform_device_count=4`). The batch of 8 divides over
    1, 2, 4 or 8 devices. The demo's model has its own recipe file, `see3d_jax/configs/demo.py`."""
    return TrainConfig(
        unet=unet_config.small(), num_views=4, batch_size=8, steps=2350, learning_rate=1e-3, warmup_steps=50,
        min_snr_gamma=5.0, hole_loss_weight=2.0,
    )


def sd21() -> TrainConfig:
    """Fine-tuning the released architecture on an accelerator mesh (latents of 512x512 views)."""
    return TrainConfig(
        unet=unet_config.sd21(), num_views=4, batch_size=32, steps=100_000, learning_rate=5e-5, warmup_steps=1000,
        compute_dtype="bfloat16", remat="dots_no_batch", mesh_fsdp=-1, mesh_data=1, checkpoint_every=1000,
        final_lr_fraction=1.0, cache_frames=False, num_workers=8, vae_dtype="bfloat16",
    )


PRESETS = {"tiny": tiny, "small": small, "sd21": sd21}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply `key=value` overrides (`unet.<field>` and `condition.<field>` reach the nested configs)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {"unet": {}, "condition": {}}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        value = _parse_value(text)
        if "." in key:
            group, name = key.split(".", 1)
            if group not in nested:
                raise ValueError(f"override {item!r}: unknown group {group!r} (use unet.<field> or condition.<field>)")
            if group == "condition" and name.startswith("masks."):  # condition.masks.<field>
                field = name.split(".", 1)[1]
                masks = nested["condition"].get("masks", config.condition.masks)
                if field not in {f.name for f in dataclasses.fields(masks)}:
                    raise ValueError(f"override {item!r}: condition.masks has no field {field!r}")
                nested["condition"]["masks"] = dataclasses.replace(masks, **{field: value})
                continue
            known = {f.name for f in dataclasses.fields(type(getattr(config, group)))}
            if name not in known:
                raise ValueError(f"override {item!r}: {group} has no field {name!r} (known: {sorted(known)})")
            nested[group][name] = value
        elif key in fields and key not in nested:
            top[key] = value
        else:
            raise ValueError(f"override {item!r}: TrainConfig has no field {key!r} (known: {sorted(fields)})")
    if nested["unet"]:
        top["unet"] = config.unet.replace(**nested["unet"])
    if nested["condition"]:
        top["condition"] = dataclasses.replace(config.condition, **nested["condition"])
    return dataclasses.replace(config, **top)


def preset(name: str, overrides: Sequence[str] = ()) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown training config {name!r}; choose one of {sorted(PRESETS)}")
    return apply_overrides(PRESETS[name](), overrides)


RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def load_recipe(spec: str) -> ModuleType:
    """A recipe module: `see3d_jax/configs/<spec>.py` by name, or any `.py` file by path; it
    defines `get_config() -> TrainConfig` (and `DATA` when it makes its own dataset)."""
    path = Path(spec) if spec.endswith(".py") else RECIPES_DIR / f"{spec}.py"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.py") if p.stem != "__init__")
        raise ValueError(f"--config {spec}: no such recipe file {path} (presets: {sorted(PRESETS)}; recipes: {known})")
    module_spec = importlib.util.spec_from_file_location(f"see3d_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"--config {path}: a recipe file must define get_config() returning a TrainConfig")
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """`--config`: a preset name (tiny, small, sd21), a recipe name in `see3d_jax/configs`
    (e.g. demo) or the path of a recipe `.py` file; then the `key=value` overrides."""
    if spec in PRESETS:
        return preset(spec, overrides)
    config = load_recipe(spec).get_config()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"--config {spec}: get_config() returned {type(config).__name__}, expected TrainConfig")
    return apply_overrides(config, overrides)
