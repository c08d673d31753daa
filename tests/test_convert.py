"""Flax <-> torch checkpoint conversion: explicit bijective name map, named validation errors,
bit-exact round trip through files, and fp32 parity of the two UNets (tiny, small, sd21)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from see3d_core import unet_config as uc  # noqa: E402
from see3d_jax import convert  # noqa: E402
from see3d_jax.unet import UNet  # noqa: E402
from see3d_jax.vae import AutoencoderKL, VAEConfig  # noqa: E402
from see3d_torch.unet import MultiViewUNet, unet_key_shapes  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "sd21_unet_keys.json"


def random_torch_tensors(shapes, seed=0):
    """Random torch-layout weights for every key: fan-in-scaled kernels, norms near 1, small
    biases (zero-initialised output layers get weights too). Values are cut from one shared pool
    of normals, so even the 866M-parameter sd21 set is cheap to make."""
    pool = np.random.default_rng(seed).standard_normal(1 << 20, dtype=np.float32)
    tensors = {}
    for i, (key, shape) in enumerate(shapes.items()):
        values = np.resize(np.roll(pool, 7919 * i), shape)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
        if fan_in:
            tensors[key] = values / np.float32(np.sqrt(fan_in))
        else:
            tensors[key] = np.float32(key.endswith("weight")) + np.float32(0.05) * values
    return tensors


def _flax_unet(config, seed=0):
    model = nnx.eval_shape(lambda: UNet(config))
    convert.load_torch_tensors(model, random_torch_tensors(convert.torch_key_shapes(model), seed), source="random")
    return model


def _flax_vae(config, seed=0):
    model = nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)))
    convert.load_torch_tensors(model, random_torch_tensors(convert.torch_key_shapes(model), seed), source="random")
    return model


def _flat_params(model):
    return {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.slow
def test_name_map_is_bijective_complete_and_matches_torch_names():
    sd21 = nnx.eval_shape(lambda: UNet(uc.sd21()))
    links = convert.name_map(sd21)
    assert len({link.torch_key for link in links}) == len(links) == len({link.flax_path for link in links})
    fixture = json.loads(FIXTURE.read_text())["shapes"]
    assert {k: list(s) for k, s in convert.torch_key_shapes(sd21).items()} == fixture
    by_key = {link.torch_key: link for link in links}
    assert by_key["input_blocks.0.0.weight"].layout == "conv"
    assert by_key["input_blocks.0.0.weight"].flax_path == ("input_blocks", 0, 0, "kernel")
    assert by_key["time_embed.2.weight"].layout == "linear"
    assert by_key["out.0.weight"].flax_path == ("out", 0, "scale")
    for preset in ("tiny", "small"):
        model = nnx.eval_shape(lambda: UNet(uc.preset(preset)))
        assert {k: list(s) for k, s in convert.torch_key_shapes(model).items()} == unet_key_shapes(uc.preset(preset))


@pytest.mark.slow
def test_round_trip_flax_torch_flax_is_bit_exact(tmp_path):
    for name, model in (("unet", _flax_unet(uc.tiny())), ("vae", _flax_vae(VAEConfig.preset("tiny")))):
        convert.save_flax_checkpoint(model, tmp_path / name / "flax")
        assert convert.main(["to-torch", str(tmp_path / name / "flax"), str(tmp_path / name / "torch")]) == 0
        assert convert.main(["to-flax", str(tmp_path / name / "torch"), str(tmp_path / name / "flax2")]) == 0
        back = convert.load_flax_checkpoint(tmp_path / name / "flax2")
        assert type(back) is type(model) and back.config == model.config
        before, after = _flat_params(model), _flat_params(back)
        assert before.keys() == after.keys()
        for path in before:
            assert before[path].dtype == after[path].dtype
            np.testing.assert_array_equal(before[path], after[path], err_msg=str(path))
    # the torch side loads what the converter wrote
    assert MultiViewUNet.from_pretrained(tmp_path / "unet" / "torch").config == uc.tiny()
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    TorchAutoencoderKL.from_pretrained(tmp_path / "vae" / "torch")


def _parity(config, batch, views, size, atol=1e-4):
    model = _flax_unet(config)
    tensors = convert.flax_to_torch_tensors(model)
    with torch.device("meta"):
        torch_model = MultiViewUNet(config)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True, assign=True)
    torch_model.eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, views, size, size, config.in_channels)).astype(np.float32)
    t = np.array([17, 961][:batch])
    ctx = rng.normal(size=(batch, config.context_tokens, config.context_dim)).astype(np.float32)
    flax_out = np.asarray(nnx.jit(lambda m, *a: m(*a))(model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    with torch.no_grad():
        torch_out = torch_model(torch.from_numpy(x.transpose(0, 1, 4, 2, 3)), torch.from_numpy(t), torch.from_numpy(ctx))
    torch_out = torch_out.numpy().transpose(0, 1, 3, 4, 2)
    assert np.abs(torch_out).max() > 0.1  # a non-trivial output
    np.testing.assert_allclose(flax_out, torch_out, atol=atol, rtol=0)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_flax_and_torch_unets_agree(preset):
    _parity(uc.preset(preset), batch=2, views=3, size=16)


@pytest.mark.slow
def test_sd21_flax_and_torch_unets_agree_at_small_latent_size():
    """The released architecture (866M parameters) at an 8x8 latent, 2 views: fp32 within 1e-4."""
    config = uc.sd21()
    rng = np.random.default_rng(0)
    with torch.device("meta"):
        torch_model = MultiViewUNet(config)
    tensors = random_torch_tensors(unet_key_shapes(config))
    flax_model = nnx.eval_shape(lambda: UNet(config))
    convert.load_torch_tensors(flax_model, tensors, source="random sd21")
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True, assign=True)
    torch_model.eval()
    del tensors
    x = rng.normal(size=(1, 2, 8, 8, config.in_channels)).astype(np.float32)
    ctx = rng.normal(size=(1, 77, config.context_dim)).astype(np.float32)
    t = np.array([500])
    flax_out = np.asarray(nnx.jit(lambda m, *a: m(*a))(flax_model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    with torch.no_grad():
        torch_out = torch_model(torch.from_numpy(x.transpose(0, 1, 4, 2, 3)), torch.from_numpy(t), torch.from_numpy(ctx))
    torch_out = torch_out.numpy().transpose(0, 1, 3, 4, 2)
    assert np.abs(torch_out).max() > 0.1
    np.testing.assert_allclose(flax_out, torch_out, atol=1e-4, rtol=0)


def test_validation_names_missing_unexpected_and_mismatched_keys():
    model = nnx.eval_shape(lambda: UNet(uc.tiny()))
    tensors = {k: np.zeros(s, np.float32) for k, s in convert.torch_key_shapes(model).items()}
    del tensors["out.2.bias"]
    tensors["camera_embed.0.weight"] = np.zeros((64, 16), np.float32)
    tensors["input_blocks.0.0.weight"] = np.zeros((16, 9, 3, 3), np.float32)
    with pytest.raises(convert.ConversionError) as info:
        convert.load_torch_tensors(model, tensors, source="ckpt.safetensors")
    message = str(info.value)
    assert "ckpt.safetensors" in message and "missing ['out.2.bias']" in message
    assert "unexpected ['camera_embed.0.weight']" in message
    assert "input_blocks.0.0.weight: file (16, 9, 3, 3) vs model (16, 7, 3, 3)" in message


def test_released_root_to_flax_drops_only_the_camera_embedding(tmp_path):
    from safetensors.torch import load_file, save_file

    config = uc.tiny().replace(in_channels=9, out_channels=4, pixel_space=False, model_channels=32, norm_num_groups=32,
                               num_head_channels=32, context_dim=32)
    torch.manual_seed(0)
    folder = tmp_path / "release" / "unet" / "sparse" / "ema-checkpoint"
    MultiViewUNet(config, camera_dim=16).save_pretrained(folder)
    c = config
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "MultiViewUNetModel", "image_size": 16, "in_channels": 9, "out_channels": 4,
        "model_channels": c.model_channels, "num_res_blocks": c.num_res_blocks, "attention_resolutions": list(c.attention_resolutions),
        "channel_mult": list(c.channel_mult), "num_head_channels": c.num_head_channels, "context_dim": c.context_dim, "camera_dim": 16,
    }))
    (tmp_path / "release" / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match="variant"):
        convert.torch_to_flax(tmp_path / "release", tmp_path / "flax")
    convert.torch_to_flax(tmp_path / "release", tmp_path / "flax", variant="sparse")
    model = convert.load_flax_checkpoint(tmp_path / "flax")
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    back = convert.flax_to_torch_tensors(model)
    assert set(state) - set(back) == {f"camera_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)
    state["camera_embed.0.weight"] = torch.zeros(3, 3)  # a wrong camera embedding is still reported
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(convert.ConversionError, match="camera_embed.0.weight"):
        convert.load_torch_folder(folder)


def test_cli_reports_missing_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        convert.main(["to-torch", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert info.value.code == 2
    assert "nothing/config.json" in capsys.readouterr().err
