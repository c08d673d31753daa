"""The Flax models' side of the one model folder (config.json + diffusion_pytorch_model.safetensors,
torch parameter names and layouts; `see3d_core.released_layout`): `save_pretrained` and
`from_pretrained` go through an explicit name map, so a folder written by either framework
loads in the other unchanged. No torch needed: tensors are read and written with
`safetensors.numpy`.

The name map is explicit and bijective. The Flax UNet (`see3d_jax.unet`) and VAE
(`see3d_jax.vae`) are built with the same module tree as their torch counterparts (the LDM
names of `see3d_torch.unet.MultiViewUNet`, the diffusers names of `AutoencoderKL`), so the
torch name of a module is its Flax path joined by dots, and each parameterised module type has
one fixed table from Flax parameter to torch parameter and layout:

    nnx.Conv       kernel [kh, kw, in, out] -> weight [out, in, kh, kw]     ("conv")
                   bias -> bias
    nnx.Linear     kernel [in, out]         -> weight [out, in]             ("linear")
                   bias -> bias
    nnx.GroupNorm / nnx.LayerNorm  scale -> weight, bias -> bias            ("same")

`name_map(model)` lists every link, checks that it is one to one and that it covers every
Flax parameter. Loading validates the file against it and reports missing, unexpected and
shape-mismatched keys by name. Transposes are exact, so Flax -> torch -> Flax is bit-exact.

Model folder: config.json (UNetConfig fields, the released MVDream dialect, or diffusers'
AutoencoderKL config) + `WEIGHTS_FILE`. The formats from before it (`diffusion_flax_model
.safetensors` in Flax names, an orbax `params/`) are read only by `load_legacy_flax_folder`,
behind `see3d-convert upgrade OLD NEW`; the loaders refuse them with that command.

    see3d-convert upgrade OLD_FOLDER NEW_FOLDER   legacy Flax folder -> model folder
    see3d-convert check FOLDER                    load a model folder in Flax, report what it is
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from see3d_core.released_layout import (
    CONFIG_FILE,
    LEGACY_FLAX_WEIGHTS,
    LEGACY_ORBAX_PARAMS,
    WEIGHTS_FILE,
    detect_checkpoint_format,
    legacy_checkpoint_file,
    model_folder_files,
    read_unet_config,
)
from see3d_core.dataclass_json import read_json_object
from see3d_core.unet_config import UNetConfig
from see3d_jax.unet import UNet
from see3d_jax.vae import AutoencoderKL, VAEConfig

_CONV, _LINEAR, _SAME = "conv", "linear", "same"
# (module type, {flax parameter: (torch parameter, layout)}), checked in order
_PARAM_TABLES: tuple[tuple[type, dict[str, tuple[str, str]]], ...] = (
    (nnx.Conv, {"kernel": ("weight", _CONV), "bias": ("bias", _SAME)}),
    (nnx.Linear, {"kernel": ("weight", _LINEAR), "bias": ("bias", _SAME)}),
    (nnx.GroupNorm, {"scale": ("weight", _SAME), "bias": ("bias", _SAME)}),
    (nnx.LayerNorm, {"scale": ("weight", _SAME), "bias": ("bias", _SAME)}),
)


class ConversionError(ValueError):
    """A checkpoint does not match the model: names the missing, unexpected and mismatched keys."""


@dataclasses.dataclass(frozen=True)
class ParamLink:
    flax_path: tuple  # path of the nnx.Param in the model, e.g. ("input_blocks", 1, 0, "in_layers", 2, "kernel")
    torch_key: str  # e.g. "input_blocks.1.0.in_layers.2.weight"
    layout: str  # "conv", "linear" or "same"


def to_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == _CONV:
        return np.ascontiguousarray(np.transpose(array, (3, 2, 0, 1)))
    if layout == _LINEAR:
        return np.ascontiguousarray(array.T)
    return np.ascontiguousarray(array)


def to_flax_layout(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == _CONV:
        return np.ascontiguousarray(np.transpose(array, (2, 3, 1, 0)))
    if layout == _LINEAR:
        return np.ascontiguousarray(array.T)
    return np.ascontiguousarray(array)


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == _CONV:
        return (shape[3], shape[2], shape[0], shape[1])
    if layout == _LINEAR:
        return (shape[1], shape[0])
    return tuple(shape)


def name_map(model: nnx.Module) -> list[ParamLink]:
    """Every (Flax parameter, torch key, layout) link of `model`; one to one and complete."""
    links = []
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        table = next((t for kind, t in _PARAM_TABLES if isinstance(node, kind)), None)
        if table is None:
            continue
        module_key = ".".join(str(p) for p in path)
        for attr, (torch_name, layout) in table.items():
            if isinstance(getattr(node, attr, None), nnx.Param):
                links.append(ParamLink(tuple(path) + (attr,), f"{module_key}.{torch_name}", layout))
    params = {tuple(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    linked = [link.flax_path for link in links]
    if len(set(linked)) != len(linked) or len({link.torch_key for link in links}) != len(links):
        raise ConversionError(f"{type(model).__name__}: the name map is not one to one")
    unmapped = sorted(".".join(map(str, p)) for p in params - set(linked))
    if unmapped:
        raise ConversionError(f"{type(model).__name__}: parameters without a torch name: {unmapped}")
    return links


def _param(model: nnx.Module, path: tuple) -> nnx.Param:
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def torch_key_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """The torch state-dict keys and shapes `model` converts to (works on abstract models too)."""
    return {link.torch_key: _torch_shape(tuple(_param(model, link.flax_path).get_value().shape), link.layout) for link in name_map(model)}


def flax_to_torch_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters as a torch-named, torch-layout dict of numpy arrays."""
    return {
        link.torch_key: to_torch_layout(np.asarray(_param(model, link.flax_path).get_value()), link.layout)
        for link in name_map(model)
    }


def load_torch_tensors(
    model: nnx.Module, tensors: dict[str, np.ndarray], source: str, ignore: Iterable[str] = ()
) -> None:
    """Set `model`'s parameters from torch-named tensors, after checking every key and shape.

    `ignore` lists keys that may be in the file and are deliberately not used."""
    links = name_map(model)
    expected = {link.torch_key: link for link in links}
    ignore = set(ignore)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - ignore)
    mismatched = []
    for key in sorted(set(expected) & set(tensors)):
        link = expected[key]
        want = _torch_shape(tuple(_param(model, link.flax_path).get_value().shape), link.layout)
        if tuple(tensors[key].shape) != want:
            mismatched.append(f"{key}: file {tuple(tensors[key].shape)} vs model {want}")
    if missing or unexpected or mismatched:
        raise ConversionError(
            f"{source} does not match {type(model).__name__}: missing {missing}, unexpected {unexpected}, mismatched {mismatched}"
        )
    for link in links:
        param = _param(model, link.flax_path)
        dtype = param.get_value().dtype
        param.set_value(jnp.asarray(to_flax_layout(np.asarray(tensors[link.torch_key]), link.layout), dtype=dtype))


# ---------------------------------------------------------------------------------------- files


def _is_vae_config(raw: dict) -> bool:
    return raw.get("_class_name") == "AutoencoderKL"


def _abstract_model(config_path: Path, unet_options: dict) -> tuple[nnx.Module, int | None]:
    """A model with shape-only parameters for the config at `config_path` (+ camera_dim);
    `unet_options` (dtype, remat, attention_implementation) go to the UNet's constructor."""
    raw = read_json_object(config_path)
    if _is_vae_config(raw):
        if unet_options:
            raise ValueError(f"{config_path}: a VAE config; {sorted(unet_options)} only apply to a UNet")
        vae_config = VAEConfig.from_diffusers_config(raw, source=str(config_path))
        return nnx.eval_shape(lambda: AutoencoderKL(vae_config, rngs=nnx.Rngs(0))), None
    unet_config, camera_dim = read_unet_config(config_path)
    return nnx.eval_shape(lambda: UNet(unet_config, **unet_options)), camera_dim


def _write_config(model: nnx.Module, folder: Path) -> None:
    if isinstance(model, AutoencoderKL):
        (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_diffusers_config(), indent=1))
    elif isinstance(model, UNet):
        model.config.save(folder / CONFIG_FILE)
    else:
        raise TypeError(f"cannot save a {type(model).__name__}; expected see3d_jax UNet or AutoencoderKL")


def save_pretrained(model: nnx.Module, folder: str | Path) -> Path:
    """Write the model folder (`config.json` + `WEIGHTS_FILE`, torch names and layouts) that
    `see3d_torch.unet.MultiViewUNet.from_pretrained` (UNet), diffusers'
    `AutoencoderKL.from_pretrained` (VAE) and `from_pretrained` here load."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_config(model, folder)
    save_file(flax_to_torch_tensors(model), str(folder / WEIGHTS_FILE))
    return folder


def save_pretrained_params(params: dict, config: UNetConfig, folder: str | Path) -> Path:
    """`save_pretrained` for a UNet given as a pure parameter dict (`nnx.to_pure_dict` of its
    nnx.Param state, e.g. the trainer's EMA) and its config."""
    model = nnx.eval_shape(lambda: UNet(config))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, params))
    nnx.update(model, state)
    return save_pretrained(model, folder)


def from_pretrained(folder: str | Path, **unet_options) -> nnx.Module:
    """Build the Flax UNet or VAE a model folder's config.json describes and load its weights
    (written by either framework); `unet_options` (dtype, remat, attention_implementation) go
    to the UNet. Old Flax folders are refused with the `see3d-convert upgrade` command.

    A released MVDream-style UNet may carry an unused camera embedding (`camera_dim`): its four
    `camera_embed.*` tensors are shape-checked and dropped (See3D never feeds cameras)."""
    from safetensors.numpy import load_file

    config_path, weights = model_folder_files(folder)
    model, camera_dim = _abstract_model(config_path, unet_options)
    tensors = load_file(str(weights))
    ignore = ()
    if camera_dim is not None:
        emb = model.config.time_embed_dim
        camera_shapes = {
            "camera_embed.0.weight": (emb, camera_dim), "camera_embed.0.bias": (emb,),
            "camera_embed.2.weight": (emb, emb), "camera_embed.2.bias": (emb,),
        }
        bad = [f"{k}: {tuple(tensors[k].shape) if k in tensors else 'missing'} vs {s}" for k, s in camera_shapes.items() if k not in tensors or tuple(tensors[k].shape) != s]
        if bad:
            raise ConversionError(f"{weights}: camera embedding declared by camera_dim={camera_dim} does not match: {bad}")
        ignore = tuple(camera_shapes)
    load_torch_tensors(model, tensors, source=str(weights), ignore=ignore)
    return model


# ------------------------------------------------------------------------------ legacy folders


def load_legacy_flax_folder(folder: str | Path) -> nnx.Module:
    """The one reader of the formats from before the model folder: config.json plus either
    `LEGACY_FLAX_WEIGHTS` (Flax parameter names and layouts, the trainer's old `RUN/ema`) or an
    orbax `LEGACY_ORBAX_PARAMS/` folder. Used by `see3d-convert upgrade`."""
    folder = Path(folder).absolute()
    marker = legacy_checkpoint_file(folder)
    if marker is None:
        raise FileNotFoundError(f"{folder}: no {LEGACY_FLAX_WEIGHTS} and no orbax {LEGACY_ORBAX_PARAMS}/ (not a legacy Flax folder)")
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"config not found: {config}")
    model, _ = _abstract_model(config, {})
    if marker.name == LEGACY_FLAX_WEIGHTS:
        from safetensors.numpy import load_file

        tensors = load_file(str(marker))
        params = nnx.state(model, nnx.Param)
        expected = {".".join(map(str, path)): var for path, var in nnx.to_flat_state(params)}
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        mismatched = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.get_value().shape)}"
                      for k, v in expected.items() if k in tensors and tuple(tensors[k].shape) != tuple(v.get_value().shape)]
        if missing or unexpected or mismatched:
            raise ConversionError(f"{marker} does not match {type(model).__name__}: missing {missing}, "
                                  f"unexpected {unexpected}, mismatched {mismatched}")
        for name, var in expected.items():
            var.set_value(jnp.asarray(tensors[name], jnp.float32))
        nnx.update(model, params)
        return model
    import orbax.checkpoint as ocp

    graphdef, abstract_params, rest = nnx.split(model, nnx.Param, ...)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(marker, abstract_params)
    return nnx.merge(graphdef, restored, rest)


def upgrade(old_folder: str | Path, new_folder: str | Path) -> Path:
    """Legacy Flax folder -> model folder."""
    if Path(new_folder).absolute() == Path(old_folder).absolute():
        raise ValueError(f"upgrade {old_folder}: write the model folder somewhere else (the old files would stay beside it)")
    return save_pretrained(load_legacy_flax_folder(old_folder), new_folder)


def describe(folder: str | Path) -> str:
    """Load a folder in Flax (every name and shape checked) and say what it holds."""
    folder = Path(folder)
    if detect_checkpoint_format(folder) == "released":
        raise ValueError(f"{folder}: a released See3D root; check one model in it, e.g. {folder}/unet/sparse/ema-checkpoint or {folder}/vae")
    model = from_pretrained(folder)
    count = sum(int(np.prod(link_shape)) for link_shape in torch_key_shapes(model).values())
    return f"{folder}: a model folder with a {type(model).__name__} of {count:,} parameters, {model.config}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="see3d-convert",
        description=f"See3D model folders ({CONFIG_FILE} + {WEIGHTS_FILE}, torch names; both frameworks read and write "
        "them): upgrade an old Flax folder, or check a folder.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help=f"old Flax folder ({LEGACY_FLAX_WEIGHTS} or orbax {LEGACY_ORBAX_PARAMS}/) -> model folder")
    up.add_argument("src", help=f"folder with {CONFIG_FILE} and {LEGACY_FLAX_WEIGHTS} or {LEGACY_ORBAX_PARAMS}/")
    up.add_argument("dst", help=f"output model folder ({CONFIG_FILE} + {WEIGHTS_FILE})")
    check = sub.add_parser("check", help="load a model folder in Flax, checking every tensor name and shape")
    check.add_argument("folder", help=f"a model folder ({CONFIG_FILE} + {WEIGHTS_FILE}), e.g. RUN/ema or a released unet/sparse/ema-checkpoint")
    args = parser.parse_args(argv)
    try:
        if args.command == "upgrade":
            print(f"wrote {upgrade(args.src, args.dst)}")
        else:
            print(describe(args.folder))
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"see3d-convert: error: {e}\n")
    return 0


__all__ = [
    "ConversionError",
    "ParamLink",
    "describe",
    "flax_to_torch_tensors",
    "from_pretrained",
    "load_legacy_flax_folder",
    "load_torch_tensors",
    "main",
    "name_map",
    "save_pretrained",
    "save_pretrained_params",
    "torch_key_shapes",
    "upgrade",
]
