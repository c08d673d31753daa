"""Training from pretrained weights (`TrainConfig.init_from`): read, convert, place sharded.

`init_from=` names (a local path, or a Hugging Face repository id resolved through
`see3d_core.weights.resolve_weights`):

- a released See3D folder (`model_index.json`): its UNet `init_from_variant`
  (`ROOT/unet/<variant>/ema-checkpoint`, MVDream's config dialect; the unused camera embedding
  is dropped);
- a model folder (`config.json` + `diffusion_pytorch_model.safetensors`, torch names; written
  by `see3d_torch.unet.MultiViewUNet.save_pretrained`, `see3d_jax.convert.save_pretrained` or
  the trainer's `RUN/ema` export). A Flax folder in an old format is refused with the command
  that converts it (`see3d_core.released_layout.model_folder_files`);
- an LDM UNet checkpoint: one `.safetensors` file of Stable Diffusion 2.1 or MVDream, the UNet
  under `model.diffusion_model.` (the autoencoder, text encoder and MVDream's camera embedding
  are skipped). It has no config: its tensors must have the shapes of the training UNet.

The source's UNet config must equal the training one except `sample_size`, `context_tokens`
and `prediction_type` (training choices that do not change a parameter) and `in_channels`: a
source with fewer input channels (SD-2.1 / MVDream: 4) fills the first ones of the training
model's first convolution (x_t comes first in cat([x_t, V, M])) and the new ones start at
zero, as See3D initialises from MVDream. Any other difference is an error naming the source,
the field or parameter and both values.

Tensors are read one at a time (safetensors' lazy reader), converted to the Flax layout with
`see3d_jax.convert`'s name map and placed with their NamedSharding by
`jax.make_array_from_callback`: each device receives only its shard, no device ever holds the
whole model, and a host holds one full parameter at a time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from see3d_core.released_layout import (CONFIG_FILE, UNET_VARIANTS, WEIGHTS_FILE, model_folder_files, read_unet_config,
                                        released_unet_dir)
from see3d_core.unet_config import UNetConfig
from see3d_core.weights import WeightsError, resolve_weights, safetensors_header
from see3d_jax import convert
from see3d_jax.unet import UNet

LDM_PREFIX = "model.diffusion_model."  # where SD-2.1 and MVDream checkpoints keep the UNet
FIRST_CONV = ("input_blocks", 0, 0, "kernel")  # the Flax path of the input convolution [3, 3, in, out]
# fields that are training choices, not parameters: a source may differ in them
FREE_FIELDS = ("sample_size", "context_tokens", "prediction_type")
CAMERA_KEYS = tuple(f"camera_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias"))  # MVDream's, unused


@dataclasses.dataclass(frozen=True)
class Source:
    """A pretrained UNet on disk, as `open_source` found it."""

    kind: str  # "released", "model" or "ldm"
    path: Path  # the safetensors file read
    config: UNetConfig | None  # None: an LDM checkpoint (no config)
    prefix: str = ""  # of the UNet's keys in the file
    skip: tuple[str, ...] = ()  # keys under the prefix that are deliberately not used


def open_source(init_from: str, variant: str = "sparse") -> Source:
    """Find what `init_from` holds (see the module doc); raises FileNotFoundError / WeightsError
    naming `init_from` and the layouts it expected."""
    path = Path(init_from).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"init_from={init_from}: an LDM checkpoint must be a .safetensors file (a .ckpt pickle needs "
                               "torch: save its state_dict with safetensors.torch first)")
        if not any(k.startswith(LDM_PREFIX) for k in safetensors_header(path)):
            raise WeightsError(f"init_from={init_from}: no tensor under {LDM_PREFIX!r}: not an SD-2.1 / MVDream LDM checkpoint")
        return Source("ldm", path, None, prefix=LDM_PREFIX, skip=CAMERA_KEYS)
    if variant not in UNET_VARIANTS:
        raise ValueError(f"init_from_variant must be one of {UNET_VARIANTS}, got {variant!r}")
    # a repository id fetches only what is read here: a model folder's two files, or the
    # released root's index and one UNet (not the other UNets, the VAE or the encoders)
    unet = released_unet_dir(".", variant).as_posix().lstrip("./")
    wanted = ["model_index.json", f"{unet}/*", CONFIG_FILE, WEIGHTS_FILE]
    folder = resolve_weights(init_from, argument="init_from", allow_patterns=wanted + [f"*/{p}" for p in wanted])
    nested = sorted(folder.glob("*/model_index.json"))  # a release kept one level down (MVD_weights/)
    if not (folder / "model_index.json").is_file() and not (folder / CONFIG_FILE).is_file() and len(nested) == 1:
        folder = nested[0].parent
    kind = "model"
    if (folder / "model_index.json").is_file():
        folder, kind = released_unet_dir(folder, variant), "released"
    config_file, weights = model_folder_files(folder)
    safetensors_header(weights)  # a truncated download is named here, not deep inside a read
    config, camera_dim = read_unet_config(config_file)
    return Source(kind, weights, config, skip=CAMERA_KEYS if camera_dim is not None else ())


def check_config(source: Source, config: UNetConfig) -> None:
    """Raise ValueError naming the source and every differing field unless `source.config`
    matches `config` (see the module doc); an LDM file is checked by its shapes only."""
    if source.config is None:
        return
    theirs, ours = source.config.to_dict(), config.to_dict()
    different = {k: (theirs[k], ours[k]) for k in ours if k not in FREE_FIELDS + ("in_channels",) and theirs[k] != ours[k]}
    if source.config.in_channels > config.in_channels:
        different["in_channels"] = (source.config.in_channels, config.in_channels)
    if different:
        fields = ", ".join(f"{k}: {a!r} there vs {b!r} in the training config" for k, (a, b) in different.items())
        raise ValueError(f"init_from {source.path}: the UNet config does not match the training UNet ({fields})")


def load_sharded(source: Source, config: UNetConfig, shardings: dict) -> tuple[dict, dict[str, Any]]:
    """The training parameters (a pure dict like `nnx.to_pure_dict`, every leaf a float32
    jax.Array in the matching NamedSharding of `shardings`) read from `source`, and a report
    for the log (source, format, input-channel expansion, differing free fields)."""
    check_config(source, config)
    model = nnx.eval_shape(lambda: UNet(config))
    report: dict[str, Any] = {"init_from": str(source.path), "format": source.kind}
    if source.config is not None:
        free = {k: getattr(source.config, k) for k in FREE_FIELDS if getattr(source.config, k) != getattr(config, k)}
        if free:
            report["source_differs_in"] = free
    sharding_of = flatten_dict(shardings)
    placed = {}
    for path, value in _read_flax_arrays(source, model):
        if path == FIRST_CONV and value.shape[2] < config.in_channels:
            report["expanded_input_channels"] = [value.shape[2], config.in_channels]
            new = np.zeros(value.shape[:2] + (config.in_channels - value.shape[2], value.shape[3]), value.dtype)
            value = np.concatenate([value, new], axis=2)
        placed[path] = jax.make_array_from_callback(value.shape, sharding_of[path], lambda index, v=value: v[index])
    return unflatten_dict(placed), report


def _read_flax_arrays(source: Source, model: nnx.Module) -> Iterator[tuple[tuple, np.ndarray]]:
    """(Flax path, float32 array in the Flax layout) for every parameter of `model`, one at a
    time, after checking the file's keys and shapes against the model (the first convolution
    may have fewer input channels)."""
    from safetensors import safe_open

    links = convert.name_map(model)
    want = convert.torch_key_shapes(model)
    with safe_open(str(source.path), framework="numpy") as f:
        present = {k[len(source.prefix):]: k for k in f.keys() if k.startswith(source.prefix)}
        missing = sorted(link.torch_key for link in links if link.torch_key not in present)
        unexpected = sorted(set(present) - set(want) - set(source.skip))
        mismatched = []
        for link in links:
            if link.torch_key not in present:
                continue
            got = tuple(f.get_slice(present[link.torch_key]).get_shape())
            if got != want[link.torch_key] and not (link.flax_path == FIRST_CONV and _fewer_input_channels(got, want[link.torch_key])):
                mismatched.append(f"{link.torch_key}: {got} in the file vs {want[link.torch_key]} in the training UNet")
        if missing or unexpected or mismatched:
            raise convert.ConversionError(f"init_from {source.path} does not match the training UNet: missing {missing}, "
                                          f"unexpected {unexpected}, mismatched {mismatched}")
        for link in links:
            value = np.asarray(f.get_tensor(present[link.torch_key]), np.float32)
            yield link.flax_path, convert.to_flax_layout(value, link.layout)


def _fewer_input_channels(got: tuple, want: tuple) -> bool:
    """A torch-layout convolution kernel [out, in, kh, kw] with fewer input channels than `want`."""
    return len(got) == len(want) == 4 and got[0] == want[0] and got[2:] == want[2:] and got[1] < want[1]
