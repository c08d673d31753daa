"""See3D pipeline on a tiny random checkpoint in the released layout (local files only)."""

import json
import shutil

import numpy as np
import pytest
import torch

from see3d_core.released_layout import CLIP_VISION_DIR, released_unet_dir
from see3d_core.unet_config import UNetConfig
from see3d_torch.pipeline import SamplingSettings, See3DPipeline, generate_with_super_resolution, sorted_image_files
from see3d_torch.unet import MultiViewUNet

CONTEXT_DIM = 32
TINY_UNET = UNetConfig(
    in_channels=9, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(1, 2), num_head_channels=16, context_dim=CONTEXT_DIM, sample_size=8,
)


def _write_tokenizer(folder):
    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "pad_token": "<|endoftext|>"}))


def _write_released_unet(root, variant, seed):
    folder = released_unet_dir(root, variant)
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    unet = MultiViewUNet(TINY_UNET, camera_dim=16)
    with torch.no_grad():  # the released out conv is trained, not zero: make outputs non-trivial
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    unet.save_pretrained(folder)
    c = TINY_UNET
    released = {  # MVDream's MultiViewUNetModel config dialect, as in the released folders
        "_class_name": "MultiViewUNetModel", "image_size": c.sample_size, "in_channels": c.in_channels,
        "out_channels": c.out_channels, "model_channels": c.model_channels, "num_res_blocks": c.num_res_blocks,
        "attention_resolutions": list(c.attention_resolutions), "channel_mult": list(c.channel_mult),
        "num_head_channels": c.num_head_channels, "context_dim": c.context_dim, "transformer_depth": 1, "camera_dim": 16,
    }
    (folder / "config.json").write_text(json.dumps(released))


def _set_scheduler_keys(root, **keys):
    """Edit the folder's scheduler_config.json (None removes a key)."""
    path = root / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    for key, value in keys.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def release_root(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("see3d_release")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "MVDreamPipeline"}))
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                  steps_offset=1, clip_sample=False, set_alpha_to_one=False).save_pretrained(root / "scheduler")
    _set_scheduler_keys(root, timestep_scaling="trailing")
    _write_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=6, hidden_size=CONTEXT_DIM, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1).save_pretrained(root / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                   image_size=32, patch_size=8, projection_dim=CONTEXT_DIM)).save_pretrained(root / CLIP_VISION_DIR)
    (root / CLIP_VISION_DIR / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }))
    for i, variant in enumerate(("single", "sparse", "SR")):
        _write_released_unet(root, variant, seed=i)
    return root


def _views(n_ref=1, n_tgt=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    refs = rng.uniform(0, 1, (n_ref, size, size, 3)).astype(np.float32)
    targets = rng.uniform(0, 1, (n_tgt, size, size, 3)).astype(np.float32)
    masks = (rng.uniform(size=(n_tgt, size, size)) > 0.4).astype(np.float32)
    return refs, targets, masks


FAST = SamplingSettings(num_inference_steps=3, guidance_scale=2.0)


def test_released_layout_loads_and_generation_is_seeded(release_root):
    pipe = See3DPipeline.from_pretrained(release_root, variant="sparse")
    assert pipe.unet.camera_dim == 16  # the released dialect's camera embedding is loaded, unused
    assert pipe.scheduler.config.rescale_betas_zero_snr and pipe.released_timesteps  # the fixture says "trailing"
    refs, targets, masks = _views()
    a = pipe(refs, targets, masks, seed=3, settings=FAST)
    b = pipe(refs, targets, masks, seed=3, settings=FAST)
    c = pipe(refs, targets, masks, seed=4, settings=FAST)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_unet_inputs_context_and_guidance(release_root):
    """9 channels cat([x_t, V, M]); both guidance branches in one call with the same context;
    the unconditional branch zeroes V and M on targets only; context = "" + 0.2 CLIP(ref 0)."""
    pipe = See3DPipeline.from_pretrained(release_root, variant="single")
    refs, targets, masks = _views(n_ref=2, n_tgt=1)
    calls = []
    forward = pipe.unet.forward

    def spy(sample, t, context):
        calls.append((sample.clone(), t.clone(), context.clone()))
        return forward(sample, t, context)

    pipe.unet.forward = spy
    pipe(refs, targets, masks, seed=0, settings=SamplingSettings(num_inference_steps=2, guidance_scale=2.0))
    assert len(calls) == 3  # the authors' trailing list for n = 2: 999, 500, 1
    sample, t, context = calls[0]
    assert sample.shape == (2, 3, 9, 8, 8)  # guidance batches cond + uncond; 2 refs + 1 target
    assert [int(c[1][0]) for c in calls] == [999, 500, 1] and torch.equal(t[0], t[1])
    cond, uncond = sample[0], sample[1]
    torch.testing.assert_close(cond[:, :4], uncond[:, :4])  # same x_t
    torch.testing.assert_close(cond[:2], uncond[:2])  # references keep V and M
    assert uncond[2, 4:].abs().max() == 0 and cond[2, 8].sum() > 0  # target: V = M = 0 unconditionally
    assert (cond[:2, 8] == 1).all()  # reference masks are all ones (1 = known)
    torch.testing.assert_close(context[0], context[1])

    from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    tok = CLIPTokenizer.from_pretrained(release_root / "tokenizer")
    text = CLIPTextModel.from_pretrained(release_root / "text_encoder")
    vision = CLIPVisionModelWithProjection.from_pretrained(release_root / CLIP_VISION_DIR)
    with torch.no_grad():
        empty = text(tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
        first = torch.from_numpy(refs[:1]).permute(0, 3, 1, 2)
        processor = CLIPImageProcessorPil.from_pretrained(release_root / CLIP_VISION_DIR)  # the authors' (PIL) preprocessing
        pixels = processor(first, return_tensors="pt", do_rescale=False).pixel_values
        embeds = vision(pixel_values=pixels).image_embeds
    torch.testing.assert_close(context[:1], empty + 0.2 * embeds[:, None], atol=1e-5, rtol=1e-5)
    # not a torch resize: transformers' processor resizes uint8 pixels with PIL
    torch_resized = torch.nn.functional.interpolate(first, size=(32, 32), mode="bicubic", antialias=True)
    assert (pixels - processor(torch_resized, return_tensors="pt", do_rescale=False, do_resize=False).pixel_values).abs().max() > 1e-3


def test_missing_files_are_named(release_root, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(release_root, root)
    weights = released_unet_dir(root, "sparse") / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="unet/sparse/ema-checkpoint/diffusion_pytorch_model.safetensors"):
        See3DPipeline.from_pretrained(root, variant="sparse")
    shutil.rmtree(root / "vae")
    with pytest.raises(FileNotFoundError, match="vae/config.json"):
        See3DPipeline.from_pretrained(root, variant="single")
    with pytest.raises(ValueError, match="variant"):
        See3DPipeline.from_pretrained(root, variant="large")


def test_bad_inputs_are_named(release_root):
    pipe = See3DPipeline.from_pretrained(release_root, variant="sparse")
    refs, targets, masks = _views()
    with pytest.raises(ValueError, match="target_masks"):
        pipe(refs, targets, masks[:1], settings=FAST)
    with pytest.raises(ValueError, match="reference_images"):
        pipe(refs[..., :2], targets, masks, settings=FAST)
    pipe.free()
    with pytest.raises(RuntimeError, match="freed"):
        pipe(refs, targets, masks, settings=FAST)


def test_super_resolution_stage_doubles_the_size(release_root):
    refs, targets, masks = _views(size=8)
    base, upscaled = generate_with_super_resolution(
        release_root, refs, targets, masks, seed=1,
        base=SamplingSettings(num_inference_steps=2), sr=SamplingSettings(num_inference_steps=2, guidance_scale=1.0,
                                                                          condition=SamplingSettings.super_resolution().condition),
    )
    assert base.shape == (2, 8, 8, 3) and upscaled.shape == (2, 16, 16, 3)
    assert np.isfinite(upscaled).all()


def test_bfloat16_runs(release_root):
    pipe = See3DPipeline.from_pretrained(release_root, variant="sparse", torch_dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    out = pipe(*_views(n_tgt=1), seed=0, settings=SamplingSettings(num_inference_steps=2))
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_sorted_image_files(tmp_path):
    for name in ("b.png", "a.jpg", "c.txt", "A.PNG"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in sorted_image_files(tmp_path)] == ["A.PNG", "a.jpg", "b.png"]
    with pytest.raises(FileNotFoundError, match="no images"):
        sorted_image_files(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)
