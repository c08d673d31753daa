"""Depth alignment and forward warping speed on 512x512 synthetic views, and LWLR accuracy on
real depth (Middlebury 2014 "motorcycle" from scikit-image, a +-25% smooth multiplicative
distortion plus an affine map, 1000 keypoints with 1% noise, seeds 0-3).

Targets: LWLR with 1000 keypoints <= 0.5 s; forward warp (bilinear splats, z-buffer,
back-face culling, stretch splats) <= 0.15 s; on Middlebury LWLR AbsRel <= 0.03 and >= 3x
better than the robust global fit.

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
from see3d_torch.depth import absolute_relative_error, apply_scale_shift, fit_scale_shift, lwlr_align, middlebury_motorcycle, sample_at
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
    _, known_pixels = forward_warp(image, depth, K, K, T)
    warp_ms, warp_cpu = timed(lambda: forward_warp(image, depth, K, K, T), args.repeats, device)

    _, middlebury = middlebury_motorcycle()
    known = np.isfinite(middlebury)
    filled = np.where(known, middlebury, np.nanmedian(middlebury))
    ys, xs = np.nonzero(known)
    middlebury_rows = []
    for seed in range(4):
        mono_m = torch.from_numpy(DepthDistortion(local_amplitude=0.25, wavelength_px=256, seed=seed).apply(filled)).to(device)
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(xs), args.keypoints, replace=False)
        uv_m = torch.from_numpy(np.stack([xs[pick], ys[pick]], 1)).float().to(device)
        target = torch.from_numpy(middlebury[ys[pick], xs[pick]] * (1 + 0.01 * rng.normal(size=args.keypoints))).float().to(device)
        true_m = torch.from_numpy(middlebury).float().to(device)
        scale, shift = fit_scale_shift(mono_m, uv_m, target, robust=True)
        global_err = absolute_relative_error(apply_scale_shift(mono_m, scale, shift), true_m)
        lwlr_err = absolute_relative_error(lwlr_align(mono_m, uv_m, target), true_m)
        middlebury_rows.append({"seed": seed, "global_absrel": round(global_err, 4), "lwlr_absrel": round(lwlr_err, 4), "gain": round(global_err / lwlr_err, 1)})

    print(json.dumps({
        "benchmark": "depth_warp", "size": args.size, "keypoints": args.keypoints, "repeats": args.repeats,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "lwlr_median_ms": round(float(np.median(lwlr_ms)), 1), "lwlr_p90_ms": round(float(np.percentile(lwlr_ms, 90)), 1), "lwlr_cpu_median_ms": round(float(np.median(lwlr_cpu)), 1),
        "lwlr_absrel": round(absolute_relative_error(aligned, true), 4),
        "warp_median_ms": round(float(np.median(warp_ms)), 1), "warp_p90_ms": round(float(np.percentile(warp_ms, 90)), 1), "warp_cpu_median_ms": round(float(np.median(warp_cpu)), 1),
        "warp_known_fraction": round(float(known_pixels.mean()), 3),
        "middlebury_motorcycle": middlebury_rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
