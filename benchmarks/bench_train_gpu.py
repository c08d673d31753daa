"""The sd21 train step on one GPU, beside the kit's torch UNet step (prepared for one GPU call).

    python benchmarks/bench_train_gpu.py --out DIR          # sd21, 4 views, 256^2 and 512^2, bf16 (< 9 min)
    python benchmarks/bench_train_gpu.py --tiny --out DIR   # the same code path on a CPU, in a minute or two

Each measurement runs in its own process (JAX preallocates GPU memory, and each figure gets
its own peak memory), in this order, as long as `--budget-s` allows:
- JAX: `benchmarks/bench_train.py` times `see3d_jax.train.Trainer.step` (visual condition,
  UNet forward/backward, clipping, AdamW, EMA) with cuDNN attention, bfloat16 compute and the
  sd21 preset's remat (dots_no_batch): compile time (first step), samples/s, MFU and HFU
  (analytic model FLOPs / step time / peak), peak device memory. The VAE is bench_train's
  stand-in (8x8 pooling): the figure is the UNet step's.
- torch: `see3d_torch.unet.MultiViewUNet` on the same UNet config, batch and input shapes:
  SDPA attention, bf16 autocast over float32 weights, clipping, fused AdamW and an EMA update;
  eager (no torch.compile) and no gradient checkpointing. MFU by the same analytic FLOPs.
Writes `DIR/bench_train_gpu.json` and prints Markdown rows for benchmarks/RESULTS.md. The
peak bf16 TFLOP/s comes from the device name (`PEAK_BF16_TFLOPS`) or `--peak-tflops`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# dense bfloat16 peak TFLOP/s per GPU by device-name fragment (vendor data sheets, SXM parts)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
# (JAX config, image sizes, views, batch per size, timed steps)
SETTINGS = {
    "sd21": ("sd21", (256, 512), 4, {256: 16, 512: 4}, 10),
    "tiny": ("tiny", (16, 32), 3, {16: 2, 32: 2}, 2),
}


def peak_tflops_of(device_name: str) -> float | None:
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS.items() if fragment in device_name), None)


def _last_json(stdout: str) -> dict:
    """The last JSON object a child printed (bench_train prints one, indented)."""
    start = stdout.rfind("\n{")
    start = 0 if start < 0 and stdout.startswith("{") else start + 1
    return json.loads(stdout[start:])


def _child(cmd: list[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout)[-2000:], "wall_s": time.perf_counter() - start}
    result = _last_json(done.stdout)
    result["wall_s"] = time.perf_counter() - start
    return result


def torch_step(unet: dict, views: int, batch: int, steps: int) -> dict:
    """Time the torch training step (see the module doc) and return its figures."""
    import numpy as np
    import torch

    from see3d_core.unet_config import UNetConfig
    from see3d_torch.unet import MultiViewUNet

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg = UNetConfig.from_dict(unet)
    torch.manual_seed(0)
    model = MultiViewUNet(cfg).to(device).train()
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **({"fused": True} if cuda else {}))
    size = cfg.sample_size
    sample = torch.randn(batch, views, cfg.in_channels, size, size, device=device)
    target = torch.randn(batch, views, cfg.out_channels, size, size, device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    context = torch.zeros(batch, cfg.context_tokens, cfg.context_dim, device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(sample, timesteps, context)
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1e-3)
        return loss

    start = time.perf_counter()
    loss = step()
    sync()
    first = time.perf_counter() - start
    step()  # a second warm-up: SDPA / cuDNN algorithm choices and the caching allocator settle
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    result = {"framework": "torch", "torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "image_size": size * (1 if cfg.pixel_space else 8), "views": views, "batch": batch, "attention": "sdpa",
              "autocast": "bfloat16", "first_step_s": first, "step_s_median": median, "samples_per_s": batch / median,
              "loss": float(loss)}
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def _device_name(tiny: bool) -> str:
    if tiny:
        return "cpu"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for bench_train_gpu.json")
    parser.add_argument("--tiny", action="store_true", help="the tiny pixel-space config on the CPU (checks the script runs)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: from the device name)")
    parser.add_argument("--budget-s", type=float, default=510.0, help="stop starting measurements after this much wall time")
    parser.add_argument("--torch-step", default=None, help=argparse.SUPPRESS)  # child mode: JSON of the torch measurement
    args = parser.parse_args(argv)
    if args.torch_step is not None:
        spec = json.loads(args.torch_step)
        print(json.dumps(torch_step(spec["unet"], spec["views"], spec["batch"], spec["steps"])))
        return {}

    from see3d_core import unet_config
    from see3d_jax.unet import forward_flops  # analytic FLOPs only: no device is touched here

    config_name, sizes, views, batches, steps = SETTINGS["tiny" if args.tiny else "sd21"]
    device = _device_name(args.tiny)
    peak = args.peak_tflops or (None if args.tiny else peak_tflops_of(device))
    started = time.perf_counter()
    results: dict = {"device": device, "peak_tflops": peak, "views": views, "runs": []}
    for size in sizes:
        batch = batches[size]
        unet = (unet_config.tiny().replace(sample_size=size) if args.tiny
                else unet_config.sd21().replace(sample_size=size // 8))
        model_flops = 3.0 * batch * forward_flops(unet, views, unet.sample_size, unet.sample_size)
        jax_cmd = [sys.executable, str(HERE / "bench_train.py"), "--config", config_name, "--resolution", str(size), "--views", str(views),
                   "--batch", str(batch), "--dtype", "bfloat16", "--steps", str(steps), "--attention", "auto" if args.tiny else "cudnn"]
        if peak:
            jax_cmd += ["--peak-tflops", str(peak)]
        if not args.tiny:
            jax_cmd += ["mesh_fsdp=1", "mesh_data=1"]
        torch_spec = {"unet": unet.to_dict(), "views": views, "batch": batch, "steps": steps}
        torch_cmd = [sys.executable, str(Path(__file__).resolve()), "--out", args.out, "--torch-step", json.dumps(torch_spec)]
        for framework, cmd in (("jax", jax_cmd), ("torch", torch_cmd)):
            left = args.budget_s - (time.perf_counter() - started)
            if left < 30:
                results["runs"].append({"framework": framework, "image_size": size, "skipped": "out of time budget"})
                continue
            run = {"framework": framework, "image_size": size, "batch": batch, **_child(cmd, left)}
            if framework == "torch" and peak and "step_s_median" in run:
                run["mfu"] = model_flops / run["step_s_median"] / (peak * 1e12)
            run["model_tflop_per_step"] = model_flops / 1e12
            results["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "error"} | ({"error": run["error"][-300:]} if "error" in run else {})),
                  flush=True)
    for size in sizes:
        pair = {r["framework"]: r for r in results["runs"] if r["image_size"] == size and "samples_per_s" in r}
        if len(pair) == 2:
            results[f"jax_over_torch_samples_per_s_{size}"] = pair["jax"]["samples_per_s"] / pair["torch"]["samples_per_s"]
    results["total_wall_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train_gpu.json").write_text(json.dumps(results, indent=1))
    print("| framework | image | views x batch | compile / first step s | samples/s | MFU | peak GiB |")
    for r in results["runs"]:
        if "samples_per_s" not in r:
            print(f"| {r['framework']} | {r['image_size']}^2 | | {r.get('skipped') or 'failed'} | | | |")
            continue
        first = r.get("compile_and_first_step_s", r.get("first_step_s"))
        memory = r.get("peak_memory_gib_device0", r.get("peak_memory_gib"))
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        memory = f"{memory:.1f}" if memory is not None else "-"
        print(f"| {r['framework']} | {r['image_size']}^2 | {views} x {r['batch']} | {first:.1f} | {r['samples_per_s']:.2f} | {mfu} | {memory} |")
    return results


if __name__ == "__main__":
    main()
