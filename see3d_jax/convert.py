"""Checkpoint conversion between the Flax models and torch folders (config.json + safetensors).

No torch needed: tensors are read and written with `safetensors.numpy`.

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

Files:
    torch folder   config.json (UNetConfig fields, the released MVDream dialect, or diffusers'
                   AutoencoderKL config) + diffusion_pytorch_model.safetensors
    Flax folder    config.json (same dialects) + params/ (orbax StandardCheckpointer of the
                   model's nnx.Param state)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Iterable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from see3d_core.released_layout import UNET_CONFIG, UNET_WEIGHTS, UNET_VARIANTS, read_unet_config, released_unet_dir
from see3d_core.unet_config import UNetConfig
from see3d_jax.unet import WEIGHTS_FILE as FLAX_UNET_WEIGHTS
from see3d_jax.unet import UNet, load_weights
from see3d_jax.vae import AutoencoderKL, VAEConfig

PARAMS_DIR = "params"
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


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    return json.loads(path.read_text())


def _is_vae_config(raw: dict) -> bool:
    return raw.get("_class_name") == "AutoencoderKL"


def _abstract_model(config_path: Path) -> tuple[nnx.Module, int | None]:
    """A model with shape-only parameters for the config at `config_path` (+ camera_dim)."""
    raw = _read_json(config_path)
    if _is_vae_config(raw):
        vae_config = VAEConfig.from_diffusers_config(raw, source=str(config_path))
        return nnx.eval_shape(lambda: AutoencoderKL(vae_config, rngs=nnx.Rngs(0))), None
    unet_config, camera_dim = read_unet_config(config_path)
    return nnx.eval_shape(lambda: UNet(unet_config)), camera_dim


def _write_config(model: nnx.Module, folder: Path) -> None:
    if isinstance(model, AutoencoderKL):
        (folder / UNET_CONFIG).write_text(json.dumps(model.config.to_diffusers_config(), indent=1))
    elif isinstance(model, UNet):
        model.config.save(folder / UNET_CONFIG)
    else:
        raise TypeError(f"cannot convert a {type(model).__name__}; expected see3d_jax UNet or AutoencoderKL")


def save_torch_folder(model: nnx.Module, folder: str | Path) -> Path:
    """Write `config.json` + `diffusion_pytorch_model.safetensors` that `see3d_torch` (UNet) or
    diffusers (`AutoencoderKL.from_pretrained`) loads."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_config(model, folder)
    save_file(flax_to_torch_tensors(model), str(folder / UNET_WEIGHTS))
    return folder


def load_torch_folder(folder: str | Path) -> nnx.Module:
    """Build the Flax UNet or VAE described by a torch folder's config.json and load its weights.

    A released MVDream-style UNet may carry an unused camera embedding (`camera_dim`): its four
    `camera_embed.*` tensors are shape-checked and dropped (See3D never feeds cameras)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    weights = folder / UNET_WEIGHTS
    model, camera_dim = _abstract_model(folder / UNET_CONFIG)
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights}")
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


def save_flax_checkpoint(model: nnx.Module, directory: str | Path) -> Path:
    """Write `config.json` and the orbax checkpoint `params/` of the model's nnx.Param state."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    _write_config(model, directory)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, nnx.state(model, nnx.Param), force=True)
    return directory


def load_flax_checkpoint(directory: str | Path) -> nnx.Module:
    """Rebuild the UNet or VAE from `config.json` and restore `params/` (orbax) into it. A UNet
    weights export of the trainer (`WORKDIR/ema`: config.json + diffusion_flax_model.safetensors,
    `see3d_jax.unet.save_weights`) is read too."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    params = directory / PARAMS_DIR
    if not params.is_dir() and (directory / FLAX_UNET_WEIGHTS).is_file():
        return load_weights(directory)
    model, _ = _abstract_model(directory / UNET_CONFIG)
    if not params.is_dir():
        raise FileNotFoundError(f"orbax checkpoint not found: {params} (nor {directory / FLAX_UNET_WEIGHTS})")
    graphdef, abstract_params, rest = nnx.split(model, nnx.Param, ...)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(params, abstract_params)
    return nnx.merge(graphdef, restored, rest)


def flax_to_torch(flax_dir: str | Path, torch_dir: str | Path) -> Path:
    """Flax orbax checkpoint folder -> torch folder (config.json + safetensors)."""
    return save_torch_folder(load_flax_checkpoint(flax_dir), torch_dir)


def torch_to_flax(torch_dir: str | Path, flax_dir: str | Path, variant: str | None = None) -> Path:
    """Torch folder -> Flax orbax checkpoint folder. `torch_dir` may also be the released See3D
    root (with `model_index.json`): then `variant` picks `single`, `sparse`, `SR` or `vae`."""
    torch_dir = Path(torch_dir)
    if (torch_dir / "model_index.json").is_file():
        if variant is None:
            raise ValueError(f"{torch_dir} is a released See3D folder: pass variant, one of {UNET_VARIANTS + ('vae',)}")
        torch_dir = torch_dir / "vae" if variant == "vae" else released_unet_dir(torch_dir, variant)
    elif variant is not None:
        raise ValueError(f"variant={variant!r} only applies to a released See3D folder (no model_index.json in {torch_dir})")
    return save_flax_checkpoint(load_torch_folder(torch_dir), flax_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="see3d-convert", description="Convert See3D UNet / VAE checkpoints between Flax (orbax) and torch (safetensors)."
    )
    sub = parser.add_subparsers(dest="direction", required=True)
    to_torch = sub.add_parser("to-torch", help="Flax orbax checkpoint folder -> torch folder")
    to_torch.add_argument("src", help="folder with config.json and params/ (orbax)")
    to_torch.add_argument("dst", help="output folder (config.json + diffusion_pytorch_model.safetensors)")
    to_flax = sub.add_parser("to-flax", help="torch folder or released See3D root -> Flax orbax checkpoint folder")
    to_flax.add_argument("src", help="torch folder, or the released See3D root (then pass --variant)")
    to_flax.add_argument("dst", help="output folder (config.json + params/)")
    to_flax.add_argument("--variant", choices=UNET_VARIANTS + ("vae",), help="which model of a released root")
    args = parser.parse_args(argv)
    try:
        if args.direction == "to-torch":
            out = flax_to_torch(args.src, args.dst)
        else:
            out = torch_to_flax(args.src, args.dst, variant=args.variant)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"see3d-convert: error: {e}\n")
    print(f"wrote {out}")
    return 0


__all__ = [
    "ConversionError",
    "ParamLink",
    "flax_to_torch",
    "flax_to_torch_tensors",
    "load_flax_checkpoint",
    "load_torch_folder",
    "load_torch_tensors",
    "main",
    "name_map",
    "save_flax_checkpoint",
    "save_torch_folder",
    "torch_key_shapes",
    "torch_to_flax",
]
