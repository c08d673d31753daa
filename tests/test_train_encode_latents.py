"""The latent cache's pre-pass (`python -m see3d_jax.encode_latents`): every frame encoded once,
split over devices, resumable, read by the trainer; with cached latents the step encodes only
the condition images of views that may be targets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from see3d_core.clips import read_clip, square_resize, write_synthetic_dataset
from see3d_core.diffusion import ConditionConfig
from see3d_jax import condition as cond
from see3d_jax import schedules
from see3d_jax.data import list_clips, to_model_range
from see3d_jax.vae import VAEConfig

ROOT = Path(__file__).resolve().parents[1]
VAE = VAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8)  # 8x downsampling


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips") / "ds"
    write_synthetic_dataset(root, 3, frames_per_clip=5, width=40, height=36, posed=False)
    return root


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A diffusers VAE folder (what `vae=` takes), with random weights."""
    import torch
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    model = AutoencoderKL(**{k: v for k, v in VAE.to_diffusers_config().items() if k != "_class_name"})
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p)).add_(0.01 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def _encode_command(clips, vae_dir, out, devices, *extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "see3d_jax.encode_latents", "--data", str(clips), "--vae", str(vae_dir), "--out", str(out),
           "--image-size", "32", "--frames-per-device", "2", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_pre_pass_encodes_every_frame_over_devices_and_resumes(clips, vae_dir, tmp_path):
    from see3d_jax.train import load_encoder

    out = tmp_path / "latents"
    # 2 devices x 2 frames: a clip of 5 frames takes two blocks, the second padded
    first = _encode_command(clips, vae_dir, out, 2)
    assert first["devices"] == 2 and first["clips"] == 3 and first["encoded"] == 3
    encoder = load_encoder(str(vae_dir))
    for clip_dir, num_frames in list_clips(clips, 2):
        cached = np.load(out / f"{Path(clip_dir).name}.npy")
        frames = to_model_range(square_resize(read_clip(clip_dir).frames, 32))
        direct = np.asarray(jax.jit(encoder.apply)(encoder.params, frames))
        assert cached.shape == (num_frames, 4, 4, 4)
        np.testing.assert_allclose(cached, direct, atol=1e-5 * float(np.abs(direct).max()))
    (out / f"{Path(list_clips(clips, 2)[1][0]).name}.npy").unlink()  # as if stopped before this clip
    again = _encode_command(clips, vae_dir, out, 1)
    assert again["encoded"] == 1 and again["already_cached"] == 2
    done = subprocess.run([sys.executable, "-m", "see3d_jax.encode_latents", "--data", str(clips), "--vae", str(vae_dir), "--out", str(out),
                           "--image-size", "64"], env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=900)
    assert done.returncode != 0 and "cache.json" in done.stderr  # another size is not mixed into the same cache


@pytest.mark.slow
def test_the_trainer_reads_the_pre_pass_cache_without_encoding_again(clips, vae_dir, tmp_path):
    from see3d_jax.train import run
    from see3d_jax.train_config import preset

    out = tmp_path / "latents"
    _encode_command(clips, vae_dir, out, 1)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    relative_vae = os.path.relpath(vae_dir)  # the same folder named another way is the same VAE
    cfg = preset("tiny", ["unet.pixel_space=false", "unet.in_channels=9", "unet.out_channels=4", "unet.sample_size=4",
                          f"vae={relative_vae}", "cache_latents=true", f"latent_dir={out}", "steps=1", "log_every=1",
                          "tensorboard=false", "batch_size=2"])
    summary = run(cfg, str(clips), str(tmp_path / "run"), progress=False)
    assert summary["step"] == 1 and np.isfinite(summary["loss"])
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")} == stamps  # read, not written again
    assert not (tmp_path / "run" / "latent_cache").exists()
    with pytest.raises(ValueError, match="latent_dir"):
        preset("tiny", [f"latent_dir={out}"])


def test_cached_latents_are_the_references_condition_and_only_possible_targets_are_encoded():
    config = ConditionConfig(min_references=2, max_references=3)
    views = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 5, 16, 16, 3)), jnp.float32)
    latents = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5, 2, 2, 4)), jnp.float32)
    encoded_views = []

    def encode(pixels):  # a stand-in VAE that records how many views it is given
        encoded_views.append(pixels.shape[1])
        pooled = pixels.reshape(pixels.shape[:2] + (2, 8, 2, 8, 3)).mean(axis=(3, 5))
        return jnp.concatenate([pooled, pooled[..., :1]], axis=-1)

    schedule = schedules.make_noise_schedule(schedules.ScheduleConfig.see3d())
    tb = cond.build_training_batch(jax.random.PRNGKey(0), views, schedule, config, encode, latents)
    assert encoded_views == [5 - 2]  # the first min_references shuffled views are always references
    ref = np.asarray(tb.is_reference)
    assert ref[:, :2].all() and ref.sum() > 6  # some samples have a third reference, which was encoded anyway
    # references: condition = their cached latents (= x0, the shuffled latents)
    np.testing.assert_array_equal(np.asarray(tb.condition)[ref], np.asarray(tb.x0)[ref])
    assert cond.reference_counts(config, 5) == (2, 3) and cond.reference_counts(config, 3) == (2, 2)
