"""Gaussian Splatting benchmarks and acceptance runs (numbers go to benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/bench_splatting.py [--only render,reconstruct,cameras,rough_depths,capture] [--threads N]

- render: forward + backward of 10k Gaussians at 128x128 with the CPU renderer (and with
  gsplat when a CUDA GPU and gsplat are present), median over repeats, wall and CPU time;
- reconstruct: 24 views of 128x128 with exact cameras (every 8th held out), training stopped
  at a 5-minute time limit; held-out PSNR/SSIM/LPIPS;
- cameras: the same views with cameras perturbed by 2 degrees and 2% of the scene scale (one
  run per perturbation seed), refined by `reconstruct(..., camera_refinement=CameraRefinementConfig(method))` with the exact
  depths (`--camera-method`: `depth`: the depth registration, then `--camera-steps` of scene
  training; `photometric`: alternating rounds, then a joint phase of `--camera-steps`; `auto`
  (the default method: the depth registration, then the photometric stages only if the
  depth maps still disagree smoothly)); mean
  rotation error (after removing one global rotation) before and after;
- rough_depths (not in the default run): 12 views of 64x64, the same perturbation, depths
  exact or made rough (1% per-pixel noise; a 2% scale error per view; a smooth 2%-amplitude
  warp per view, like aligned monocular depths), `reconstruct(..., camera_refinement=..., steps=300)` with `--camera-method`: which
  method `auto` chose, the depth disagreement after the ICP, the rotation error;
- capture (not in the default run): the real-capture acceptance, `see3d-reconstruct VIDEO --out
  DIR --holdout-every 8 --time-limit T --threads 1` on a video (`--video`, default the orbit in
  ../shared/data/real_videos/person_stairs.mp4): 40 frames at 320 px posed by the kit's SfM,
  SfM-point init; held-out PSNR/SSIM/LPIPS from metrics.json, and `DIR/side_by_side.png` (each
  held-out frame above its render).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from see3d_core import synthetic


def _median_time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus))


def bench_render(repeats: int) -> dict:
    from see3d_torch.splatting import Gaussians, rasterization

    scene = synthetic.make_scene(0)
    cams = synthetic.default_orbit(scene, 8, 128, 128)
    frames = [synthetic.render(scene, c) for c in cams]
    # Gaussians as a reconstruction has them: on the surfaces, about a pixel wide
    g = Gaussians.from_depths([f.rgb for f in frames], [f.depth for f in frames], cams, max_points=10_000, opacity=0.5)
    results = {"num_gaussians": len(g), "size": "128x128"}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        params = {k: v.to(device).requires_grad_() for k, v in g.tensors().items()}
        viewmats = torch.tensor(cams[0].w2c, dtype=torch.float32, device=device)[None]
        Ks = torch.tensor(cams[0].K, dtype=torch.float32, device=device)[None]
        target = torch.rand(1, 128, 128, 3, device=device)

        def step():
            img, _, _ = rasterization(params["means"], params["quats"], torch.exp(params["log_scales"]),
                                      torch.sigmoid(params["opacity_logits"]), torch.cat([params["sh0"], params["shN"]], 1),
                                      viewmats, Ks, 128, 128, sh_degree=0)
            ((img - target) ** 2).mean().backward()
            if device == "cuda":
                torch.cuda.synchronize()

        wall, cpu = _median_time(step, repeats)
        backend = "torch (CPU renderer)" if device == "cpu" else "gsplat"
        results[backend] = {"forward_backward_s": wall, "cpu_s": cpu}
    return results


def _world(num_views: int, size: int):
    scene = synthetic.make_scene(0)
    cams = synthetic.default_orbit(scene, num_views, size, size)
    frames = [synthetic.render(scene, c) for c in cams]
    return scene, cams, [f.rgb for f in frames], [f.depth for f in frames]


def bench_reconstruct(time_limit: float, num_threads: int | None) -> dict:
    from see3d_torch.splatting import reconstruct

    scene, cams, images, depths = _world(24, 128)
    eval_views = tuple(range(4, 24, 8))
    start = time.perf_counter()
    result = reconstruct(images, cams, depths, steps=10_000, time_limit_s=time_limit, eval_views=eval_views,
                         eval_every=100, num_threads=num_threads, progress=False)
    final = result.evaluations[-1]
    return {
        "views": "24 x 128x128 (21 train, 3 held out)", "time_limit_s": time_limit,
        "wall_s": time.perf_counter() - start, "steps": len(result.history), "num_gaussians": len(result.gaussians),
        "held_out": {k: final[k] for k in ("psnr", "ssim", "lpips")},
        "psnr_by_step": [(e["step"], round(e["psnr"], 2), round(e["seconds"], 1)) for e in result.evaluations],
    }


def bench_cameras(steps: int, num_threads: int | None, seed: int, method: str) -> dict:
    from see3d_torch.splatting import reconstruct
    from see3d_torch.splatting.camera_refinement import (
        CameraRefinementConfig, perturb_cameras, rotation_errors_deg, translation_errors,
    )

    scene, cams, images, depths = _world(24, 128)
    noisy = perturb_cameras(cams, rotation_deg=2.0, translation=0.02 * scene.scale, seed=seed)
    start = time.perf_counter()
    result = reconstruct(images, noisy, depths, steps=steps, camera_refinement=CameraRefinementConfig(method=method),
                         num_threads=num_threads, progress=False)
    before, after = rotation_errors_deg(noisy, cams), rotation_errors_deg(result.cameras, cams)
    return {
        "perturbation": f"2 deg, {0.02 * scene.scale:.3f} m (2% of scene scale {scene.scale:.2f} m)",
        "seed": seed, "method": method, "steps": steps, "wall_s": time.perf_counter() - start,
        "rotation_error_deg": {"before": float(before.mean()), "after": float(after.mean()),
                               "reduction": float(before.mean() / after.mean())},
        "rotation_error_unaligned_deg": {"before": float(rotation_errors_deg(noisy, cams, align=False).mean()),
                                         "after": float(rotation_errors_deg(result.cameras, cams, align=False).mean())},
        "translation_error_m": {"before": float(translation_errors(noisy, cams).mean()),
                                "after": float(translation_errors(result.cameras, cams).mean())},
    }


def rough_depths(depths, kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """`depths` x (1 + e): e = 0 ("exact"), 1% per-pixel noise ("noise"), +-2% per view
    ("scale") or a smooth 2%-amplitude warp sin(2 pi x + a) cos(2 pi y + b) with random phases
    per view ("warp")."""
    out = []
    for d in depths:
        h, w = d.shape
        if kind == "exact":
            e = 0.0
        elif kind == "noise":
            e = 0.01 * rng.standard_normal(d.shape)
        elif kind == "scale":
            e = 0.02 * rng.choice([-1.0, 1.0])
        elif kind == "warp":
            yy, xx = np.mgrid[0:h, 0:w]
            a, b = rng.uniform(0, 2 * np.pi, 2)
            e = 0.02 * np.sin(2 * np.pi * xx / w + a) * np.cos(2 * np.pi * yy / h + b)
        else:
            raise ValueError(f"rough depth kind must be 'exact', 'noise', 'scale' or 'warp', got {kind!r}")
        out.append(d * (1 + e))
    return out


def bench_rough_depths(num_threads: int | None, seed: int, method: str) -> list[dict]:
    from see3d_torch.splatting import reconstruct
    from see3d_torch.splatting.camera_refinement import CameraRefinementConfig, perturb_cameras, rotation_errors_deg

    scene, cams, images, depths = _world(12, 64)
    noisy = perturb_cameras(cams, rotation_deg=2.0, translation=0.02 * scene.scale, seed=seed)
    results = []
    for kind in ("exact", "noise", "scale", "warp"):
        start = time.perf_counter()
        result = reconstruct(images, noisy, rough_depths(depths, kind, np.random.default_rng(seed)), steps=300,
                             camera_refinement=CameraRefinementConfig(method=method), lpips_weight=0.0,
                             num_threads=num_threads, progress=False)
        before, after = rotation_errors_deg(noisy, cams).mean(), rotation_errors_deg(result.cameras, cams).mean()
        results.append({"depths": kind, "seed": seed, "method": method, "ran": result.camera_refinement,
                        "rotation_error_deg": {"before": float(before), "after": float(after), "reduction": float(before / after)},
                        "wall_s": time.perf_counter() - start})
    return results


def side_by_side(out: str) -> str:
    """`out/side_by_side.png`: each held-out frame of a see3d-reconstruct output above its render."""
    import cv2

    from see3d_torch.splatting.capture import load_capture

    held_out = json.loads(Path(out, "metrics.json").read_text())["held_out"]
    posed = load_capture(Path(out, "colmap")).names  # the frames SfM registered, in view order
    pairs = []
    for v in held_out["views"]:
        render = cv2.imread(f"{out}/renders/view_{v:03d}.png")
        truth = cv2.imread(f"{out}/colmap/images/{posed[v]}")  # SfM may have posed larger frames
        truth = cv2.resize(truth, render.shape[1::-1], interpolation=cv2.INTER_AREA)
        pairs.append(np.vstack([truth, render]))
    cv2.imwrite(f"{out}/side_by_side.png", np.hstack(pairs))
    return f"{out}/side_by_side.png"


def bench_capture(video: str, out: str, time_limit: float) -> dict:
    from see3d_torch.splatting.cli import main as reconstruct_main

    command = [video, "--out", out, "--holdout-every", "8", "--time-limit", str(time_limit), "--threads", "1"]
    start, cpu = time.perf_counter(), time.process_time()
    if reconstruct_main(command) != 0:
        raise SystemExit("see3d-reconstruct failed")
    metrics = json.loads(Path(out, "metrics.json").read_text())
    return {"command": "see3d-reconstruct " + " ".join(command), "held_out": metrics["held_out"], "steps": metrics["steps"],
            "num_gaussians": metrics["num_gaussians"], "train_seconds": metrics["seconds"],
            "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "side_by_side": side_by_side(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="render,reconstruct,cameras")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--time-limit", type=float, default=300.0)
    p.add_argument("--camera-steps", type=int, default=300, help="steps of the scene training / joint phase")
    p.add_argument("--camera-method", default="auto", choices=["auto", "depth", "photometric", "depth+photometric"])
    p.add_argument("--camera-seeds", default="1,2", help="perturbation seeds, one run each")
    p.add_argument("--video", default="../shared/data/real_videos/person_stairs.mp4", help="capture: the video")
    p.add_argument("--capture-out", default="/tmp/recon_capture", help="capture: the output folder")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}
    parts = set(args.only.split(","))
    if "render" in parts:
        report["render"] = bench_render(args.repeats)
        print(json.dumps(report["render"], indent=1), flush=True)
    if "reconstruct" in parts:
        report["reconstruct"] = bench_reconstruct(args.time_limit, args.threads)
        print(json.dumps(report["reconstruct"], indent=1), flush=True)
    if "cameras" in parts:
        report["cameras"] = []
        for seed in (int(s) for s in args.camera_seeds.split(",")):
            report["cameras"].append(bench_cameras(args.camera_steps, args.threads, seed, args.camera_method))
            print(json.dumps(report["cameras"][-1], indent=1), flush=True)
    if "rough_depths" in parts:
        report["rough_depths"] = []
        for seed in (int(s) for s in args.camera_seeds.split(",")):
            report["rough_depths"] += bench_rough_depths(args.threads, seed, args.camera_method)
            print(json.dumps(report["rough_depths"][-4:], indent=1), flush=True)
    if "capture" in parts:
        report["capture"] = bench_capture(args.video, args.capture_out, args.time_limit)
        print(json.dumps(report["capture"], indent=1), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
