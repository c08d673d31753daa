"""The `see3d` command.

Subcommands import their side of the kit lazily, so `see3d --help` needs neither torch nor jax.

- `see3d demo [--out DIR]`: the kit's main job on a built-in default.
- `see3d world --out DIR`: render a synthetic scene along a trajectory as a clip dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np


def _depth_to_rgb(depth: np.ndarray, far: float) -> np.ndarray:
    d = np.clip(depth / far, 0.0, 1.0)
    colored = cv2.applyColorMap((255 * (1 - d)).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    return colored[..., ::-1]


def render_world(out: Path, seed: int, num_frames: int, size: int, trajectory: str, overwrite: bool = False) -> dict:
    """Render a synthetic scene along a trajectory; write a clip dataset, preview PNG and mp4.

    An existing dataset under `out` is only replaced with `overwrite=True`."""
    import shutil

    from tqdm import tqdm

    from see3d_core import clips, synthetic, trajectories, videos

    out.mkdir(parents=True, exist_ok=True)
    scene = synthetic.make_scene(seed)
    if trajectory == "orbit":
        cams = synthetic.default_orbit(scene, num_frames, size, size)
    elif trajectory == "forward":
        start = synthetic.default_orbit(scene, 1, size, size, azimuth_deg=0.0)[0]
        cams = trajectories.forward(start, 1.2, num_frames)
    elif trajectory == "spiral":
        start = synthetic.default_orbit(scene, 1, size, size, azimuth_deg=0.0)[0]
        cams = trajectories.spiral(start, focus_distance=3.0, num_frames=num_frames)
    else:
        cams = trajectories.load(trajectory, size, size)
    dataset = clips.ClipDataset(out / "dataset")
    if dataset.root.exists():
        if not overwrite:
            raise FileExistsError(f"{dataset.root} exists already; choose another --out or pass --overwrite")
        shutil.rmtree(dataset.root)
    frames = [synthetic.render(scene, c) for c in tqdm(cams, desc="render", unit="view")]
    clip_name = f"scene_{seed:06d}_{trajectory if trajectory in ('orbit', 'forward', 'spiral') else 'custom'}"
    dataset.add_clip(
        clip_name, [f.rgb for f in frames], source=f"synthetic:seed={seed}", fps=10.0,
        cameras=cams, depths=[f.depth for f in frames],
    )
    rgb = [(f.rgb * 255 + 0.5).astype(np.uint8) for f in frames]
    far = float(np.percentile(np.concatenate([f.depth.ravel() for f in frames]), 95))
    picks = np.linspace(0, len(frames) - 1, min(6, len(frames))).round().astype(int)
    grid = np.concatenate(
        [np.concatenate([rgb[i] for i in picks], axis=1), np.concatenate([_depth_to_rgb(frames[i].depth, far) for i in picks], axis=1)],
        axis=0,
    )
    cv2.imwrite(str(out / "preview.png"), grid[..., ::-1])
    videos.write_mp4(out / "preview.mp4", np.stack(rgb), fps=10.0)
    trajectories.save_json(out / "cameras.json", cams)
    return {
        "dataset": str(dataset.root),
        "clip": clip_name,
        "preview": str(out / "preview.png"),
        "video": str(out / "preview.mp4"),
        "cameras": str(out / "cameras.json"),
        "frames": len(frames),
    }


def _cmd_world(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    summary = render_world(Path(args.out), args.seed, args.frames, args.size, args.trajectory, args.overwrite)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return _cmd_world(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="see3d", description="See3D research kit")
    sub = parser.add_subparsers(dest="command", required=True)

    def world_args(p: argparse.ArgumentParser, out_default: str | None) -> None:
        p.add_argument("--out", default=out_default, required=out_default is None, help="output directory")
        p.add_argument("--seed", type=int, default=0, help="scene seed")
        p.add_argument("--frames", type=int, default=24, help="number of views")
        p.add_argument("--size", type=int, default=256, help="image width and height")
        p.add_argument("--trajectory", default="orbit", help="orbit, forward, spiral, or a trajectory file (.json / RealEstate10K .txt)")
        p.add_argument("--overwrite", action="store_true", default=out_default is not None,
                       help="replace an existing output (the default for `demo`)")

    demo = sub.add_parser("demo", help="run the kit's main job on the built-in default")
    world_args(demo, "outputs/demo")
    demo.set_defaults(func=_cmd_demo)
    world = sub.add_parser("world", help="render a synthetic scene as a clip dataset with previews")
    world_args(world, None)
    world.set_defaults(func=_cmd_world)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"see3d {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
