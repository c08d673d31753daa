"""Checkpoint folders (framework-free): the kit's one model folder, the released See3D folder,
the UNet config dialects, and `detect_checkpoint_format` that tells them apart.

A model folder (a UNet or a VAE, written by either framework: `MultiViewUNet.save_pretrained`
in torch, `see3d_jax.convert.save_pretrained` in Flax; read by both `from_pretrained`s) is
diffusers' layout with torch parameter names and layouts::

    FOLDER/config.json                           `UNetConfig` fields (or diffusers' VAE config)
    FOLDER/diffusion_pytorch_model.safetensors   `WEIGHTS_FILE`

Older Flax folders (`diffusion_flax_model.safetensors` in Flax names, or an orbax `params/`)
are refused with the command that converts them (`see3d-convert upgrade`). Orbax is only for
training state (`RUN/checkpoints`).

The released layout (diffusers style, safetensors; SPEC.md section 2)::

    ROOT/model_index.json
    ROOT/scheduler/scheduler_config.json
    ROOT/tokenizer/...                      CLIP tokenizer (empty prompt only)
    ROOT/text_encoder/{config.json, model.safetensors}
    ROOT/vae/{config.json, diffusion_pytorch_model.safetensors}
    ROOT/CLIP-ViT-H-14-laion2B-s32B-b79K/   CLIP-H vision tower + preprocessor_config.json
    ROOT/unet/{single,sparse,SR}/ema-checkpoint/{config.json, diffusion_pytorch_model.safetensors}

The UNet `config.json` there is MVDream's `MultiViewUNetModel` config (`image_size`,
`model_channels`, `num_head_channels`, `camera_dim`, ...); `read_unet_config` reads it as well
as the kit's own `UNetConfig` files. Both the torch pipeline and the Flax converter use it.
"""

from __future__ import annotations

from pathlib import Path

from see3d_core.dataclass_json import read_json_object
from see3d_core.unet_config import UNetConfig

UNET_VARIANTS = ("single", "sparse", "SR")
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # of every model folder, released or ours
CONFIG_FILE = "config.json"
# the formats before the one model folder; only `see3d-convert upgrade` reads them
LEGACY_FLAX_WEIGHTS = "diffusion_flax_model.safetensors"  # Flax names and layouts (the old `RUN/ema`)
LEGACY_ORBAX_PARAMS = "params"  # an orbax checkpoint of the model's nnx.Param state
UPGRADE_COMMAND = "see3d-convert upgrade {old} NEW_FOLDER"
# the small pixel-space model `see3d demo` runs (a model folder; package data)
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "small_pixel"
CLIP_VISION_DIR = "CLIP-ViT-H-14-laion2B-s32B-b79K"
RELEASED_UNET_CLASS = "MultiViewUNetModel"


def released_unet_dir(root: str | Path, variant: str) -> Path:
    """`ROOT/unet/<variant>/ema-checkpoint` for variant in single, sparse, SR."""
    if variant not in UNET_VARIANTS:
        raise ValueError(f"unet variant must be one of {UNET_VARIANTS}, got {variant!r}")
    return Path(root) / "unet" / variant / "ema-checkpoint"


def released_unet_config(raw: dict, source: str = "config") -> tuple[UNetConfig, int | None]:
    """Translate a released MVDream-style `MultiViewUNetModel` config into (UNetConfig, camera_dim).

    `camera_dim` is not None when the checkpoint carries MVDream's (unused) camera embedding."""
    if raw.get("num_head_channels", -1) in (-1, None):
        raise ValueError(f"{source}: only configs with num_head_channels are supported (got {raw.get('num_head_channels')})")
    unsupported = {"ip_dim": 0, "num_classes": None, "use_scale_shift_norm": False, "resblock_updown": False}
    for key, default in unsupported.items():
        if raw.get(key) not in (None, default):
            raise ValueError(f"{source}: {key}={raw[key]!r} is not supported by the See3D UNet")
    try:
        fields = dict(
            in_channels=int(raw["in_channels"]),
            out_channels=int(raw["out_channels"]),
            model_channels=int(raw["model_channels"]),
            channel_mult=tuple(raw["channel_mult"]),
            num_res_blocks=int(raw["num_res_blocks"]),
            attention_resolutions=tuple(raw["attention_resolutions"]),
            num_head_channels=int(raw["num_head_channels"]),
            transformer_depth=int(raw.get("transformer_depth", 1)),
            context_dim=int(raw["context_dim"]),
        )
    except KeyError as missing:
        raise ValueError(f"{source}: missing key {missing} in the {RELEASED_UNET_CLASS} config") from None
    if "image_size" in raw:
        fields["sample_size"] = int(raw["image_size"])
    if "prediction_type" in raw:
        fields["prediction_type"] = raw["prediction_type"]
    camera_dim = raw.get("camera_dim")
    return UNetConfig(**fields), (int(camera_dim) if camera_dim is not None else None)


def read_unet_config(path: str | Path) -> tuple[UNetConfig, int | None]:
    """Read a UNet `config.json` (a folder or the file): the kit's own or the released dialect."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    raw = read_json_object(path, "UNet config")
    if raw.get("_class_name") == RELEASED_UNET_CLASS:
        return released_unet_config(raw, source=str(path))
    # the file is already parsed: build from it rather than reading it again through UNetConfig.load
    return UNetConfig.from_dict(raw, source=str(path)), None


CHECKPOINT_FORMATS = ("released", "model")


class LegacyCheckpointError(ValueError):
    """A folder in a format from before the one model folder; the message names the command."""


def legacy_checkpoint_file(folder: str | Path) -> Path | None:
    """The file or folder that marks `folder` as a legacy Flax checkpoint, or None."""
    folder = Path(folder)
    for marker in (folder / LEGACY_FLAX_WEIGHTS, folder / LEGACY_ORBAX_PARAMS):
        if marker.exists():
            return marker
    return None


def _refuse_legacy(folder: Path) -> None:
    marker = legacy_checkpoint_file(folder)
    if marker is not None and not (folder / WEIGHTS_FILE).is_file():
        raise LegacyCheckpointError(
            f"{marker}: a Flax checkpoint in the old format (before the one model folder, {CONFIG_FILE} + {WEIGHTS_FILE}); "
            f"convert it once with `{UPGRADE_COMMAND.format(old=folder)}`"
        )


def model_folder_files(folder: str | Path) -> tuple[Path, Path]:
    """(config, weights) of a model folder, after checking that both files exist. A legacy Flax
    folder gets a `LegacyCheckpointError` naming its file and the command that converts it."""
    folder = Path(folder)
    _refuse_legacy(folder)
    config, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config.is_file():
        raise FileNotFoundError(f"config not found: {config}")
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights} (a model folder holds {CONFIG_FILE} + {WEIGHTS_FILE})")
    return config, weights


def detect_checkpoint_format(folder: str | Path) -> str:
    """What a weights folder holds, from its layout: "released" (the See3D release,
    `model_index.json`) or "model" (a model folder, `config.json` + `WEIGHTS_FILE`, from either
    framework). Raises LegacyCheckpointError for an old Flax folder (naming the file and the
    command that converts it) and ValueError naming the folder and the layouts it expected."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return "released"
    _refuse_legacy(folder)
    if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return "model"
    raise ValueError(
        f"--weights {folder}: not a released See3D folder (model_index.json) nor a model folder "
        f"({CONFIG_FILE} + {WEIGHTS_FILE})"
    )
