"""`see3d demo` on several scene seeds: does the model beat the warp-only baseline on scenes
it was not tuned on?

    python benchmarks/demo_seeds.py --seeds 0,1,2,3,4,5 --out RUN [--steps 25] [--weights DIR]

Runs the demo (the embedded checkpoint unless `--weights`) per seed into `RUN/seed_<s>/` and
prints, per seed and as a mean, the generated views' PSNR / SSIM / LPIPS, their hole-pixel
PSNR and the splat renders' PSNR at the held-out cameras, model against baseline, and how many
seeds the model wins on each. Writes `RUN/demo_seeds.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

COLUMNS = (  # (stage, metric, higher is better)
    ("generated views", "psnr", True),
    ("generated views", "ssim", True),
    ("generated views", "lpips", False),
    ("generated views, known and hole pixels", "hole_psnr", True),
    ("rendered, held-out cameras", "psnr", True),
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5", help="comma-separated scene seeds")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the demo's)")
    parser.add_argument("--weights", default=None, help="a UNet folder (default: the embedded checkpoint)")
    parser.add_argument("--no-composite", action="store_true", help="the model's own known pixels")
    parser.add_argument("--splat-steps", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    from see3d_torch.generation.demo import BASELINE, MODEL, DemoConfig, run_demo

    torch.set_num_threads(1)
    options = {"num_inference_steps": args.steps} if args.steps else {}
    rows = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        config = DemoConfig(seed=seed, checkpoint=args.weights, composite_known=not args.no_composite, progress=False,
                            flythrough_frames=0, splat_steps=args.splat_steps, **options)
        run_demo(args.out / f"seed_{seed}", config)
        metrics = json.loads((args.out / f"seed_{seed}" / "metrics.json").read_text())
        rows[seed] = {name: {f"{stage}: {key}": metrics["methods"][name][stage][key] for stage, key, _ in COLUMNS}
                      for name in (MODEL, BASELINE)}
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s): " + "; ".join(
            f"{stage}: {key} {rows[seed][MODEL][f'{stage}: {key}']:.3f} vs {rows[seed][BASELINE][f'{stage}: {key}']:.3f}"
            for stage, key, _ in COLUMNS), flush=True)
    summary = {}
    for stage, key, higher in COLUMNS:
        name = f"{stage}: {key}"
        model = np.array([rows[s][MODEL][name] for s in rows], float)
        base = np.array([rows[s][BASELINE][name] for s in rows], float)
        wins = int(((model > base) if higher else (model < base)).sum())
        summary[name] = {"model": float(model.mean()), "baseline": float(base.mean()), "model_wins": f"{wins}/{len(rows)}"}
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "per_seed": rows, "summary": summary}
    (args.out / "demo_seeds.json").write_text(json.dumps(result, indent=1))
    print("\n| metric | model | warp-only | model wins |\n|---|---|---|---|")
    for name, v in summary.items():
        print(f"| {name} | {v['model']:.3f} | {v['baseline']:.3f} | {v['model_wins']} |")
    return result


if __name__ == "__main__":
    main()
