"""Encode a clip dataset into latents once, before training: the latent cache's pre-pass.

    python -m see3d_jax.encode_latents --data DATA --vae VAE --out LATENTS --image-size 512

Every frame of every clip (references and targets alike: which is which is drawn every step),
resized and cropped to the training size as the data pipeline does, goes through the VAE
encoder (posterior mean x scaling factor) into ``LATENTS/<clip>.npy``: the cache that
`see3d_jax.data.cache_latents` writes, and that the trainer reads with
`cache_latents=true latent_dir=LATENTS` (same `vae=` folder and image size, checked against
`LATENTS/cache.json`; a clip missing there is encoded by the trainer itself).

Processes split the clips (`--coordinator ...` or `--distributed`, as for the trainer), each
process splits its blocks of frames over its local devices (`--frames-per-device` frames
each). A stopped run resumes: finished clips are skipped, and files are written whole.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

from see3d_jax.data import cache_latents, clip_shard
from see3d_jax.train import add_distributed_arguments, load_encoder, start_distributed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m see3d_jax.encode_latents", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="clip dataset directory (manifest.jsonl + clips)")
    parser.add_argument("--vae", required=True, help="VAE model folder (config.json + diffusion_pytorch_model.safetensors), as the trainer's vae=")
    parser.add_argument("--out", required=True, help="latent cache directory (the trainer's latent_dir=)")
    parser.add_argument("--image-size", type=int, required=True, help="training image size in pixels (8x the UNet's sample_size)")
    parser.add_argument("--vae-dtype", choices=("float32", "bfloat16"), default="float32", help="the encoder's compute dtype")
    parser.add_argument("--frames-per-device", type=int, default=16, help="frames each device encodes per call")
    parser.add_argument("--min-frames", type=int, default=2,
                        help="skip clips with fewer frames (training skips clips with fewer than num_views frames)")
    add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: not a directory")
    if args.image_size <= 0 or args.image_size % 8:
        parser.error(f"--image-size must be a positive multiple of 8 (the VAE downsamples 8x), got {args.image_size}")
    if args.frames_per_device <= 0:
        parser.error(f"--frames-per-device must be positive, got {args.frames_per_device}")
    start_distributed(args, parser)
    clips = clip_shard(args.data, max(args.min_frames, 2), False, jax.process_index(), jax.process_count())
    encoder = load_encoder(args.vae, args.vae_dtype)
    start = time.perf_counter()
    encoded = cache_latents(clips, args.out, encoder, args.image_size, vae=args.vae, chunk=args.frames_per_device)
    print(json.dumps({"process": jax.process_index(), "clips": len(clips), "encoded": encoded, "already_cached": len(clips) - encoded,
                      "devices": jax.local_device_count(), "seconds": round(time.perf_counter() - start, 2), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
