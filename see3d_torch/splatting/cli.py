"""`see3d-reconstruct INPUT --out DIR`: Gaussian Splatting of posed views, a COLMAP workspace, photos or a video.

INPUT is one of
- a folder of views (png/jpg, sorted file-name order) with `--cameras cameras.json` (a kit
  trajectory file with one camera per image, in the same order, or a RealEstate10K .txt);
- a COLMAP workspace (`sparse/0` and `images/`); distorted camera models are undistorted into
  `DIR/colmap/undistorted`;
- a folder of photos without cameras, or a video file: `--max-frames` images spread evenly,
  posed by pycolmap structure from motion at `--sfm-max-side` (more points than at the training
  size), which writes its COLMAP workspace to `DIR/colmap` (the cameras also go to
  `DIR/cameras.json`), then shrunk to `--max-side` for training.
Gaussians start from the SfM points when there are any (at training pixels, at depths
interpolated between the points), else at the `--depths` (a folder of .npy z-depth maps, same
order), else at random in the cameras' view.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from see3d_torch.splatting.capture import load_images  # noqa: F401  (the demo reads its views with it)

DEFAULT_CAPTURE_MAX_SIDE = 320  # training size of frames the kit poses itself: a CPU-sized default


def load_depths(folder: Path, count: int) -> list[np.ndarray]:
    paths = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if len(paths) != count:
        raise ValueError(f"--depths {folder}: expected {count} .npy depth maps (one per image), found {len(paths)}")
    return [np.load(p).astype(np.float32) for p in paths]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="see3d-reconstruct", description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="folder of views (with --cameras), COLMAP workspace, folder of photos, or video")
    p.add_argument("--cameras", type=Path, help="cameras.json (kit trajectory JSON) or RealEstate10K .txt for a folder of views")
    p.add_argument("--max-frames", type=int, default=40,
                   help="videos and photos without cameras: at most this many images, spread evenly (default 40)")
    p.add_argument("--max-side", type=int,
                   help="shrink images so that their longer side is at most this (cameras are rescaled to match); "
                        f"default {DEFAULT_CAPTURE_MAX_SIDE} for videos and photos without cameras, else the images' size")
    p.add_argument("--sfm-max-side", type=int, default=640,
                   help="videos and photos without cameras: pose the frames at this longer side, or at --max-side if "
                        "larger (default 640; 0: as read). Larger frames give SfM more points to start the Gaussians from")
    p.add_argument("--sfm-matcher", default="exhaustive", choices=["exhaustive", "sequential"],
                   help="structure from motion: match every pair, or each image with its 10 neighbours (long videos)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--depths", type=Path, help="folder of .npy z-depth maps, one per image (depth initialisation)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--time-limit", type=float, help="stop training after this many seconds")
    p.add_argument("--sh-degree", type=int, choices=range(4),
                   help="spherical-harmonics degree of the colours (also the PLY's); default 3 for a COLMAP workspace, "
                        "photos or a video (real captures look different from different sides), 0 for views with --cameras")
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
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the CPU renderer's many small ops run fastest on one; 0: torch's default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    if args.threads < 0:
        raise SystemExit(f"see3d-reconstruct: error: --threads must be >= 0, got {args.threads}")
    if args.threads:  # for the whole run: SfM points' rendering, training, export
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # main() may be called inside a larger program


def _run(args: argparse.Namespace) -> int:
    from see3d_torch.splatting.camera_refinement import CameraRefinementConfig
    from see3d_torch.splatting.capture import load_capture
    from see3d_torch.splatting.colmap import SfMConfig, find_sparse_model
    from see3d_torch.splatting.export import export_reconstruction
    from see3d_torch.splatting.reconstruct import reconstruct

    try:
        max_side = args.max_side
        needs_sfm = args.cameras is None and (args.input.is_file() or find_sparse_model(args.input) is None)
        if max_side is None and needs_sfm:
            max_side = DEFAULT_CAPTURE_MAX_SIDE
        capture = load_capture(args.input, cameras_file=args.cameras, workspace=args.out / "colmap",
                               max_frames=args.max_frames, max_side=max_side, sfm_config=SfMConfig(matcher=args.sfm_matcher, max_image_side=args.sfm_max_side or None))
        if capture.source != "cameras":
            print(f"cameras: {len(capture.cameras)} from {capture.source} ({capture.workspace}), "
                  f"{0 if capture.points is None else len(capture.points)} SfM points, f = {capture.cameras[0].K[0, 0]:.1f} px at "
                  f"{capture.cameras[0].width}x{capture.cameras[0].height}")
        images, cameras = capture.images, capture.cameras
        depths = load_depths(args.depths, len(images)) if args.depths else None
        eval_views = tuple(range(args.holdout_every - 1, len(images), args.holdout_every)) if args.holdout_every > 0 else ()
        result = reconstruct(
            images, cameras, depths, points=capture.points, point_colors=capture.point_colors,
            steps=args.steps, time_limit_s=args.time_limit, init_points=args.init_points,
            sh_degree=args.sh_degree if args.sh_degree is not None else 0 if capture.source == "cameras" else 3,
            lpips_weight=args.lpips_weight, depth_weight=args.depth_weight,
            camera_refinement=CameraRefinementConfig(method=args.camera_method) if args.refine_cameras else None,
            exposure_compensation=args.exposure, eval_views=eval_views, eval_every=args.eval_every,
            device=args.device, backend=args.backend, seed=args.seed, num_threads=args.threads or None,
        )
    except (FileNotFoundError, ValueError, ImportError) as e:
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
