"""Train-step throughput, compile time and MFU of the multi-view UNet.

    .venv/bin/python benchmarks/bench_train.py --config tiny
    .venv/bin/python benchmarks/bench_train.py --config small
    # on a GPU / TPU (pip install -e ".[jax,jax-cuda]"):
    python benchmarks/bench_train.py --config sd21 --resolution 256 --views 4 --batch 8 \
        --dtype bfloat16 --attention cudnn --peak-tflops 989      # H100 SXM bf16 dense peak

Times `Trainer.step` (visual condition + UNet forward/backward + AdamW + EMA) on random views
already on device. Model FLOPs are analytic (`Trainer.flops_per_step`: 3x the forward),
MFU = model FLOPs / step time / (peak x devices); HFU the same with `Trainer.hardware_flops_per_step`
(remat and flash-attention recompute, VAE; README). Latent configs use a stand-in encoder (8x8
average pooling to the latent channels) so the number measures the UNet step alone, without
the VAE. On GPUs and TPUs the peak device memory of device 0 is reported too.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def stand_in_encoder(channels: int):
    def encode(pixels):  # [B, K, H, W, 3] -> [B, K, H/8, W/8, channels], negligible FLOPs
        b, k, h, w, _ = pixels.shape
        pooled = pixels.reshape(b, k, h // 8, 8, w // 8, 8, 3).mean(axis=(3, 5))
        return jnp.concatenate([pooled, pooled[..., :1]] * ((channels + 3) // 4), axis=-1)[..., :channels]

    return encode


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", help="training config: a preset (tiny, small, sd21) or a recipe (demo, or a .py file)")
    parser.add_argument("--resolution", type=int, default=None, help="image size in pixels (default: the config's)")
    parser.add_argument("--views", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="global batch (samples)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default=None)
    parser.add_argument("--attention", default=None, help="attention_implementation: auto, xla, blockwise, cudnn, pallas")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after one compile step)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense TFLOP/s per device, for MFU")
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides")
    args = parser.parse_args(argv)

    from see3d_jax.train import Trainer
    from see3d_jax.train_config import load_config

    overrides = list(args.overrides)
    for key, value in (("num_views", args.views), ("batch_size", args.batch), ("compute_dtype", args.dtype), ("remat", args.remat),
                       ("attention_implementation", args.attention)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    cfg = load_config(args.config, overrides)
    if args.resolution is not None:
        size = args.resolution if cfg.unet.pixel_space else args.resolution // 8
        cfg = load_config(args.config, overrides + [f"unet.sample_size={size}"])
    encode = None if cfg.unet.pixel_space else stand_in_encoder(cfg.unet.sample_channels)
    trainer = Trainer(cfg, encode_fn=encode)
    state = trainer.init_state()
    views = np.random.default_rng(0).uniform(-1, 1, (cfg.batch_size, cfg.num_views, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    batch = trainer.global_batch({"views": views})

    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready((state, metrics))
    compile_seconds, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
    times, c0 = [], time.process_time()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = trainer.step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step, step_cpu = float(np.median(times)), (time.process_time() - c0) / args.steps
    flops, hardware_flops = trainer.flops_per_step(), trainer.hardware_flops_per_step()
    result = {
        "config": args.config, "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "host": platform.node(),
        "image_size": cfg.image_size, "model_size": cfg.unet.sample_size, "views": cfg.num_views, "batch": cfg.batch_size,
        "dtype": cfg.compute_dtype, "remat": cfg.remat, "compile_and_first_step_s": compile_seconds,
        "compile_and_first_step_cpu_s": compile_cpu, "step_s_median": step, "step_cpu_s_mean": step_cpu, "samples_per_s": cfg.batch_size / step, "images_per_s": cfg.batch_size * cfg.num_views / step,
        "train_tflop_per_step": flops / 1e12, "hardware_tflop_per_step": hardware_flops / 1e12,
        "achieved_tflop_s": flops / step / 1e12, "loss": float(metrics["loss"]), "attention": cfg.attention_implementation,
    }
    stats = jax.devices()[0].memory_stats() or {}  # GPUs and TPUs report it; CPUs do not
    if "peak_bytes_in_use" in stats:
        result["peak_memory_gib_device0"] = stats["peak_bytes_in_use"] / 2**30
    if args.peak_tflops:
        result["mfu"] = flops / step / (args.peak_tflops * 1e12 * jax.device_count())
        result["hfu"] = hardware_flops / step / (args.peak_tflops * 1e12 * jax.device_count())
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
