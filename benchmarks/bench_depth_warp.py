"""Depth alignment and forward warping speed on 512x512 synthetic views.

Targets: LWLR with 1000 keypoints <= 0.5 s; forward warp (bilinear splats, z-buffer,
back-face culling, stretch splats) <= 0.15 s.

    .venv/bin/python benchmarks/bench_depth_warp.py [--size 512] [--keypoints 1000] [--repeats 20] [--device cpu]
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from see3d_core import synthetic
from see3d_torch.depth import absolute_relative_error, lwlr_align, sample_at
from see3d_torch.mono_depth import DepthDistortion
from see3d_torch.warp import forward_warp


def timed(fn, repeats: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Wall and process CPU milliseconds per call. On a shared, oversubscribed machine the CPU
    time of a single-threaded run (OMP_NUM_THREADS=1) is what the call costs on a free core."""
    fn()  # warm up
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return np.array(wall) * 1000, np.array(cpu) * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--keypoints", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    scene = synthetic.make_scene(0)
    cams = synthetic.default_orbit(scene, 2, args.size, args.size, azimuth_deg=(-8.0, 8.0))
    src, dst = synthetic.render_trajectory(scene, cams)

    true = torch.from_numpy(src.depth).to(device)
    mono = torch.from_numpy(DepthDistortion(wavelength_px=args.size).apply(src.depth)).to(device)
    rng = np.random.default_rng(0)
    uv = torch.from_numpy(rng.uniform(0, args.size - 1, size=(args.keypoints, 2))).float().to(device)
    sparse = sample_at(true, uv)
    aligned = lwlr_align(mono, uv, sparse)
    lwlr_ms, lwlr_cpu = timed(lambda: lwlr_align(mono, uv, sparse), args.repeats, device)

    image = torch.from_numpy(src.rgb).permute(2, 0, 1)[None].to(device)
    depth = torch.from_numpy(src.depth)[None, None].to(device)
    K = torch.from_numpy(src.camera.K).float()[None].to(device)
    T = torch.from_numpy(dst.camera.w2c @ src.camera.c2w).float()[None].to(device)
    _, known = forward_warp(image, depth, K, K, T)
    warp_ms, warp_cpu = timed(lambda: forward_warp(image, depth, K, K, T), args.repeats, device)

    print(json.dumps({
        "benchmark": "depth_warp", "size": args.size, "keypoints": args.keypoints, "repeats": args.repeats,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "lwlr_median_ms": round(float(np.median(lwlr_ms)), 1), "lwlr_p90_ms": round(float(np.percentile(lwlr_ms, 90)), 1), "lwlr_cpu_median_ms": round(float(np.median(lwlr_cpu)), 1),
        "lwlr_absrel": round(absolute_relative_error(aligned, true), 4),
        "warp_median_ms": round(float(np.median(warp_ms)), 1), "warp_p90_ms": round(float(np.percentile(warp_ms, 90)), 1), "warp_cpu_median_ms": round(float(np.median(warp_cpu)), 1),
        "warp_known_fraction": round(float(known.mean()), 3),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
