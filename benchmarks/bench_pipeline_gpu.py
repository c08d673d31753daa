"""Sampling latency and peak memory of the released-size See3D pipeline (prepared for one GPU call).

    python benchmarks/bench_pipeline_gpu.py --out DIR              # released sizes, CUDA, float16
    python benchmarks/bench_pipeline_gpu.py --size tiny --out DIR  # the same code path on a CPU, in seconds

Builds random weights of the released architecture in memory (SD-2.1 multi-view UNet, 866M
parameters; the SD VAE; a CLIP-H vision tower; the empty-prompt embedding as a random
[1, 77, 1024] tensor, since only its shape matters for timing) and runs
- the base stage: 50 steps with the authors' trailing list (53 model calls), guidance 2,
  `--views` views (2 references + the rest targets) at 512^2;
- the SR stage at 1024^2 (30 steps, 31 calls, guidance 1) over `inference.py`'s groups.
Writes `DIR/bench_pipeline.json` and prints a Markdown row for benchmarks/RESULTS.md: seconds
per generated image, per stage, peak memory, the device. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from see3d_core import unet_config as uc
from see3d_torch import pipeline as pl
from see3d_torch.unet import MultiViewUNet

SIZES = {
    # UNet preset, VAE blocks, CLIP vision (hidden, layers, heads, mlp, patch, image), base image side
    "released": (uc.sd21, (128, 256, 512, 512), (1280, 32, 16, 5120, 14, 224), 512),
    "tiny": (uc.tiny, (8, 8, 8, 8), (32, 1, 2, 64, 8, 32), 64),
}


def build_pipeline(size: str, variant: str, device: torch.device, dtype: torch.dtype) -> pl.See3DPipeline:
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as Processor

    unet_preset, vae_blocks, (hidden, layers, heads, mlp, patch, image), _ = SIZES[size]
    torch.manual_seed(0)
    config = dataclasses.replace(unet_preset(), in_channels=9, out_channels=4, pixel_space=False)  # the released 9-channel latent input
    with torch.device(device):
        unet = MultiViewUNet(config).to(dtype).eval()
        vae = AutoencoderKL(block_out_channels=vae_blocks, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2 if size == "released" else 1,
                            norm_num_groups=32 if size == "released" else 4, latent_channels=4).to(dtype).eval()
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp, patch_size=patch,
            image_size=image, projection_dim=config.context_dim)).eval()
        empty_prompt = torch.randn(1, 77, config.context_dim, dtype=dtype)
    processor = Processor(size={"shortest_edge": image}, crop_size={"height": image, "width": image})
    scheduler, released_timesteps, note = pl.released_scheduler({
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
        "set_alpha_to_one": False, "timestep_spacing": "leading", "timestep_scaling": "trailing", "_class_name": "DDIMScheduler"})
    return pl.See3DPipeline(unet, vae, scheduler, empty_prompt, vision, processor, device, dtype, vae_slice=1,
                            released_timesteps=released_timesteps, timesteps_note=note)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(size: str, views: int, device: torch.device, dtype: torch.dtype, steps: tuple[int, int]) -> dict:
    side = SIZES[size][3]
    rng = np.random.default_rng(0)
    refs = rng.uniform(size=(2, side, side, 3)).astype(np.float32)
    targets = rng.uniform(size=(views - 2, side, side, 3)).astype(np.float32)
    masks = (rng.uniform(size=(views - 2, side, side)) > 0.3).astype(np.float32)
    record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": str(dtype),
              "size": size, "views": views, "targets": views - 2}
    for stage, variant, settings in (("base", "sparse", pl.SamplingSettings(num_inference_steps=steps[0])),
                                     ("sr", "SR", pl.SamplingSettings.super_resolution())):
        if stage == "sr":
            settings = pl.SamplingSettings(num_inference_steps=steps[1], guidance_scale=1.0, condition=pl.SR_CONDITION)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        pipe = build_pipeline(size, variant, device, dtype)
        calls = pipe.num_steps(settings)
        if stage == "base":
            pipe(refs, targets[:1], masks[:1], seed=0, settings=pl.SamplingSettings(num_inference_steps=1))  # warm-up (cuDNN plans)
            synchronize(device)
            start = time.perf_counter()
            generated = pipe(refs, targets, masks, seed=0, settings=settings)
        else:
            refs_2x, generated_2x, masks_2x = pl.super_resolution_inputs(refs, generated, masks)
            synchronize(device)
            start = time.perf_counter()
            pl.super_resolve(pipe, refs_2x, generated_2x, masks_2x, seed=0, settings=settings)
        synchronize(device)
        seconds = time.perf_counter() - start
        record[stage] = {"seconds": round(seconds, 2), "seconds_per_image": round(seconds / (views - 2), 3), "model_calls": calls,
                         "image_side": side * (2 if stage == "sr" else 1),
                         "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}
        pipe.free()
        del pipe
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="released")
    parser.add_argument("--views", type=int, default=8, help="views per base call: 2 references + targets")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, nargs=2, default=(50, 30), metavar=("BASE", "SR"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.views < 3:
        parser.error("--views: at least 3 (2 references and a target)")
    record = run(args.size, args.views, device, dtype, tuple(args.steps))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_pipeline.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    b, s = record["base"], record["sr"]
    print(f"| {record['device']} {record['dtype']} | base {b['image_side']}^2, {record['views']} views, {b['model_calls']} calls: "
          f"{b['seconds']} s ({b['seconds_per_image']} s/image), peak {b['peak_memory_gib']} GiB | SR {s['image_side']}^2: "
          f"{s['seconds']} s ({s['seconds_per_image']} s/image), peak {s['peak_memory_gib']} GiB |")


if __name__ == "__main__":
    main()
