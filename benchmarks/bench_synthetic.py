"""Synthetic world rendering speed: one 256x256 RGB + depth frame (target: <= 50 ms median).

    .venv/bin/python benchmarks/bench_synthetic.py [--size 256] [--frames 30]
"""

import argparse
import json
import platform
import time

import numpy as np

from see3d_core import synthetic


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--scenes", type=int, default=3)
    args = p.parse_args()
    times = []
    for seed in range(args.scenes):
        scene = synthetic.make_scene(seed)
        cams = synthetic.default_orbit(scene, args.frames, args.size, args.size)
        synthetic.render(scene, cams[0])  # warm caches
        for cam in cams:
            t = time.perf_counter()
            synthetic.render(scene, cam)
            times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    print(json.dumps({
        "benchmark": "synthetic_render", "size": args.size, "frames": len(ms),
        "median_ms": round(float(np.median(ms)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
