"""Training from pretrained weights (`init_from=`): tiny random checkpoints of each kind (a torch
model folder, a Flax model folder, a released See3D folder, an SD-2.1 / MVDream LDM file with 4
input channels) give a first training step whose loss equals the loss of the same weights run
in torch; sharded loads place every parameter in its sharding."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from see3d_jax import condition as cond
from see3d_jax import convert, pretrained, schedules
from see3d_jax.train import Trainer
from see3d_jax.train_config import preset
from see3d_jax.unet import UNet
from see3d_torch.unet import MultiViewUNet

# a latent model whose config also reads from the released (MVDream) dialect: that dialect has
# no norm_num_groups (32) and no eps fields
LATENT = ["unet.pixel_space=false", "unet.in_channels=9", "unet.out_channels=4", "unet.sample_size=4", "unet.model_channels=32",
          "unet.norm_num_groups=32", "unet.num_head_channels=32", "unet.context_dim=32", "batch_size=2", "attention_implementation=xla"]


def _encode(pixels):
    """A parameter-free stand-in for the VAE: 8x8 mean pooling, RGB + their mean as 4 channels."""
    b, k, h, w, _ = pixels.shape
    pooled = pixels.reshape(b, k, h // 8, 8, w // 8, 8, 3).mean(axis=(3, 5))
    return jnp.concatenate([pooled, pooled.mean(axis=-1, keepdims=True)], axis=-1)


@pytest.fixture(scope="module")
def config():
    return preset("tiny", LATENT)


@pytest.fixture(scope="module")
def trainer(config):
    return Trainer(config, encode_fn=_encode)


@pytest.fixture(scope="module")
def views(config):
    shape = (config.batch_size, config.num_views, config.image_size, config.image_size, 3)
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)


def _torch_unet(config, seed):
    torch.manual_seed(seed)
    model = MultiViewUNet(config)
    with torch.no_grad():  # LDM zero-initialises the output layers: random ones make the test see them
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _torch_loss(trainer, torch_model, views):
    """The trainer's loss of its first step (same key, references, masks, t and noise),
    with the UNet run in torch."""
    cfg = trainer.config
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0)
    tb = cond.build_training_batch(key, jnp.asarray(views), trainer.schedule, cfg.condition, _encode)
    inputs = np.concatenate([np.asarray(tb.x_t), np.asarray(tb.condition), np.asarray(tb.mask)], axis=-1)
    context = torch.zeros(inputs.shape[0], cfg.unet.context_tokens, cfg.unet.context_dim)
    with torch.no_grad():
        out = torch_model(torch.from_numpy(inputs).permute(0, 1, 4, 2, 3), torch.from_numpy(np.array(tb.t)), context)
    out = out.permute(0, 1, 3, 4, 2).numpy().astype(np.float64)
    target = np.asarray(schedules.training_target(trainer.schedule, tb.x0, tb.noise, tb.t, cfg.unet.prediction_type), np.float64)
    per_view = np.mean((out - target) ** 2, axis=(2, 3, 4))  # hole_loss_weight 1, no Min-SNR weighting
    loss_mask = np.asarray(tb.loss_mask, np.float64)
    return float(np.sum(per_view * loss_mask) / np.sum(loss_mask))


def _first_step_loss(trainer, state, views):
    _, metrics = trainer.step(state, trainer.global_batch({"views": views}))
    return float(metrics["loss"])


def _torch_params_as_flax(trainer, tensors):
    """The Flax parameters `tensors` (torch names and layouts) convert to, by the name map."""
    model = nnx.eval_shape(lambda: UNet(trainer.config.unet))
    convert.load_torch_tensors(model, tensors, source="reference")
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _assert_params_equal(got, want):
    flat_got, flat_want = jax.tree_util.tree_flatten_with_path(got)[0], jax.tree_util.tree_flatten_with_path(want)[0]
    assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
    for (path, a), (_, b) in zip(flat_got, flat_want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_model_folders_from_torch_and_flax_start_training_with_their_weights(config, trainer, views, tmp_path):
    torch_model = _torch_unet(config.unet, seed=1)
    folder = torch_model.save_pretrained(tmp_path / "torch_unet")
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}

    from_config = Trainer(dataclasses.replace(config, init_from=str(folder)), encode_fn=_encode)
    state = from_config.init_state()  # init_from in the config
    _assert_params_equal(state["params"], _torch_params_as_flax(trainer, state_dict))
    _assert_params_equal(state["ema"], state["params"])
    assert int(state["step"]) == 0 and all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(state["opt_state"]) if m.ndim)
    # float32 in both frameworks: the UNets agree to ~1e-6 relative (test_convert), the loss far closer than 1e-4
    assert _first_step_loss(trainer, trainer.init_state(params=state["params"]), views) == pytest.approx(
        _torch_loss(trainer, torch_model, views), rel=1e-4)

    # the Flax side's model folder (convert.save_pretrained) of other weights
    other = _torch_unet(config.unet, seed=2)
    flax_model = trainer.model(_torch_params_as_flax(trainer, {k: v.numpy() for k, v in other.state_dict().items()}))
    flax_folder = convert.save_pretrained(flax_model, tmp_path / "flax_unet")
    params, report = pretrained.load_sharded(pretrained.open_source(str(flax_folder)), config.unet, trainer.param_shardings)
    assert report["format"] == "model" and "expanded_input_channels" not in report
    assert _first_step_loss(trainer, trainer.init_state(params=params), views) == pytest.approx(_torch_loss(trainer, other, views), rel=1e-4)


def _write_released(root, unet_config, torch_model, camera_dim):
    folder = root / "unet" / "sparse" / "ema-checkpoint"
    torch_model.save_pretrained(folder)
    c = unet_config
    (folder / "config.json").write_text(json.dumps({  # MVDream's dialect, as released
        "_class_name": "MultiViewUNetModel", "image_size": 32, "in_channels": c.in_channels, "out_channels": c.out_channels,
        "model_channels": c.model_channels, "num_res_blocks": c.num_res_blocks, "attention_resolutions": list(c.attention_resolutions),
        "channel_mult": list(c.channel_mult), "num_head_channels": c.num_head_channels, "context_dim": c.context_dim,
        "camera_dim": camera_dim}))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "MVDreamPipeline"}))
    return root


@pytest.mark.slow
def test_released_folder_starts_training_with_its_sparse_unet(config, trainer, views, tmp_path):
    torch.manual_seed(3)
    torch_model = MultiViewUNet(config.unet, camera_dim=12)
    with torch.no_grad():
        for p in torch_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    root = _write_released(tmp_path / "release", config.unet, torch_model.eval(), camera_dim=12)
    source = pretrained.open_source(str(root), "sparse")
    params, report = pretrained.load_sharded(source, config.unet, trainer.param_shardings)
    assert report["format"] == "released" and report["source_differs_in"] == {"sample_size": 32, "context_tokens": 77}
    assert _first_step_loss(trainer, trainer.init_state(params=params), views) == pytest.approx(
        _torch_loss(trainer, torch_model, views), rel=1e-4)
    with pytest.raises(FileNotFoundError, match="single"):  # another variant: named where it was looked for
        pretrained.open_source(str(root), "single")


def _ldm_file(path, unet_config, seed, extra_channels_from=4):
    """An SD-2.1 / MVDream-style checkpoint: the UNet with 4 input channels under
    model.diffusion_model., beside an autoencoder, a text encoder and MVDream's camera embedding."""
    torch_model = _torch_unet(unet_config.replace(in_channels=extra_channels_from), seed)
    tensors = {pretrained.LDM_PREFIX + k: v.numpy() for k, v in torch_model.state_dict().items()}
    rng = np.random.default_rng(seed)
    tensors.update({
        "first_stage_model.encoder.conv_in.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "cond_stage_model.model.token_embedding.weight": rng.standard_normal((10, 32)).astype(np.float32),
        pretrained.LDM_PREFIX + "camera_embed.0.weight": rng.standard_normal((128, 16)).astype(np.float32),
    })
    save_file(tensors, str(path))
    return torch_model


@pytest.mark.slow
def test_ldm_checkpoint_expands_four_input_channels_to_nine_with_zeros(config, trainer, views, tmp_path):
    four = _ldm_file(tmp_path / "sd21.safetensors", config.unet, seed=4)
    params, report = pretrained.load_sharded(pretrained.open_source(str(tmp_path / "sd21.safetensors")), config.unet, trainer.param_shardings)
    assert report["format"] == "ldm" and report["expanded_input_channels"] == [4, 9]
    stem = np.asarray(params["input_blocks"][0][0]["kernel"])  # [3, 3, 9, out]
    np.testing.assert_array_equal(stem[:, :, :4], np.transpose(four.input_blocks[0][0].weight.detach().numpy(), (2, 3, 1, 0)))
    assert not stem[:, :, 4:].any()  # the condition and mask channels start at zero
    # the same weights in a 9-channel torch UNet whose new input channels are zero
    nine = MultiViewUNet(config.unet).eval()
    state = {k: v.clone() for k, v in four.state_dict().items()}
    w = state["input_blocks.0.0.weight"]
    state["input_blocks.0.0.weight"] = torch.cat([w, torch.zeros(w.shape[0], 5, *w.shape[2:])], dim=1)
    nine.load_state_dict(state)
    assert _first_step_loss(trainer, trainer.init_state(params=params), views) == pytest.approx(_torch_loss(trainer, nine, views), rel=1e-4)


def test_mismatches_name_the_source_the_parameter_and_both_shapes(config, trainer, tmp_path):
    wider = config.unet.replace(model_channels=64)
    _ldm_file(tmp_path / "wide.safetensors", wider, seed=5)
    with pytest.raises(convert.ConversionError) as info:
        pretrained.load_sharded(pretrained.open_source(str(tmp_path / "wide.safetensors")), config.unet, trainer.param_shardings)
    message = str(info.value)
    assert "wide.safetensors" in message and "input_blocks.0.0.weight: (64, 4, 3, 3) in the file vs (32, 9, 3, 3) in the training UNet" in message

    folder = MultiViewUNet(wider).save_pretrained(tmp_path / "wide_folder")
    with pytest.raises(ValueError, match=r"wide_folder.*model_channels: 64 there vs 32 in the training config"):
        pretrained.load_sharded(pretrained.open_source(str(folder)), config.unet, trainer.param_shardings)
    more = MultiViewUNet(config.unet.replace(in_channels=13)).save_pretrained(tmp_path / "more_inputs")
    with pytest.raises(ValueError, match="in_channels: 13 there vs 9"):
        pretrained.load_sharded(pretrained.open_source(str(more)), config.unet, trainer.param_shardings)
    with pytest.raises(FileNotFoundError, match="init_from"):
        pretrained.open_source(str(tmp_path / "nothing_here"))
    (tmp_path / "not_ldm.safetensors").write_bytes(b"")
    with pytest.raises(Exception, match="not_ldm.safetensors"):
        pretrained.open_source(str(tmp_path / "not_ldm.safetensors"))
    with pytest.raises(ValueError, match="init_from_variant"):
        preset("tiny", ["init_from_variant=dense"])


@pytest.mark.slow
def test_sharded_load_places_each_parameter_in_its_sharding(config, tmp_path):
    _ldm_file(tmp_path / "mvdream.safetensors", config.unet, seed=6)
    code = f"""
        import json, jax, numpy as np
        from see3d_jax import pretrained
        from see3d_jax.train import Trainer
        from see3d_jax.train_config import preset
        from safetensors.numpy import load_file
        cfg = preset("tiny", {LATENT!r} + ["mesh_data=1", "mesh_fsdp=2", "mesh_tensor=2", "init_from={tmp_path / 'mvdream.safetensors'}"])
        trainer = Trainer(cfg, encode_fn=lambda x: x)
        params, report = trainer.load_pretrained()
        want = jax.tree_util.tree_flatten_with_path(trainer.param_shardings)[0]
        got = jax.tree_util.tree_flatten_with_path(params)[0]
        assert [p for p, _ in got] == [p for p, _ in want]
        sharded, whole = 0, 0
        for (path, x), (_, sharding) in zip(got, want):
            assert x.sharding == sharding, (jax.tree_util.keystr(path), x.sharding, sharding)
            assert all(s.data.shape == sharding.shard_shape(x.shape) for s in x.addressable_shards)
            if sharding.shard_shape(x.shape) != x.shape:
                sharded += 1
        tensors = load_file("{tmp_path / 'mvdream.safetensors'}")
        out_kernel = np.asarray(params["out"][2]["kernel"])  # the output conv, by way of its shards
        reference = np.transpose(tensors["model.diffusion_model.out.2.weight"], (2, 3, 1, 0))
        state = trainer.init_state(params=params)
        print(json.dumps({{"devices": len(jax.devices()), "sharded": sharded, "leaves": len(got), "report": report,
                          "out_equal": bool(np.array_equal(out_kernel, reference)),
                          "state_sharded": all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params)))}}))
    """
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["out_equal"] and result["state_sharded"]
    assert 10 <= result["sharded"] < result["leaves"]  # kernels split over fsdp x tensor, norms replicated
    assert result["report"]["expanded_input_channels"] == [4, 9]


@pytest.mark.slow
def test_a_run_starts_from_init_from_and_ignores_it_when_resuming(tmp_path):
    from see3d_core.clips import write_synthetic_dataset
    from see3d_jax.train import run

    write_synthetic_dataset(tmp_path / "ds", 2, frames_per_clip=4, width=20, height=20, posed=False)
    cfg = preset("tiny")
    folder = _torch_unet(cfg.unet, seed=7).save_pretrained(tmp_path / "pretrained")
    common = ["log_every=1", "tensorboard=false", "batch_size=2", f"init_from={folder}", f"compilation_cache_dir={tmp_path / 'cache'}"]
    run(preset("tiny", common + ["steps=1"]), str(tmp_path / "ds"), str(tmp_path / "run"), progress=False)
    summary = run(preset("tiny", common + ["steps=2"]), str(tmp_path / "ds"), str(tmp_path / "run"), progress=False)
    assert summary["resumed_from"] == 1 and summary["step"] == 2
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    started = next(e for e in events if e.get("event") == "init_from")
    assert started["step"] == 0 and started["format"] == "model" and started["init_from"].endswith("diffusion_pytorch_model.safetensors")
    ignored = next(e for e in events if e.get("event") == "init_from_ignored")
    assert ignored["step"] == 1 and "resumed" in ignored["reason"]


def test_a_repository_id_resolves_from_the_hub_cache_one_level_down(config, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    torch.manual_seed(8)
    release = _write_released(tmp_path / "release", config.unet, MultiViewUNet(config.unet, camera_dim=12).eval(), camera_dim=12)
    commit = "0123456789abcdef0123456789abcdef01234567"  # huggingface_hub's layout: models--owner--name/snapshots/<commit>
    repo_dir = tmp_path / "hub" / "models--owner--see3d"
    shutil.copytree(release, repo_dir / "snapshots" / commit / "MVD_weights")
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = pretrained.open_source("owner/see3d", "sparse")  # HF_HUB_OFFLINE=1 in the suite: the cache only
    assert source.kind == "released" and source.path.parts[-5:] == ("MVD_weights", "unet", "sparse", "ema-checkpoint",
                                                                    "diffusion_pytorch_model.safetensors")
