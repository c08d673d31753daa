"""Training in one process: the data pipeline, configs, and the tiny model learning."""

import json
from pathlib import Path

import numpy as np
import pytest

from see3d_core.clips import ClipFormatError, write_synthetic_dataset
from see3d_jax.data import training_batches
from see3d_jax.train_config import TrainConfig, apply_overrides, preset


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips") / "ds"
    write_synthetic_dataset(root, 6, frames_per_clip=5, width=24, height=20, posed=False)
    return root


def test_batches_are_random_views_and_resume_exactly(clips):
    it = training_batches(clips, num_views=3, image_size=16, batch_size=2, seed=0, cache=True)
    first = next(it)["views"]
    assert first.shape == (2, 3, 16, 16, 3) and first.dtype == np.float32
    assert -1.0 <= first.min() and first.max() <= 1.0 and first.std() > 0.05
    state = it.get_state()
    expected = [next(it)["views"] for _ in range(4)]
    again = training_batches(clips, num_views=3, image_size=16, batch_size=2, seed=0, cache=False)
    again.set_state(json.loads(json.dumps(state)))  # the state survives JSON (it is saved with checkpoints)
    for e in expected:
        np.testing.assert_array_equal(next(again)["views"], e)
    shard0 = training_batches(clips, num_views=3, image_size=16, batch_size=1, process_index=0, process_count=2)
    shard1 = training_batches(clips, num_views=3, image_size=16, batch_size=1, process_index=1, process_count=2)
    assert not np.array_equal(next(shard0)["views"], next(shard1)["views"])
    with pytest.raises(ClipFormatError, match="num_views=9"):
        training_batches(clips, num_views=9, image_size=16, batch_size=1)


def test_config_overrides_and_round_trip():
    cfg = preset("tiny", ["steps=7", "learning_rate=3e-4", "unet.model_channels=32", "condition.max_references=2", "mesh_fsdp=2"])
    assert (cfg.steps, cfg.learning_rate, cfg.unet.model_channels, cfg.condition.max_references, cfg.mesh_fsdp) == (7, 3e-4, 32, 2, 2)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="no field 'stepz'"):
        apply_overrides(cfg, ["stepz=3"])
    with pytest.raises(ValueError, match="unet has no field"):
        apply_overrides(cfg, ["unet.width=3"])
    with pytest.raises(ValueError, match="grad_accum_steps"):
        preset("tiny", ["grad_accum_steps=3"])
    assert preset("sd21").unet.in_channels == 9 and preset("sd21").compute_dtype == "bfloat16"


@pytest.mark.slow
def test_tiny_learns_on_synthetic_clips(clips):
    import jax

    from see3d_jax.train import Trainer

    cfg = preset("tiny", ["learning_rate=2e-3", "warmup_steps=5", "steps=60", "grad_accum_steps=2"])
    trainer = Trainer(cfg)
    state = trainer.init_state()
    it = training_batches(clips, num_views=cfg.num_views, image_size=cfg.image_size, batch_size=cfg.batch_size, seed=0, cache=True)
    # a fixed evaluation: the same batches, references, masks, t and noise before and after
    held = [{"views": jax.numpy.asarray(next(it)["views"])} for _ in range(3)]
    eval_loss = jax.jit(lambda params: sum(trainer.loss(params, v, jax.random.PRNGKey(100 + i))[0] for i, v in enumerate(held)) / len(held))
    before = float(eval_loss(state["params"]))
    losses = []
    for _ in range(cfg.steps):
        state, metrics = trainer.step(state, trainer.global_batch(next(it)))
        losses.append(float(metrics["loss"]))
    after = float(eval_loss(state["params"]))
    assert int(state["step"]) == cfg.steps and np.all(np.isfinite(losses))
    assert after < 0.6 * before, (before, after)
    # the EMA follows the parameters
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(state["params"])))
    assert 0 < diff < 1.0


@pytest.fixture(scope="module")
def posed_scene(tmp_path_factory):
    """A posed 120x90 clip of a synthetic scene (non-square: the crop moves the principal point)."""
    from see3d_core import synthetic
    from see3d_core.clips import ClipDataset

    scene = synthetic.make_scene(5)
    cams = synthetic.default_orbit(scene, 3, 120, 90)
    frames = synthetic.render_trajectory(scene, cams)
    root = tmp_path_factory.mktemp("posed") / "ds"
    ClipDataset(root).add_clip("orbit", [f.rgb for f in frames], source="synthetic:seed=5", fps=10.0, cameras=cams,
                               depths=[f.depth for f in frames])
    from see3d_torch.warp import write_dataset_pair_warps

    for size in (16, 40, preset("tiny").image_size):  # the posed condition's warps at the sizes trained here
        write_dataset_pair_warps(root, size)
    return scene, root


def test_the_training_crop_keeps_the_geometry_of_the_resized_views(posed_scene):
    """Rendering the scene directly at the model size with the crop's intrinsics reproduces the
    (cropped, area-resized) views and depths the pair warps are computed from: a principal point
    off by half a pixel costs ~5 dB here."""
    from see3d_core import synthetic
    from see3d_core.cameras import Camera
    from see3d_core.clips import read_clip, square_resize, square_resize_intrinsics

    scene, root = posed_scene
    clip = read_clip(root / "orbit")
    views, depths = square_resize(clip.frames, 40), square_resize(clip.depths, 40)
    K = square_resize_intrinsics(np.asarray(clip.info.intrinsics), clip.info.height, clip.info.width, 40)
    for v in range(3):
        direct = synthetic.render_trajectory(scene, [Camera(K[v], np.asarray(clip.info.c2w[v]), 40, 40)])[0]
        rgb = direct.rgb.astype(np.float32) / 255.0 if direct.rgb.dtype == np.uint8 else direct.rgb
        psnr = 10 * np.log10(1.0 / np.mean((rgb - views[v] / 255.0) ** 2))
        assert psnr > 23.0, (v, psnr)  # ~25 dB measured (area filter vs direct sampling); 20 dB at 0.5 px off
        assert np.median(np.abs(direct.depth - depths[v]) / direct.depth) < 0.003


def test_posed_batches_carry_the_pair_warps_of_the_drawn_views(posed_scene, clips):
    from see3d_core.clips import pair_warps_path, read_clip, square_resize

    scene, root = posed_scene
    frames = square_resize(read_clip(root / "orbit").frames, 40).astype(np.float32) / 127.5 - 1.0
    with np.load(pair_warps_path(root / "orbit", 40)) as stored:
        stored = {k: stored[k] for k in stored.files}
    for cache in (True, False):
        batch = next(training_batches(root, num_views=2, image_size=40, batch_size=1, cache=cache, posed=True, seed=3))
        assert batch["pair_images"].shape == (1, 2, 2, 40, 40, 3) and batch["pair_masks"].shape == (1, 2, 2, 40, 40)
        positions = [int(np.argmin([np.abs(f - v).max() for f in frames])) for v in batch["views"][0]]
        pick = np.ix_(positions, positions)
        np.testing.assert_array_equal(batch["pair_images"][0], stored["images"][pick].astype(np.float32) / 127.5 - 1.0)
        np.testing.assert_array_equal(batch["pair_masks"][0], stored["masks"][pick])
        np.testing.assert_array_equal(batch["pair_depths"][0], stored["depths"][pick])
    with pytest.raises(ClipFormatError, match="cameras and depths"):
        training_batches(clips, num_views=3, image_size=16, batch_size=1, posed=True)
    with pytest.raises(FileNotFoundError, match="pair-warps"):
        next(training_batches(root, num_views=2, image_size=24, batch_size=1, posed=True))


@pytest.mark.slow
def test_posed_warp_training_step(posed_scene):
    import jax

    from see3d_jax.train import Trainer

    cfg = preset("tiny", ["condition.variant=posed_warp", "batch_size=2", "grad_accum_steps=2"])
    trainer = Trainer(cfg)
    batch = next(training_batches(posed_scene[1], num_views=cfg.num_views, image_size=cfg.image_size, batch_size=2, posed=True))
    with pytest.raises(ValueError, match="lacks"):
        trainer.global_batch({"views": batch["views"]})
    state = trainer.init_state()
    state, metrics = trainer.step(state, trainer.global_batch(batch))
    assert int(state["step"]) == 1 and np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert jax.tree.leaves(state["params"])[0].dtype == np.float32


@pytest.mark.slow
def test_loss_weighting_options_match_a_direct_computation(posed_scene):
    """Min-SNR-gamma scales each sample's loss by min(1, gamma / (SNR + 1)) (v-prediction) and
    hole_loss_weight reweights the pixels with mask 0: both checked against the same batch
    computed by hand."""
    import jax
    import jax.numpy as jnp

    from see3d_jax import condition as cond
    from see3d_jax import schedules
    from see3d_jax.train import Trainer

    base = ["condition.variant=posed_warp", "batch_size=2"]
    batch = next(training_batches(posed_scene[1], num_views=3, image_size=16, batch_size=2, posed=True))
    key = jax.random.PRNGKey(3)
    plain = Trainer(preset("tiny", base))
    state = plain.init_state()
    gb = plain.global_batch(batch)
    tb = cond.build_training_batch(key, gb["views"], plain.schedule, plain.condition_config, None, None,
                                   cond.PairWarps(gb["pair_images"], gb["pair_masks"], gb["pair_depths"]))
    out = plain.model_fn(state["params"])(tb.x_t, tb.condition, tb.mask, tb.t, plain.batch_context(2))
    sq = np.asarray(jnp.square(out - schedules.training_target(plain.schedule, tb.x0, tb.noise, tb.t, "v_prediction")))
    hole = 1.0 - np.asarray(tb.mask)
    targets = np.asarray(tb.loss_mask)
    assert 0 < hole[targets > 0].mean() < 1  # the warp leaves holes and known pixels

    def expected(view_weight, pixel_weight):
        per_view = (sq * pixel_weight).sum(axis=(2, 3, 4)) / (pixel_weight.sum(axis=(2, 3, 4)) * 3)
        return (per_view * view_weight * targets).sum() / targets.sum()

    ones = np.ones_like(hole)
    assert np.isclose(float(plain.loss(state["params"], gb, key)[0]), expected(1.0, ones), rtol=1e-5)
    snr_w = np.asarray(schedules.min_snr_loss_weight(plain.schedule, tb.t, "v_prediction", 2.0))[:, None]
    weighted = Trainer(preset("tiny", base + ["min_snr_gamma=2.0", "hole_loss_weight=4.0"]))
    got = float(weighted.loss(state["params"], gb, key)[0])
    assert np.isclose(got, expected(snr_w, 1.0 + 3.0 * hole), rtol=1e-5)
    assert not np.isclose(got, expected(1.0, ones), rtol=1e-3)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        preset("tiny", ["min_snr_gamma=0"])


@pytest.mark.slow
def test_cached_latents_give_the_same_loss_as_encoding_every_step(clips, tmp_path):
    """Latent training with `cache_latents`: the stored latents are the encoder's, the loss on a
    batch equals the one that encodes the views in the step, and `run` builds the cache itself."""
    import jax
    from flax import nnx

    from see3d_jax import convert
    from see3d_jax.data import cache_latents, list_clips
    from see3d_jax.train import Trainer, load_encoder, run
    from see3d_jax.vae import AutoencoderKL, VAEConfig

    vae_dir = tmp_path / "vae"  # four levels: 8x downsampling, as the trainer assumes
    vae_config = VAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8)
    convert.save_pretrained(AutoencoderKL(vae_config, rngs=nnx.Rngs(0)), vae_dir)
    latent = ["unet.pixel_space=false", "unet.in_channels=9", "unet.out_channels=4", "unet.sample_size=4", f"vae={vae_dir}",
              "steps=2", "log_every=1", "checkpoint_every=2", "tensorboard=false", "batch_size=2"]
    cfg = preset("tiny", latent + ["cache_latents=true"])
    encode = load_encoder(str(vae_dir))
    all_clips = list_clips(clips, cfg.num_views)
    cache = tmp_path / "cache"
    assert cache_latents(all_clips, cache, encode, cfg.image_size, vae=str(vae_dir)) == len(all_clips)
    assert cache_latents(all_clips, cache, encode, cfg.image_size, vae=str(vae_dir)) == 0  # resumable: nothing left
    with pytest.raises(ValueError, match="cache.json: latents cached for"):
        cache_latents(all_clips, cache, encode, 64, vae=str(vae_dir))

    batch = next(training_batches(clips, num_views=cfg.num_views, image_size=cfg.image_size, batch_size=2, latent_dir=cache))
    assert batch["latents"].shape == (2, cfg.num_views, 4, 4, 4)
    np.testing.assert_allclose(batch["latents"], np.asarray(encode(batch["views"])), atol=1e-5)
    cached, encoding = Trainer(cfg, encode_fn=encode), Trainer(preset("tiny", latent), encode_fn=encode)
    params = cached.init_state()["params"]
    key = jax.random.PRNGKey(3)
    loss_cached = float(jax.jit(cached.loss)(params, batch, key)[0])
    loss_encoding = float(jax.jit(encoding.loss)(params, {"views": batch["views"]}, key)[0])
    assert loss_cached == pytest.approx(loss_encoding, rel=1e-4)

    summary = run(cfg, str(clips), str(tmp_path / "run"), progress=False)
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    assert len(list((tmp_path / "run" / "latent_cache").glob("*.npy"))) == len(all_clips)
    (tmp_path / "run" / "latent_cache" / f"{Path(all_clips[0][0]).name}.npy").unlink()
    with pytest.raises(FileNotFoundError, match="no cached latents for clip"):
        next(training_batches(clips, num_views=cfg.num_views, image_size=cfg.image_size, batch_size=len(all_clips),
                              latent_dir=tmp_path / "run" / "latent_cache"))
    with pytest.raises(ValueError, match="cache_latents needs a latent model"):
        preset("tiny", ["cache_latents=true"])


@pytest.mark.slow
def test_the_ema_export_is_a_model_folder_that_torch_loads(clips, tmp_path):
    """`RUN/ema` after a tiny run: the Flax and torch UNets load it, it holds the EMA of the last
    checkpoint bit for bit, and torch's outputs equal the Flax UNet's with those EMA weights."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from see3d_core.released_layout import detect_checkpoint_format
    from see3d_jax import convert
    from see3d_jax.checkpointing import Checkpointer, abstract_like
    from see3d_jax.train import Trainer, run
    from see3d_jax.unet import UNet
    from see3d_torch.unet import MultiViewUNet

    cfg = preset("tiny", ["steps=2", "log_every=1", "checkpoint_every=2", "tensorboard=false", "batch_size=2"])
    run(cfg, str(clips), str(tmp_path / "run"), progress=False)
    ema_dir = tmp_path / "run" / "ema"
    assert detect_checkpoint_format(ema_dir) == "model"
    trainer = Trainer(cfg)
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), asynchronous=False)
    try:
        state, _ = ckpt.restore(abstract_like(trainer.state_shapes, trainer.state_shardings))
    finally:
        ckpt.close()
    trained = UNet(cfg.unet)  # the EMA weights put in by nnx itself, not by the export's code
    params = nnx.state(trained, nnx.Param)
    nnx.replace_by_pure_dict(params, jax.tree.map(np.asarray, state["ema"]))
    nnx.update(trained, params)

    loaded = convert.from_pretrained(ema_dir)
    assert loaded.config == cfg.unet
    want = {p: np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(trained, nnx.Param))}
    got = {p: np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(loaded, nnx.Param))}
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)

    torch_unet = MultiViewUNet.from_pretrained(ema_dir)
    assert torch_unet.config == cfg.unet
    torch_named = convert.flax_to_torch_tensors(trained)
    assert all(np.array_equal(v.numpy(), torch_named[k]) for k, v in torch_unet.state_dict().items())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 16, 16, cfg.unet.in_channels)).astype(np.float32)
    t = np.array([500])
    ctx = rng.normal(size=(1, cfg.unet.context_tokens, cfg.unet.context_dim)).astype(np.float32)
    flax_out = np.asarray(trained(jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    with torch.no_grad():
        torch_out = torch_unet(torch.from_numpy(x.transpose(0, 1, 4, 2, 3)), torch.from_numpy(t), torch.from_numpy(ctx))
    torch_out = torch_out.numpy().transpose(0, 1, 3, 4, 2)
    peak = np.abs(flax_out).max()
    assert peak > 0  # the zero-initialised output layer has trained (8e-3 after 2 steps)
    # fp32 parity relative to the output's size: tests/test_convert.py measures ~1e-6 of the peak
    np.testing.assert_allclose(torch_out, flax_out, atol=1e-4 * peak, rtol=0)
