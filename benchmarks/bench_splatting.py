"""Gaussian Splatting benchmarks and acceptance runs (numbers go to benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/bench_splatting.py [--only render,reconstruct,cameras,rough_depths,capture,large] [--threads N]

- render: forward + backward of 10k Gaussians at 128x128 with the CPU renderer (and with
  gsplat when a CUDA GPU and gsplat are present), median over repeats, wall and CPU time;
- large (not in the default run): forward + backward of the CPU renderer at tile sizes 4, 8, 16
  and at its automatic choice, against `naive_rasterize` (one Gaussian at a time on its own
  bounding box), for sets of Gaussians with 3-sigma radii around 4, 17 and 33 px at 128x128
  (`--large-cases`), with 1 torch thread unless `--threads` says otherwise; median over
  `--repeats` (default 15 here) rounds that run every renderer once each, and the ratio
  naive / tiled per case (> 1: the tiled renderer is faster). First a check that the naive
  renderer's image and gradients match the tiled renderer's on a small case. Sized for well
  under 2 minutes on a quiet 2-core machine;
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


def naive_rasterize(
    means2d, conics, opacities, features, depths, extents, width, height, background=None, tile_size=None,
    pair_budget=None,
):
    """A naive reference for timing `tiled.rasterize_tiled` (same arguments; `tile_size` and
    `pair_budget` are ignored): pure torch and differentiable, the Gaussians sorted by depth and
    composited front to back one at a time, each evaluated once on its own bounding box (the
    pixels within `extents` of its centre: outside it alpha is below 1/255, so nothing is lost).
    The rules are tiled.py's: alpha = min(ALPHA_MAX, o exp(power)), dropped below ALPHA_MIN or
    where power > 0, and a pixel stops before the Gaussian that would bring its transmittance to
    TRANSMITTANCE_MIN or below (the stop is exact here, as in the tests' dense reference, not
    approximated). The difference from the tiled renderer is float32 rounding only: T is a
    running product here, an exp of cumulative log sums there (measured: 2.4e-7 on the image)."""
    from see3d_torch.splatting.tiled import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN

    device, dtype = means2d.device, means2d.dtype
    image = features.new_zeros(height, width, features.shape[-1])
    transmittance = means2d.new_ones(height, width)
    done = torch.zeros(height, width, dtype=torch.bool, device=device)
    with torch.no_grad():
        lo = torch.ceil(means2d - extents).clamp_min(0).long()
        hi = torch.minimum(torch.floor(means2d + extents), torch.tensor([width - 1.0, height - 1.0], device=device)).long()
        drawn = (extents > 0).all(-1) & (hi >= lo).all(-1) & torch.isfinite(means2d).all(-1)
        order = torch.argsort(depths.detach())
        order = order[drawn[order]]
        boxes = torch.cat([lo, hi + 1], -1)[order].tolist()
    xs = torch.arange(width, device=device, dtype=dtype)
    ys = torch.arange(height, device=device, dtype=dtype)
    # one unbind per quantity: a single backward node for all Gaussians, not one per indexing
    mx, my = means2d[order].unbind(-1)
    a, b, c = conics[order].unbind(-1)
    per_gaussian = zip(boxes, mx.unbind(), my.unbind(), (-0.5 * a).unbind(), (-b).unbind(), (-0.5 * c).unbind(),
                       opacities[order].unbind(), features[order].unbind())
    for (x0, y0, x1, y1), mx_i, my_i, qa, qb, qc, o, colour in per_gaussian:
        dx = xs[x0:x1] - mx_i
        dy = ys[y0:y1, None] - my_i
        power = qa * dx * dx + qc * dy * dy + qb * dx * dy  # [h, w]
        alpha = (o * torch.exp(power)).clamp(max=ALPHA_MAX)
        alpha = alpha * ((power <= 0.0) & (alpha >= ALPHA_MIN))
        t = transmittance[y0:y1, x0:x1].clone()  # a copy: the in-place update below must not change it
        next_t = t * (1.0 - alpha)
        stop = done[y0:y1, x0:x1] | (next_t <= TRANSMITTANCE_MIN)
        done[y0:y1, x0:x1] = stop
        image[y0:y1, x0:x1] += (alpha * t * ~stop)[..., None] * colour
        transmittance[y0:y1, x0:x1] = torch.where(stop, t, next_t)
    if background is not None:
        image = image + transmittance[..., None] * background
    return image, (1.0 - transmittance)[..., None]


class _NaiveRenderer:
    """Within `with _NaiveRenderer():`, `rasterization(..., backend="torch")` composites with
    `naive_rasterize` instead of the tiled renderer (projection, colours and footprints unchanged)."""

    def __enter__(self):
        from see3d_torch.splatting import tiled

        self._tiled, self._real = tiled, tiled.rasterize_tiled
        tiled.rasterize_tiled = naive_rasterize

    def __exit__(self, *exc):
        self._tiled.rasterize_tiled = self._real


def large_gaussians(radius: float, count: int, size: int, seed: int = 0) -> dict:
    """`count` Gaussians in front of the camera `large_camera(size)` whose projected 3-sigma radii
    (the larger of the two, before rounding up) have the median `radius` pixels: scales x0.75-1.25
    per axis, random orientations, centres uniform over the image, depths 3.5-4.5, opacities
    0.2-0.9, random colours."""
    from see3d_torch.splatting.rendering import project_gaussians

    g = torch.Generator().manual_seed(seed)
    focal = float(size)
    z = 3.5 + torch.rand(count, generator=g)
    uv = torch.rand(count, 2, generator=g) * size - 0.5
    means = torch.cat([(uv - (size - 1) / 2) * z[:, None] / focal, z[:, None]], -1)
    scales = (z / focal)[:, None] * (0.75 + 0.5 * torch.rand(count, 3, generator=g))  # ~1 px sigma
    quats = torch.randn(count, 4, generator=g)
    # scale to the median radius (eps2d = 0.3 adds to each projected variance, hence the square roots)
    covars = project_gaussians(means, quats, scales, *large_camera(size), size, size, eps2d=0.0)["covars2d"][0]
    sigma2 = covars[:, [0, 2]].max(-1).values.median()
    scales = scales * math.sqrt(max((radius / 3) ** 2 - 0.3, 0.01) / float(sigma2))
    return {"means": means, "quats": quats, "scales": scales,
            "opacities": 0.2 + 0.7 * torch.rand(count, generator=g), "colors": torch.rand(count, 3, generator=g)}


def large_camera(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    K = torch.tensor([[float(size), 0.0, (size - 1) / 2], [0.0, float(size), (size - 1) / 2], [0.0, 0.0, 1.0]])
    return torch.eye(4)[None], K[None]


def _render_large(params: dict, size: int, tile_size: int | None, naive: bool = False) -> torch.Tensor:
    from see3d_torch.splatting import rasterization

    viewmats, Ks = large_camera(size)
    args = (params["means"], params["quats"], params["scales"], params["opacities"], params["colors"], viewmats, Ks,
            size, size)
    kwargs = dict(backgrounds=torch.tensor([[0.3, 0.4, 0.5]]), tile_size=tile_size, backend="torch")
    if naive:
        with _NaiveRenderer():
            return rasterization(*args, **kwargs)[0][0]
    return rasterization(*args, **kwargs)[0][0]


def check_naive_matches_tiled(size: int = 48, radius: float = 17.0, count: int = 60) -> dict:
    """The naive renderer against the tiled one (automatic tile size) on a small case of large
    Gaussians: largest image difference, and largest gradient difference relative to the
    largest gradient, per parameter."""
    params = {k: v.requires_grad_() for k, v in large_gaussians(radius, count, size, seed=1).items()}
    weights = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(2))
    results = {}
    for naive in (False, True):
        image = _render_large(params, size, None, naive)
        (image * weights).sum().backward()
        results[naive] = image.detach(), {k: v.grad.clone() for k, v in params.items()}
        for v in params.values():
            v.grad = None
    (image, grads), (ref, ref_grads) = results[False], results[True]
    return {"case": f"{count} Gaussians, radius ~{radius:g} px, {size}x{size}",
            "image_max_abs_diff": float((image - ref).abs().max()),
            "grad_max_rel_diff": {k: float((grads[k] - ref_grads[k]).abs().max() / ref_grads[k].abs().max())
                                  for k in grads}}


def bench_large(repeats: int, cases: list[tuple[float, int]], tile_sizes: list[int], size: int = 128) -> dict:
    """Forward + backward (a weighted sum of the image) of the tiled renderer at `tile_sizes` and
    at its automatic choice, and of `naive_rasterize`, per set of Gaussians (radius, count);
    median wall time over `repeats` rounds (each runs every renderer once, in a rotating order,
    so that drift of the machine's load spreads over all), after one warm-up each."""
    from see3d_torch.splatting import rendering, tiled

    check = check_naive_matches_tiled()
    # float32 rounding only (measured: 2.4e-7 on the image, <= 3e-6 relative on the gradients); the
    # bounds are the tests' for the tiled renderer against the dense reference
    if check["image_max_abs_diff"] > 2e-5 or max(check["grad_max_rel_diff"].values()) > 2e-3:
        raise SystemExit(f"the naive renderer disagrees with the tiled one: {check}")
    results = {"check": check, "size": f"{size}x{size}", "cases": []}
    weights = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(3))
    for radius, count in cases:
        params = {k: v.requires_grad_() for k, v in large_gaussians(radius, count, size).items()}
        viewmats, Ks = large_camera(size)
        with torch.no_grad():
            projected = rendering.project_gaussians(params["means"], params["quats"], params["scales"], viewmats, Ks,
                                                    size, size)
        radii = projected["radii"][0]
        drawn = (radii > 0).all(-1)
        largest = radii[drawn].max(-1).values.float()
        # how many Gaussians' 3-sigma boxes cover a pixel, on average (the boxes clipped to the image)
        centres, half = projected["means2d"][0][drawn], radii[drawn].float()
        sides = (torch.minimum(centres + half, torch.tensor(size - 1.0)) - torch.maximum(centres - half, torch.tensor(0.0)) + 1)
        coverage = float(sides.clamp_min(0).prod(-1).sum()) / size**2
        renderers = {f"tile_{t}": (t, False) for t in tile_sizes}
        renderers["automatic"] = (None, False)
        renderers["naive"] = (None, True)

        def run(tile_size, naive):
            image = _render_large(params, size, tile_size, naive)
            (image * weights).sum().backward()
            for v in params.values():
                v.grad = None

        times = {name: [] for name in renderers}
        for name, spec in renderers.items():
            run(*spec)  # warm-up
        names = list(renderers)
        for r in range(repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                run(*renderers[name])
                times[name].append(time.perf_counter() - start)
        median = {name: float(np.median(t)) for name, t in times.items()}
        case = {
            "radius_target_px": radius, "num_gaussians": count, "drawn": int(drawn.sum()),
            "radius_px": {"median": float(largest.median()), "p10": float(largest.quantile(0.1)),
                          "p90": float(largest.quantile(0.9))},
            "boxes_per_pixel": round(coverage, 1),
            "automatic_tile_size": tiled.choose_tile_size(radii),
            "forward_backward_s": median,
            "naive_over_tiled": {name: median["naive"] / median[name] for name in renderers if name != "naive"},
        }
        results["cases"].append(case)
        print(json.dumps(case), flush=True)
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
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (default 10 for render, 15 for large)")
    p.add_argument("--large-cases", default="4:3000,17:500,33:250",
                   help="large: sets of Gaussians, RADIUS_PX:COUNT, comma-separated")
    p.add_argument("--large-tiles", default="4,8,16", help="large: the tile sizes to time")
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
        report["render"] = bench_render(args.repeats or 10)
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
    if "large" in parts:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or 1)
        cases = [(float(r), int(n)) for r, n in (c.split(":") for c in args.large_cases.split(","))]
        report["large"] = bench_large(args.repeats or 15, cases, [int(t) for t in args.large_tiles.split(",")])
        report["large"]["torch_threads"] = torch.get_num_threads()
        torch.set_num_threads(threads)
    if "capture" in parts:
        report["capture"] = bench_capture(args.video, args.capture_out, args.time_limit)
        print(json.dumps(report["capture"], indent=1), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
