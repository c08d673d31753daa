"""The released-weights pipeline behaves as the authors' inference code (issue: exact parity).

Each behaviour of `baaivision/See3D` (`pipeline_mvd_warp_mix_classifier*.py`, `mv_diffusion*.py`,
`inference.py`) that the kit reproduces has a test here on the tiny random released-layout
folder of `test_pipeline.py`; the authors' code itself is not shipped."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from see3d_core import diffusion
from see3d_core.released_layout import CLIP_VISION_DIR, released_unet_dir
from see3d_core.weights import WeightsError, resolve_weights, safetensors_header
from see3d_torch import pipeline as pl
from see3d_torch.pipeline import SamplingSettings, See3DPipeline

from test_pipeline import _set_scheduler_keys, _views, release_root  # noqa: F401  (the module fixture)

TWO = SamplingSettings(num_inference_steps=2, guidance_scale=2.0)


def _copy(release_root, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(release_root, root)
    return root


def _timesteps_seen(pipe, settings=TWO):
    seen = []
    forward = pipe.unet.forward

    def spy(sample, t, context):
        seen.append(int(t[0]))
        return forward(sample, t, context)

    pipe.unet.forward = spy
    pipe(*_views(n_tgt=1, size=8), seed=0, settings=settings)
    return seen


@pytest.mark.parametrize("keys,want", [
    ({"timestep_scaling": "trailing", "timestep_spacing": "leading"}, [999, 500, 1]),  # the authors' list, r = 999 // 2
    ({"timestep_scaling": "none", "timestep_spacing": "trailing"}, [999, 499]),  # the scheduler's own
    ({"timestep_scaling": None, "timestep_spacing": "leading", "steps_offset": 0}, [501, 1]),  # key absent; offset forced to 1
])
def test_timesteps_follow_the_scheduler_file_as_the_authors_code(release_root, tmp_path, keys, want):
    root = _copy(release_root, tmp_path)
    _set_scheduler_keys(root, **keys)
    pipe = See3DPipeline.from_pretrained(root, variant="sparse")
    assert _timesteps_seen(pipe) == want
    assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.clip_sample
    assert pipe.scheduler.config.rescale_betas_zero_snr
    if keys["timestep_scaling"] is None:
        assert "raises" in pipe.timesteps_note  # says what the kit does where the authors' code fails


def test_released_step_counts_of_both_stages(release_root):
    pipe = See3DPipeline.from_pretrained(release_root, variant="sparse")  # the fixture's file says "trailing"
    for settings, steps in ((SamplingSettings.base(), 53), (SamplingSettings.super_resolution(), 31)):
        config = pipe.sampler_config(settings)
        assert diffusion.num_sampler_steps(config) == steps and config.guidance_scale == settings.guidance_scale


def test_condition_images_are_encoded_as_given(release_root):
    """Hole pixels are not repainted (the authors encode warps and base outputs as they are)."""
    pipe = See3DPipeline.from_pretrained(release_root, variant="sparse")
    refs, targets, masks = _views(n_tgt=2, size=8)
    targets[masks < 0.5] = 0.7  # generated content in the holes, as the SR stage sees it
    encoded = []
    encode = pipe.vae.encode

    def spy(pixels):
        encoded.append(pixels.clone())
        return encode(pixels)

    pipe.vae.encode = spy
    pipe(refs, targets, masks, seed=0, settings=TWO)
    got = torch.cat(encoded)
    want = torch.from_numpy(np.concatenate([refs, targets])).permute(0, 3, 1, 2) * 2 - 1
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_precision_per_component(release_root):
    """Text encoder, UNet, VAE in the chosen dtype; CLIP vision in float32 (as mv_diffusion.py loads it)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = See3DPipeline.from_pretrained(release_root, variant="sparse", torch_dtype=torch.bfloat16)
    assert pipe.image_encoder.dtype == torch.float32
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    tok = CLIPTokenizer.from_pretrained(release_root / "tokenizer")
    text = CLIPTextModel.from_pretrained(release_root / "text_encoder", dtype=torch.bfloat16)
    with torch.no_grad():
        want = text(tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    torch.testing.assert_close(pipe.empty_prompt, want, rtol=0, atol=0)
    refs = torch.rand(1, 3, 8, 8)
    assert pipe.clip_pixels(refs).dtype == torch.bfloat16  # rounded to the text encoder's dtype, as theirs


def test_mask_images_read_from_disk_threshold_at_0_9(tmp_path):
    values = np.array([[229, 230, 255, 0]], np.uint8)  # 229 / 255 = 0.898, 230 / 255 = 0.902
    Image.fromarray(values, mode="L").save(tmp_path / "mask_L.png")
    Image.fromarray(np.repeat(values[..., None], 3, -1)).save(tmp_path / "mask_rgb.png")
    for name in ("mask_L.png", "mask_rgb.png"):
        np.testing.assert_array_equal(pl.read_mask_image(tmp_path / name), [[0, 1, 1, 0]])
    with pytest.raises(ValueError, match="mask_missing.png"):
        pl.read_mask_image(tmp_path / "mask_missing.png")


def _authors_sr_batches(num_refs, num_targets):
    """A transcription of inference.py's SR loop indices (which target outputs each batch holds)."""
    group = (num_refs + num_targets + 3) // 2
    done, batches = [], []
    for i in range(0, num_targets, group):
        carried = [done[len(done) // 2], done[-1]] if done else []
        new = list(range(i, min(i + group, num_targets)))
        batches.append((carried, new))
        done += new
    return batches


@pytest.mark.parametrize("refs,targets", [(1, 8), (3, 20), (2, 3), (1, 1)])
def test_sr_groups_as_inference_py(refs, targets):
    groups = pl.released_sr_groups(refs, targets)
    assert [(list(g.carried), list(g.targets)) for g in groups] == _authors_sr_batches(refs, targets)
    assert sorted(i for g in groups for i in g.targets) == list(range(targets))


def test_super_resolve_feeds_carried_views_and_their_own_masks():
    calls = []

    class FakePipe:
        def __call__(self, references, images, masks, *, seed, settings, progress=None):
            calls.append((references, images, masks))
            return np.clip(images + 0.1, 0, 1)

    rng = np.random.default_rng(0)
    refs = rng.uniform(size=(1, 8, 8, 3)).astype(np.float32)
    generated = rng.uniform(size=(8, 8, 8, 3)).astype(np.float32)
    masks = (rng.uniform(size=(8, 8, 8)) > 0.5).astype(np.float32)
    out = pl.super_resolve(FakePipe(), refs, generated, masks)
    assert len(calls) == 2 and calls[0][1].shape[0] == 6 and calls[1][1].shape[0] == 4  # 2 carried + 2 new
    np.testing.assert_allclose(out, np.clip(generated + 0.1, 0, 1))
    carried = calls[1][1][:2]  # SR outputs of targets 3 and 5 through uint8, as the authors' PIL images
    np.testing.assert_array_equal(carried, pl.to_uint8(out[[3, 5]]).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(calls[1][2], masks[[3, 5, 6, 7]])  # each view with its own mask
    single = pl.super_resolve(FakePipe(), refs, generated, masks, grouping="single")
    assert calls[-1][1].shape[0] == 8 and single.shape == generated.shape
    with pytest.raises(ValueError, match="grouping"):
        pl.super_resolve(FakePipe(), refs, generated, masks, grouping="pairs")


def test_super_resolution_inputs_are_made_as_inference_py():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
    masks = np.zeros((2, 8, 8), np.float32)
    masks[:, 2:6, 2:6] = 1
    refs2, gen2, masks2 = pl.super_resolution_inputs(images[:1], images, masks)
    for i in range(2):  # uint8 (numpy_to_pil rounds), PIL default (bicubic) resize
        want = np.asarray(Image.fromarray((images[i] * 255).round().astype(np.uint8)).resize((16, 16)), np.float32) / 255
        np.testing.assert_array_equal(gen2[i], want)
        mask = np.asarray(Image.fromarray((masks[i] * 255).astype(np.uint8), mode="L").resize((16, 16)), np.float32) / 255 > 0.9
        np.testing.assert_array_equal(masks2[i], mask)
    assert refs2.shape == (1, 16, 16, 3)


# --- weights by name -------------------------------------------------------------------------------

def _fake_hub_cache(release_root, cache, repo="bruiiii/See3D", subfolder="MVD_weights"):
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(release_root, repo_dir / "snapshots" / commit / subfolder)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir / "snapshots" / commit / subfolder


def test_weights_resolve_by_repository_id_from_the_cache(release_root, tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    folder = _fake_hub_cache(release_root, cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert pl.resolve_release("bruiiii/See3D", "sparse", offline=True) == folder  # found one level down
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline from the environment
    pipe = See3DPipeline.from_pretrained("bruiiii/See3D", variant="sparse")
    assert pipe.unet is not None
    with pytest.raises(WeightsError, match="someone/missing"):
        resolve_weights("someone/missing", offline=True)
    with pytest.raises(FileNotFoundError, match="not/a/folder/here"):
        resolve_weights("not/a/folder/here")


def test_released_allow_patterns_fetch_one_unet_only():
    patterns = pl.released_allow_patterns("single")
    assert "unet/single/ema-checkpoint/*" in patterns and not any("sparse" in p or "SR/" in p for p in patterns)


# --- damaged weights are named ------------------------------------------------------------------------

def test_truncated_corrupt_and_mismatched_weights_are_named(release_root, tmp_path):
    root = _copy(release_root, tmp_path)
    weights = released_unet_dir(root, "sparse") / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])  # a partial download
    with pytest.raises(WeightsError, match="truncated.*partial download"):
        See3DPipeline.from_pretrained(root, variant="sparse")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightsError, match="corrupt safetensors header"):
        See3DPipeline.from_pretrained(root, variant="sparse")
    weights.write_bytes(b"abc")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        safetensors_header(weights)

    from safetensors.torch import load_file, save_file

    weights.write_bytes(data)
    state = load_file(str(weights))
    name = sorted(state)[5]
    save_file({k: v for k, v in state.items() if k != name}, str(weights))
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        See3DPipeline.from_pretrained(root, variant="sparse")
    weights.write_bytes(data)
    config_path = released_unet_dir(root, "sparse") / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "in_channels": 5}))
    with pytest.raises(WeightsError, match="9 input channels.*in_channels=5"):
        See3DPipeline.from_pretrained(root, variant="sparse")
    config_path.write_text(json.dumps(config))
    vae = root / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:-10])
    with pytest.raises(WeightsError, match="vae"):
        See3DPipeline.from_pretrained(root, variant="sparse")
    assert (root / CLIP_VISION_DIR).is_dir()


# --- the authors' folder layout through `see3d released` -----------------------------------------------

def _write_authors_layout(folder, size=16, n_warps=2):
    rng = np.random.default_rng(3)
    refs, warps = folder / "reference_images", folder / "warp_images"
    refs.mkdir(parents=True)
    warps.mkdir()
    Image.fromarray(rng.integers(0, 256, (size + 4, size + 4, 3), dtype=np.uint8)).save(refs / "b_ref.png")
    for k in range(n_warps):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(warps / f"warp_{k:03d}.png")
        mask = np.full((size, size), 255, np.uint8)
        mask[: size // 2, k:] = 0
        Image.fromarray(mask, mode="L").save(warps / f"mask_{k:03d}.png")
    return refs, warps


def test_released_inputs_are_read_as_inference_py(tmp_path):
    refs, warps = _write_authors_layout(tmp_path)
    references, images, masks, names = pl.load_released_inputs(refs, warps, (16, 16))
    assert references.shape == (1, 16, 16, 3) and images.shape == (2, 16, 16, 3) and names == ["warp_000", "warp_001"]
    want = np.asarray(Image.open(refs / "b_ref.png").convert("RGB").resize((16, 16)), np.float32) / np.float32(255)
    np.testing.assert_array_equal(references[0], want)  # PIL's default (bicubic) resize, as PIL2tensor
    np.testing.assert_array_equal(masks[1], pl.read_mask_image(warps / "mask_001.png", (16, 16)))
    (warps / "mask_001.png").unlink()
    with pytest.raises(FileNotFoundError, match="mask_001.png"):
        pl.load_released_inputs(refs, warps, (16, 16))


@pytest.mark.slow
def test_released_command_writes_base_and_sr_views(release_root, tmp_path, capsys):
    from see3d_cli import main as cli

    refs, warps = _write_authors_layout(tmp_path)
    out = tmp_path / "out"
    argv = ["released", str(refs), str(warps), "--weights", str(release_root), "--size", "16", "--device", "cpu",
            "--super-resolution", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["references"] == 1 and summary["warps"] == 2
    for name in ("predict_warp_000.png", "predict_warp_001.png"):
        assert Image.open(out / name).size == (16, 16)
        assert Image.open(out / ("SR_" + name)).size == (32, 32)
    assert cli.main(["released", str(refs), str(tmp_path / "nowhere"), "--weights", str(release_root), "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_depth_anything_resolves_by_repository_id(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    from see3d_torch.mono_depth import DepthAnything

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=14,
                            image_size=518, out_features=["stage1"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16],
                                 reassemble_factors=[1], fusion_hidden_size=16, head_hidden_size=8)
    cache = tmp_path / "hub"
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo = cache / "models--depth-anything--Depth-Anything-V2-Small-hf"
    DepthAnythingForDepthEstimation(config).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    estimator = DepthAnything()  # the default repository id, from the (fake) cache: HF_HUB_OFFLINE=1 in the suite
    assert estimator.model is not None
