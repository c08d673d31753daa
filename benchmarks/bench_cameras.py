"""Sparse-view camera estimation, two-view (OpenCV) vs pycolmap, on synthetic orbits.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_cameras.py [--seeds 0,1,2] [--assumed-fov 60]

For each scene and orbit (views, size, azimuth span; true field of view 60 degrees) it prints the
wall time of `estimate_cameras` started from `--assumed-fov`, the error of its focal length (%;
two_view keeps the assumed one, colmap searches it), the largest relative-rotation error over all
pairs of views (degrees) and the largest camera-centre error after the best similarity alignment
to the true centres (in % of the orbit's radius about its mean centre). A failed estimate prints
its error message.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from see3d_core import synthetic
from see3d_core.cameras import rotation_angle_deg, similarity_aligned
from see3d_torch.generation import inputs

# (views, image size in px, azimuth span in degrees)
ORBITS = ((3, 160, 16.0), (5, 200, 30.0), (4, 200, 60.0), (6, 240, 50.0))


def errors(est: list, true: list) -> tuple[float, float]:
    n = len(true)
    rot = max(rotation_angle_deg(est[i].c2w[:3, :3].T @ est[j].c2w[:3, :3], true[i].c2w[:3, :3].T @ true[j].c2w[:3, :3])
              for i in range(n) for j in range(i + 1, n))
    centres = np.array([c.center for c in true])
    radius = np.linalg.norm(centres - centres.mean(0), axis=1).max()
    aligned = similarity_aligned(np.array([c.center for c in est]), centres)
    return rot, 100.0 * np.linalg.norm(aligned - centres, axis=1).max() / radius


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="synthetic scenes")
    parser.add_argument("--assumed-fov", type=float, default=60.0, help="field of view the estimate starts from (true: 60)")
    args = parser.parse_args()
    scene0 = synthetic.make_scene(0)
    warm = [synthetic.render(scene0, c).rgb for c in synthetic.default_orbit(scene0, 2, 160, 160, azimuth_deg=(-5, 5))]
    for method in inputs.CAMERA_METHODS:  # imports and first-call set-up out of the timings
        try:
            inputs.estimate_cameras(warm, method=method)
        except ValueError:
            pass
    print("| scene | views, size, span | method | time (s) | focal error (%) | max rotation error (deg) | max centre error (% radius) |")
    print("|---|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        scene = synthetic.make_scene(seed)
        for views, size, span in ORBITS:
            cams = synthetic.default_orbit(scene, views, size, size, azimuth_deg=(-span / 2, span / 2))
            images = [synthetic.render(scene, c).rgb for c in cams]
            for method in inputs.CAMERA_METHODS:
                start = time.perf_counter()
                try:
                    est = inputs.estimate_cameras(images, args.assumed_fov, method=method)
                except ValueError as err:
                    print(f"| {seed} | {views}, {size} px, {span:g} deg | {method} | failed: {err} | | | |")
                    continue
                seconds = time.perf_counter() - start
                rot, centre = errors(est, cams)
                focal = 100.0 * (est[0].K[0, 0] / cams[0].K[0, 0] - 1)
                print(f"| {seed} | {views}, {size} px, {span:g} deg | {method} | {seconds:.2f} | {focal:+.1f} | {rot:.2f} | {centre:.2f} |")


if __name__ == "__main__":
    main()
