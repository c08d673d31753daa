"""`see3d-reconstruct IMAGES_DIR --cameras cameras.json --out DIR`: Gaussian Splatting from posed views.

IMAGES_DIR holds the views (png/jpg, taken in sorted file-name order); cameras.json is a kit
trajectory file with one camera per image, in the same order (or a RealEstate10K .txt).
Optional depth maps (`--depths DIR` of .npy z-depth files, same order) drive the
initialisation; otherwise Gaussians start at random.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def load_images(folder: Path) -> tuple[list[np.ndarray], list[Path]]:
    import cv2

    if not folder.is_dir():
        raise FileNotFoundError(f"images folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no .png/.jpg images")
    images = []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{p}: cannot read the image")
        images.append(bgr[..., ::-1].astype(np.float32) / 255.0)
    return images, paths


def load_depths(folder: Path, count: int) -> list[np.ndarray]:
    paths = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if len(paths) != count:
        raise ValueError(f"--depths {folder}: expected {count} .npy depth maps (one per image), found {len(paths)}")
    return [np.load(p).astype(np.float32) for p in paths]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="see3d-reconstruct", description=__doc__.split("\n\n")[0])
    p.add_argument("images", type=Path, help="folder of views (png/jpg, sorted by name)")
    p.add_argument("--cameras", type=Path, required=True, help="cameras.json (kit trajectory JSON) or RealEstate10K .txt")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--depths", type=Path, help="folder of .npy z-depth maps, one per image (depth initialisation)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--time-limit", type=float, help="stop training after this many seconds")
    p.add_argument("--sh-degree", type=int, default=0)
    p.add_argument("--init-points", type=int, default=30_000)
    p.add_argument("--lpips-weight", type=float, default=0.1, help="0 disables the LPIPS loss")
    p.add_argument("--depth-weight", type=float, default=0.0)
    p.add_argument("--refine-cameras", action="store_true", help="refine the camera poses")
    p.add_argument("--camera-method", default="auto", choices=["auto", "depth", "photometric", "depth+photometric"],
                   help="with --refine-cameras: 'depth' registers the poses by ICP between the depth maps, "
                        "'photometric' learns pose corrections against the scene; 'auto': with --depths the ICP, then "
                        "photometric only if the depth maps still disagree smoothly (monocular-like depths), else photometric")
    p.add_argument("--exposure", action="store_true", help="learn per-image exposure compensation")
    p.add_argument("--holdout-every", type=int, default=0, help="hold out every N-th view for evaluation (0: none)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat"])
    p.add_argument("--video-frames", type=int, default=60, help="fly-through length (0: no video)")
    p.add_argument("--mesh-resolution", type=int, default=96, help="voxels of the mesh's TSDF along its longest side (0: no mesh)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # main() may be called inside a larger program


def _run(args: argparse.Namespace) -> int:
    from see3d_core import trajectories
    from see3d_torch.splatting.export import export_reconstruction
    from see3d_torch.splatting.reconstruct import reconstruct

    try:
        images, paths = load_images(args.images)
        height, width = images[0].shape[:2]
        cameras = trajectories.load(args.cameras, width, height)
        if len(cameras) != len(images):
            raise ValueError(f"{args.cameras}: {len(cameras)} cameras for {len(images)} images in {args.images}")
        depths = load_depths(args.depths, len(images)) if args.depths else None
        eval_views = tuple(range(args.holdout_every - 1, len(images), args.holdout_every)) if args.holdout_every > 0 else ()
        result = reconstruct(
            images, cameras, depths,
            steps=args.steps, time_limit_s=args.time_limit, sh_degree=args.sh_degree, init_points=args.init_points,
            lpips_weight=args.lpips_weight, depth_weight=args.depth_weight, refine_cameras=args.refine_cameras,
            camera_refinement_method=args.camera_method,
            exposure_compensation=args.exposure, eval_views=eval_views, eval_every=args.eval_every,
            device=args.device, backend=args.backend, seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"see3d-reconstruct: error: {e}", file=sys.stderr)
        return 2
    written = export_reconstruction(result, args.out, flythrough_frames=args.video_frames,
                                    mesh_resolution=args.mesh_resolution)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if result.evaluations:
        last = result.evaluations[-1]
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k in ("psnr", "ssim", "lpips")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
