"""Temp memory per device of the compiled sd21 train step: 3D vs per-view attention, per
attention implementation. It only compiles (nothing runs), on fake CPU devices.

    .venv/bin/python benchmarks/bench_train_memory.py                      # all four variants
    .venv/bin/python benchmarks/bench_train_memory.py --variants 3d-blockwise --views 8
    .venv/bin/python benchmarks/bench_train_memory.py --variants 3d-blockwise --stablehlo bfloat16

The paper's setting: sd21 (866M parameters), 4 views of 64x64 latents (512^2 images), one
sample per device, 8 devices as data=2 x fsdp=4, bfloat16 compute, remat dots_no_batch.
Each variant compiles in its own process (`--xla_force_host_platform_device_count` must be set
before jax is imported, and an sd21 compile holds several GB of host memory). The encoder is
the stand-in of bench_train.py (8x8 average pooling): the number is the UNet step's memory.
Reported per device by `compiled.memory_analysis()`: temp (activations and scratch),
arguments (the sharded train state and batch), outputs. `--stablehlo DTYPE` lowers the step
(no compile) with a random SD VAE instead, its weights as step arguments vs as constants.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {  # name -> (3D attention across views, attention implementation)
    "3d-xla": (True, "xla"),
    "3d-blockwise": (True, "blockwise"),
    "perview-xla": (False, "xla"),
    "perview-blockwise": (False, "blockwise"),
}
GIB = 2.0**30


def _config(variant: str, views: int, latent_size: int, devices: int, fsdp: int):
    import jax

    from see3d_jax.train_config import preset

    if jax.device_count() != devices:
        raise RuntimeError(f"expected {devices} devices, jax sees {jax.device_count()} (set XLA_FLAGS before importing jax)")
    multiview, implementation = VARIANTS[variant]
    return preset("sd21", [
        f"batch_size={devices}", f"num_views={views}", f"mesh_data={devices // fsdp}", f"mesh_fsdp={fsdp}",
        "compute_dtype=bfloat16", "remat=dots_no_batch", f"attention_implementation={implementation}",
        f"unet.sample_size={latent_size}", f"unet.multiview_attention={json.dumps(multiview)}",
    ])


def _lower(trainer):
    """The train step lowered for abstract (sharded) state and batch: nothing is allocated."""
    import jax

    from see3d_jax.checkpointing import abstract_like
    from see3d_jax.sharding import activation_sharding

    cfg = trainer.config
    state = abstract_like(trainer.state_shapes, trainer.state_shardings)
    size = cfg.image_size
    batch = {"views": jax.ShapeDtypeStruct((cfg.batch_size, cfg.num_views, size, size, 3), jax.numpy.float32,
                                           sharding=trainer.batch_shardings["views"])}
    with activation_sharding(trainer.mesh, trainer.rules):
        return trainer.train_step.lower(state, batch, trainer.encoder_params)


def measure(variant: str, views: int, latent_size: int, devices: int, fsdp: int) -> dict:
    """Compile one variant in this process (jax must see `devices` CPU devices)."""
    import jax

    from benchmarks.bench_train import stand_in_encoder
    from see3d_jax.train import Trainer

    cfg = _config(variant, views, latent_size, devices, fsdp)
    trainer = Trainer(cfg, encode_fn=stand_in_encoder(cfg.unet.sample_channels))
    size = cfg.image_size
    t0, c0 = time.perf_counter(), time.process_time()
    compiled = _lower(trainer).compile()
    memory = compiled.memory_analysis()
    return {
        "variant": variant, "views": views, "latent_size": latent_size, "image_size": size, "devices": devices,
        "mesh": dict(trainer.mesh.shape), "dtype": cfg.compute_dtype, "remat": cfg.remat,
        "temp_gib_per_device": memory.temp_size_in_bytes / GIB,
        "argument_gib_per_device": memory.argument_size_in_bytes / GIB,
        "output_gib_per_device": memory.output_size_in_bytes / GIB,
        "compile_s": time.perf_counter() - t0, "compile_cpu_s": time.process_time() - c0,
        "jax": jax.__version__,
    }


def stablehlo_sizes(variant: str, views: int, latent_size: int, devices: int, fsdp: int, vae_dtype: str) -> dict:
    """StableHLO text size of the step with a randomly initialised SD VAE (83.7M parameters)
    whose parameters are step arguments (`see3d_jax.vae.LatentEncoder`, what training does)
    vs closed over (embedded as constants, as before)."""
    import jax.numpy as jnp
    from flax import nnx

    from see3d_jax.train import Trainer
    from see3d_jax.vae import AutoencoderKL, VAEConfig, latent_encoder

    cfg = _config(variant, views, latent_size, devices, fsdp)
    encoder = latent_encoder(AutoencoderKL(VAEConfig.preset("sd"), rngs=nnx.Rngs(0)), jnp.bfloat16 if vae_dtype == "bfloat16" else jnp.float32)
    result = {"variant": variant, "views": views, "latent_size": latent_size, "vae_dtype": vae_dtype}
    for name, encode in (("arguments", encoder), ("baked", lambda pixels: encoder(pixels))):
        t0 = time.perf_counter()
        result[f"stablehlo_mb_vae_{name}"] = len(_lower(Trainer(cfg, encode_fn=encode)).as_text()) / 1e6
        result[f"lower_s_vae_{name}"] = time.perf_counter() - t0
    return result


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--latent-size", type=int, default=64, help="latent height/width (64: 512^2 images)")
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices")
    parser.add_argument("--fsdp", type=int, default=4, help="fsdp axis size (data = devices / fsdp)")
    parser.add_argument("--out", default=None, help="also append the results as JSON lines to this file")
    parser.add_argument("--stablehlo", choices=["float32", "bfloat16"], default=None,
                        help="instead of compiling: StableHLO size with an SD VAE of this dtype as step arguments vs as constants")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # one variant, this process
    args = parser.parse_args(argv)

    if args.in_process:
        if args.stablehlo:
            result = stablehlo_sizes(args.variants[0], args.views, args.latent_size, args.devices, args.fsdp, args.stablehlo)
        else:
            result = measure(args.variants[0], args.views, args.latent_size, args.devices, args.fsdp)
        print(json.dumps(result))
        return [result]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}".strip())
    results = []
    for variant in args.variants:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--in-process", "--variants", variant, "--views", str(args.views),
               "--latent-size", str(args.latent_size), "--devices", str(args.devices), "--fsdp", str(args.fsdp)]
        cmd += ["--stablehlo", args.stablehlo] if args.stablehlo else []
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{variant} failed:\n{out.stderr[-4000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    if args.stablehlo:
        return results
    by_name = {r["variant"]: r["temp_gib_per_device"] for r in results}
    for impl in ("xla", "blockwise"):
        if f"3d-{impl}" in by_name and f"perview-{impl}" in by_name:
            print(f"{impl}: 3D / per-view temp memory = {by_name[f'3d-{impl}'] / by_name[f'perview-{impl}']:.2f}x")
    if "3d-blockwise" in by_name and "perview-xla" in by_name:
        print(f"3D blockwise / per-view xla = {by_name['3d-blockwise'] / by_name['perview-xla']:.2f}x")
    return results


if __name__ == "__main__":
    main()
