"""Parity of the kit's released pipeline with the authors' own inference code.

    python benchmarks/parity_with_authors_code.py --authors PATH_TO_baaivision_See3D_CLONE

Imports the authors' `mv_unet.py` and `pipeline_mvd_warp_mix_classifier{,_SR}.py` from a clone
you provide (the kit does not ship their code; they need `einops`; `xformers` and `kiui`, which
do not install on a CPU machine, are replaced by stand-ins written to a temporary folder:
`memory_efficient_attention` = torch's scaled_dot_product_attention, `orbit_camera` unused).
Builds a tiny random folder in the released layout, runs both pipelines on the same inputs
(warps whose hole pixels are not black) with the same noise (the authors' random draws are
recorded and fed to the kit), for both branches of `timestep_scaling` and both stages, and
prints the largest difference of the final target images in [0, 1]. CPU, float32, ~3 minutes.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection, CLIPTokenizer, CLIPImageProcessorPil
from see3d_core.released_layout import CLIP_VISION_DIR, released_unet_dir
from see3d_torch import pipeline as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_pipeline as tp  # noqa: E402  (the tiny released-layout writers of the test suite)

CONTEXT_DIM = tp.CONTEXT_DIM


def make_root(tmp, scaling):
    root = Path(tmp) / f"release_{scaling}"
    (root).mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "MVDreamPipeline"}))
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                  steps_offset=1, clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading").save_pretrained(root / "scheduler")
    tp._set_scheduler_keys(root, timestep_scaling=scaling)
    tp._write_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=6, hidden_size=CONTEXT_DIM, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4, norm_num_groups=4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.save_pretrained(root / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                   image_size=32, patch_size=8, projection_dim=CONTEXT_DIM)).save_pretrained(root / CLIP_VISION_DIR)
    (root / CLIP_VISION_DIR / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_resize": True,
        "do_normalize": True, "resample": 3, "image_processor_type": "CLIPImageProcessor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }))
    for i, variant in enumerate(("single", "sparse", "SR")):
        tp._write_released_unet(root, variant, seed=i)
    return root


class Recorder:
    def __init__(self):
        self.draws = []

    def wrap(self, fn):
        def inner(*a, **k):
            out = fn(*a, **k)
            self.draws.append(out.detach().clone())
            return out
        return inner


def run_authors(root, variant, sr, images, masks, gt_num, steps, guidance):
    import diffusers.models.autoencoders.vae as vae_mod
    module = __import__("pipeline_mvd_warp_mix_classifier_SR" if sr else "pipeline_mvd_warp_mix_classifier")
    from mv_unet import MultiViewUNetModel
    rec = Recorder()
    orig = (module.randn_tensor, vae_mod.randn_tensor, torch.randn_like)
    module.randn_tensor = rec.wrap(orig[0]); vae_mod.randn_tensor = rec.wrap(orig[1]); torch.randn_like = rec.wrap(orig[2])
    try:
        unet = MultiViewUNetModel.from_pretrained(str(released_unet_dir(root, variant)))
        pipe = module.MVDreamPipeline(
            vae=AutoencoderKL.from_pretrained(root / "vae"), unet=unet, tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
            text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
            scheduler=DDIMScheduler.from_pretrained(root / "scheduler"),
            feature_extractor=CLIPImageProcessorPil.from_pretrained(root / CLIP_VISION_DIR),
            image_encoder=CLIPVisionModelWithProjection.from_pretrained(root / CLIP_VISION_DIR))
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_scaling="trailing", rescale_betas_zero_snr=True)
        pipe.set_progress_bar_config(disable=True)
        torch.manual_seed(1234)
        out, _ = pipe(prompt=[""], image=images[None], masks=masks[None], height=images.shape[-2], width=images.shape[-1],
                      guidance_scale=guidance, num_inference_steps=steps, guidance_rescale=0.0, num_frames=images.shape[0],
                      condition_num_frames=gt_num, gt_frame=None, output_type="numpy", device=torch.device("cpu"))
    finally:
        module.randn_tensor, vae_mod.randn_tensor, torch.randn_like = orig
    return out, rec.draws


def run_kit(root, variant, refs01, targets01, target_masks, draws, steps, settings):
    posterior, initial, pre, *per_step = draws
    pipe = pl.See3DPipeline.from_pretrained(root, variant=variant)
    eps_iter = iter([posterior])

    def encode(pixels, generator):
        dist = pipe.vae.encode(pixels).latent_dist
        return (dist.mean + dist.std * next(eps_iter)) * pipe.scaling_factor

    pipe.encode = encode
    orig_draw = pl.SamplerNoise.draw
    pl.SamplerNoise.draw = classmethod(lambda cls, g, n, shape, **k: cls(initial=initial[None], condition=torch.stack(per_step)[:, None],
                                                                           step=torch.zeros((n,) + tuple(shape))))
    try:
        out = pipe(refs01, targets01, target_masks, seed=0, settings=settings)
    finally:
        pl.SamplerNoise.draw = orig_draw
    return out


def inputs(size, n_ref, n_tgt, seed, hole_value):
    rng = np.random.default_rng(seed)
    u8 = rng.integers(0, 256, (n_ref + n_tgt, size, size, 3), dtype=np.uint8)
    u8 = np.asarray([np.asarray(Image.fromarray(im).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(2))) for im in u8])
    masks = np.ones((n_ref + n_tgt, size, size), np.float32)
    for i in range(n_ref, n_ref + n_tgt):
        masks[i, rng.integers(0, size // 2):, : rng.integers(size // 4, size)] = 0
    u8[masks == 0] = hole_value  # non-black holes (as generated content in the SR stage)
    images = torch.from_numpy(u8).float().permute(0, 3, 1, 2) / 127.5 - 1  # inference.py's PIL2tensor
    return u8, images, torch.from_numpy(masks)[:, None]


def install_stand_ins(folder: Path) -> None:
    """xformers and kiui stand-ins on sys.path (the authors' modules import them at import time)."""
    (folder / "xformers").mkdir(parents=True)
    (folder / "xformers" / "__init__.py").write_text("from . import ops\n")
    (folder / "xformers" / "ops.py").write_text(
        "import torch.nn.functional as F\n\n\ndef memory_efficient_attention(q, k, v, attn_bias=None, op=None):\n"
        "    return F.scaled_dot_product_attention(q, k, v)\n")
    (folder / "kiui").mkdir()
    (folder / "kiui" / "__init__.py").write_text("")
    (folder / "kiui" / "cam.py").write_text("def orbit_camera(*args, **kwargs):\n    raise NotImplementedError\n")
    sys.path.insert(0, str(folder))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", required=True, help="a clone of baaivision/See3D (mv_unet.py, pipeline_mvd_warp_mix_classifier*.py)")
    args = parser.parse_args()
    authors = Path(args.authors)
    for name in ("mv_unet.py", "pipeline_mvd_warp_mix_classifier.py", "pipeline_mvd_warp_mix_classifier_SR.py"):
        if not (authors / name).is_file():
            sys.exit(f"--authors {authors}: {name} not found (expected a clone of baaivision/See3D)")
    sys.path.insert(0, str(authors))
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        install_stand_ins(Path(tmp) / "stand_ins")
        for scaling in ("trailing", "leading"):
            root = make_root(tmp, scaling)
            for stage, variant, steps, guidance, size in (("base", "sparse", 50, 2.0, 64), ("SR", "SR", 30, 1.0, 128)):
                u8, images, masks = inputs(size, 2, 3, seed=7, hole_value=150)
                authors, draws = run_authors(root, variant, stage == "SR", images, masks, 2, steps, guidance)
                settings = pl.SamplingSettings.base() if stage == "base" else pl.SamplingSettings.super_resolution()
                kit = run_kit(root, variant, u8[:2] / np.float32(255), u8[2:] / np.float32(255), masks[2:, 0].numpy(), draws, steps, settings)
                diff = float(np.abs(kit - authors[2:]).max())
                results[f"{stage} / timestep_scaling={scaling}"] = (diff, len(draws) - 3)
                print(f"{stage:4s} timestep_scaling={scaling:8s} steps run={len(draws) - 3:2d}  max |kit - authors| = {diff:.2e}  "
                      f"(image range {authors[2:].min():.2f}..{authors[2:].max():.2f}, std {authors[2:].std():.3f})", flush=True)
