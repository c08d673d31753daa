"""The `see3d` command.

Subcommands import their side of the kit lazily, so `see3d --help` needs neither torch nor jax.

- `see3d demo [--out DIR]`: the whole pipeline on the built-in default: one synthetic view,
  generated views along an orbit (the embedded small model), Gaussian Splatting, metrics
  against the scene's true views (and the warp-only baseline's), an HTML report.
- `see3d generate IMAGE... --trajectory orbit|forward|spiral|interpolate|FILE --weights DIR
  --out DIR`: warp-and-align generation from your own images (one view, or 2 to 6 with
  `--cameras cameras.json` or estimated cameras).
- `see3d reconstruct RUN_DIR --out DIR`: Gaussian Splatting on the views of a `generate` run.
- `see3d world --out DIR`: render a synthetic scene along a trajectory as a clip dataset.
- `see3d dataset --out DIR --scenes N`: a training clip dataset of N synthetic scenes (orbits
  with cameras and depths, and their pair warps), the data of the small model's recipe.
- `see3d pair-warps DATA --size S`: every frame of each posed clip warped into every other at
  the training size S, for the "posed_warp" condition.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from see3d_core.images import depth_to_rgb, to_uint8, write_png
from see3d_core.released_layout import detect_checkpoint_format

BACKENDS = ("auto", "pipeline", "unet", "jax", "warp-only")


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
    rgb = [to_uint8(f.rgb) for f in frames]
    far = float(np.percentile(np.concatenate([f.depth.ravel() for f in frames]), 95))
    picks = np.linspace(0, len(frames) - 1, min(6, len(frames))).round().astype(int)
    grid = np.concatenate(
        [np.concatenate([rgb[i] for i in picks], axis=1), np.concatenate([to_uint8(depth_to_rgb(frames[i].depth, near=0.0, far=far)) for i in picks], axis=1)],
        axis=0,
    )
    write_png(out / "preview.png", grid)
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


def _print_summary(title: str, summary: dict, seconds: float) -> None:
    summary = {**summary, "seconds": round(seconds, 2)}
    print(f"{title}:", file=sys.stderr)
    print(json.dumps(summary, indent=1))


DATASET_ARGUMENTS = ("scenes", "frames", "size", "seed", "unposed")  # what `see3d dataset` takes (recipes' DATA)


def write_dataset(out: Path, scenes: int, frames: int, size: int, seed: int, unposed: bool = False) -> dict:
    """`see3d dataset`: `scenes` synthetic orbits as a clip dataset of `frames` frames of size x
    size in `out`; posed clips (cameras and depths) also get their pair warps at that size (the
    "posed_warp" condition; other sizes: `see3d pair-warps`). Returns the summary."""
    from see3d_core.clips import ClipDataset, write_synthetic_dataset

    if scenes < 1 or frames < 2 or size < 8:
        raise ValueError(f"expected --scenes >= 1, --frames >= 2, --size >= 8; got {scenes}, {frames}, {size}")
    write_synthetic_dataset(out, scenes, frames_per_clip=frames, width=size, height=size, seed=seed, posed=not unposed)
    summary = {"out": str(out), "clips": len(ClipDataset(out).entries()), "frames_per_clip": frames,
               "size": size, "posed": not unposed, "seed": seed}
    if not unposed:
        from see3d_torch.warp import write_dataset_pair_warps

        summary["pair_warps"] = write_dataset_pair_warps(out, size)
    return summary


def write_dataset_once(data: Path, spec: dict) -> Path:
    """`see3d dataset` with the arguments `spec` (`DATASET_ARGUMENTS`; "unposed" optional) into
    `data`, once: `data.done` beside it records the spec when the data is complete, and a rerun
    that finds the same spec there keeps the data (another spec, or an interrupted write, writes
    it again from scratch). Used by `see3d demo-checkpoint` (a recipe's DATA) and
    benchmarks/table3.py."""
    import shutil

    unknown = sorted(set(spec) - set(DATASET_ARGUMENTS))
    if unknown:
        raise ValueError(f"dataset arguments {unknown} unknown; expected some of {list(DATASET_ARGUMENTS)}")
    done = data.with_name(data.name + ".done")
    if done.is_file() and json.loads(done.read_text()) == spec:
        return data
    if data.exists():
        shutil.rmtree(data)
    write_dataset(data, spec["scenes"], spec["frames"], spec["size"], spec["seed"], spec.get("unposed", False))
    done.write_text(json.dumps(spec))
    return data


def _cmd_dataset(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out}: not empty; choose a new directory (clip datasets are not overwritten)")
    t0 = time.perf_counter()
    summary = write_dataset(out, args.scenes, args.frames, args.size, args.seed, args.unposed)
    _print_summary("see3d dataset wrote", summary, time.perf_counter() - t0)
    return 0


def _cmd_pair_warps(args: argparse.Namespace) -> int:
    from see3d_torch.warp import write_dataset_pair_warps

    if args.size < 8:
        raise ValueError(f"--size: expected >= 8 (the training image size), got {args.size}")
    t0 = time.perf_counter()
    written = write_dataset_pair_warps(args.data, args.size, overwrite=args.overwrite)
    _print_summary("see3d pair-warps wrote", {"data": str(args.data), "size": args.size, "clips_written": written},
                   time.perf_counter() - t0)
    return 0


def _cmd_world(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    summary = render_world(Path(args.out), args.seed, args.frames, args.size, args.trajectory, args.overwrite)
    _print_summary("see3d world wrote", summary, time.perf_counter() - t0)
    return 0


def _depth_estimator(depth_model: str, offline: bool | None = None):
    """Depth Anything from a local folder or a Hugging Face repository id (the cache when offline)."""
    from see3d_torch.mono_depth import DepthAnything

    return DepthAnything(depth_model, offline=offline)


def pick_device(device: str) -> str:
    """`auto`: CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_backend(kind: str, weights: str | None, device: str = "cpu", steps: int | None = None, variant: str = "sparse",
                 offline: bool | None = None):
    """The model behind the generation loop, chosen by `--backend` (or by the folder's layout
    with `auto`); each framework is imported only when chosen. `weights` is a folder or a
    Hugging Face repository id (default: the authors' released repository). `variant` picks the
    released UNet (`single` or `sparse`) of a See3D folder."""
    from see3d_core.weights import RELEASED_SEE3D_REPO, is_repo_id, resolve_weights

    if kind == "warp-only":
        from see3d_torch.generation.backends import WarpOnlyBackend

        return WarpOnlyBackend()
    weights = weights or RELEASED_SEE3D_REPO
    if is_repo_id(weights) and kind in ("auto", "pipeline") and weights == RELEASED_SEE3D_REPO:
        from see3d_torch.pipeline import resolve_release

        folder = resolve_release(weights, variant, offline)  # only the files this variant needs
    else:
        folder = resolve_weights(weights, offline=offline)
    if kind == "auto":
        kind = {"released": "pipeline", "model": "unet"}[detect_checkpoint_format(folder)]
    if kind == "pipeline":
        from see3d_torch.generation.backends import See3DPipelineBackend

        return See3DPipelineBackend(folder, variant=variant, device=device, num_inference_steps=steps, offline=offline)
    if kind == "unet":
        from see3d_torch.generation.backends import TorchUNetBackend

        return TorchUNetBackend(folder, device=device, **({"num_inference_steps": steps} if steps else {}))
    if kind == "jax":
        from see3d_jax.generation_backend import JaxSamplerBackend

        return JaxSamplerBackend(folder, **({"num_inference_steps": steps} if steps else {}))
    raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {kind!r}")


def _cmd_generate(args: argparse.Namespace) -> int:
    from see3d_torch.generation import inputs
    from see3d_torch.generation.loop import GenerationConfig, generate_views, unaligned_depth
    from see3d_core.images import read_image
    from see3d_torch.generation.report import image_grid

    _set_threads(args.threads)
    t0 = time.perf_counter()
    if not 1 <= len(args.images) <= 6:
        raise ValueError(f"give 1 image (single view) or 2 to 6 images (sparse views), got {len(args.images)}")
    images = [read_image(p) for p in args.images]
    if args.cameras:
        cams = inputs.load_input_cameras(args.cameras, images)
    elif len(images) == 1:
        cams = [inputs.default_camera(images[0].shape[1], images[0].shape[0], args.fov)]
    else:
        cams = inputs.estimate_cameras(images, args.fov, method=args.camera_method)
    variant = args.variant if args.variant != "auto" else ("single" if len(images) == 1 else "sparse")
    device = pick_device(args.device)
    offline = True if args.offline else None
    backend = load_backend(args.backend, args.weights, device, args.steps, variant, offline)
    estimator = _depth_estimator(args.depth_model, offline)
    print(f"see3d generate: backend {backend.name} on {device}", file=sys.stderr, flush=True)
    first_depth = np.asarray(estimator.predict(images[0], cams[0]).detach().cpu())
    first_depth = unaligned_depth(first_depth, getattr(estimator, "output_space", "depth"))
    if len(images) > 1:  # estimated cameras are in units of the first baseline, not of the depth
        focus = float(np.median([np.linalg.norm(c.center - cams[0].center) for c in cams[1:]])) * 4.0
    else:
        focus = float(np.median(first_depth))
    targets = inputs.build_trajectory(args.trajectory, cams, focus, args.views)
    config = GenerationConfig(num_anchors=args.anchors, seed=args.seed)
    if device == "cpu" and hasattr(backend, "seconds_per_call"):  # say what a CPU run costs before it starts
        calls = config.expected_calls(len(targets), backend.max_views)
        seconds = backend.seconds_per_call()
        print(f"see3d generate: on the CPU one generation call takes ~{seconds:.0f} s (one model step measured); "
              f"{calls} calls: expect ~{calls * seconds / 60:.0f} min. A GPU (--device cuda) takes seconds.", file=sys.stderr, flush=True)
    result = generate_views(images, cams, targets, backend, estimator, config, show_progress=True)
    out = Path(args.out)
    written = result.save(out)
    picks = result.generated[:: max(1, len(result.generated) // 6)][:6]
    write_png(out / "grid.png", image_grid([[result.conditions[i] for i in picks], [result.images[i] for i in picks]]))
    written["grid"] = str(out / "grid.png")
    _print_summary("see3d generate wrote", {**written, "inputs": len(images), "generated": int(len(result.generated)),
                                            "backend": backend.name}, time.perf_counter() - t0)
    return 0


def _cmd_released(args: argparse.Namespace) -> int:
    """The authors' `inference.py` on their folder layout, with the kit's pipeline."""
    from see3d_torch.pipeline import See3DPipeline, generate_with_super_resolution, load_released_inputs

    _set_threads(args.threads)
    t0 = time.perf_counter()
    device = pick_device(args.device)
    offline = True if args.offline else None
    refs, warps, masks, names = load_released_inputs(args.references, args.warps, (args.size, args.size))
    variant = args.variant if args.variant != "auto" else ("single" if len(refs) == 1 else "sparse")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"see3d released: {len(refs)} references, {len(warps)} warps, UNet {variant} on {device}", file=sys.stderr, flush=True)
    if args.super_resolution:
        base, upscaled = generate_with_super_resolution(args.weights, refs, warps, masks, variant=variant, seed=args.seed,
                                                        device=device, offline=offline)
    else:
        pipe = See3DPipeline.from_pretrained(args.weights, variant=variant, device=device, offline=offline)
        base, upscaled = pipe(refs, warps, masks, seed=args.seed), None
    written = {}
    for name, image in zip(names, base):
        write_png(out / f"predict_{name}.png", image)
    written["base"] = str(out / "predict_*.png")
    if upscaled is not None:
        for name, image in zip(names, upscaled):
            write_png(out / f"SR_predict_{name}.png", image)
        written["super_resolution"] = str(out / "SR_predict_*.png")
    _print_summary("see3d released wrote", {**written, "references": len(refs), "warps": len(warps)}, time.perf_counter() - t0)
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from see3d_torch.generation.demo import reconstruct_run

    _set_threads(args.threads)
    t0 = time.perf_counter()
    written = reconstruct_run(Path(args.run), Path(args.out), Path(args.cameras) if args.cameras else None, steps=args.steps,
                              lpips_weight=args.lpips_weight, refine_cameras=args.refine_cameras, video_frames=args.video_frames)
    _print_summary("see3d reconstruct wrote", written, time.perf_counter() - t0)
    return 0


def _set_threads(threads: int | None) -> None:
    """torch's intra-op threads for the rest of the command (`main` restores them). The CPU
    renderer and the small models run many small ops; on a 2-core machine two OpenMP threads
    mostly spin-wait for each other (measured 10x slower under load)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _cmd_demo(args: argparse.Namespace) -> int:
    from see3d_torch.generation.demo import DemoConfig, run_demo

    _set_threads(args.threads)
    t0 = time.perf_counter()
    options = {"num_inference_steps": args.steps} if args.steps is not None else {}
    config = DemoConfig(seed=args.seed, num_views=args.views, splat_steps=args.splat_steps, checkpoint=args.weights,
                        flythrough_frames=args.video_frames, composite_known=not args.no_composite, **options)
    written = run_demo(Path(args.out), config)
    _print_summary("see3d demo wrote", written, time.perf_counter() - t0)
    return 0


def training_legs(recipe, overrides: list[str], train_dir: Path) -> list[tuple[int | None, list[str]]]:
    """The training legs (`LEGS`, their end steps) that the run in `train_dir` has not reached,
    each with the overrides it trains with. Each leg resumes the last (optimizer, EMA, data
    position) with `steps` set to its end, so its cosine restarts over the longer run; that is
    how the embedded model was trained, and the one command reproduces it. A recipe's
    `LEG_OVERRIDES` ({leg end: ["key=value", ...]}) change the config from that leg on; the
    command line's `overrides` come after them. `[(None, [])]` (one run as configured) when the
    overrides set `steps` or the recipe has no LEGS; the last leg alone when all are reached (a
    rerun exports)."""
    if any(o.split("=", 1)[0].strip() == "steps" for o in overrides) or not getattr(recipe, "LEGS", None):
        return [(None, [])]
    legs = [int(s) for s in recipe.LEGS]
    if legs[0] < 1 or any(b <= a for a, b in zip(legs, legs[1:])):
        raise ValueError(f"the recipe's LEGS must be increasing step counts >= 1, got {recipe.LEGS}")
    leg_overrides = dict(getattr(recipe, "LEG_OVERRIDES", {}))
    unknown = sorted(set(leg_overrides) - set(legs))
    if unknown or not all(isinstance(v, (list, tuple)) and all(isinstance(o, str) for o in v) for v in leg_overrides.values()):
        raise ValueError(f"the recipe's LEG_OVERRIDES must map ends in LEGS {recipe.LEGS} to lists of 'key=value' "
                         f"strings, got {leg_overrides!r}")
    done = None
    if (train_dir / "checkpoints").is_dir():
        from see3d_jax.checkpointing import Checkpointer

        checkpointer = Checkpointer(str(train_dir / "checkpoints"), asynchronous=False)
        done = checkpointer.latest_step()
        checkpointer.close()
    planned, active = [], []
    for end in legs:
        active = [*active, *leg_overrides.get(end, ())]
        planned.append((end, active))
    return [leg for leg in planned if done is None or leg[0] > done] or planned[-1:]


def _cmd_demo_checkpoint(args: argparse.Namespace) -> int:
    """Rebuild the demo's model from its recipe file: data, training (resumable), export."""
    import os
    import shutil

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.cpu_devices < 1:
        raise ValueError(f"--cpu-devices must be >= 1, got {args.cpu_devices}")
    # before jax starts: on a CPU the batch is split over several XLA devices (GPUs ignore this)
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.cpu_devices}").strip()
    from see3d_jax.train_config import load_recipe

    recipe = load_recipe(args.recipe)
    t0 = time.perf_counter()
    spec = dict(getattr(recipe, "DATA", {}))
    if not spec:
        raise ValueError(f"--recipe {args.recipe}: the recipe defines no DATA (the arguments of `see3d dataset`)")
    data = write_dataset_once(work / "data", spec)
    from see3d_jax.train import run
    from see3d_jax.train_config import load_config

    for steps, leg_overrides in training_legs(recipe, args.overrides, work / "train"):
        config = load_config(args.recipe, [*leg_overrides, *args.overrides, *([f"steps={steps}"] if steps else [])])
        summary = run(config, str(data), str(work / "train"), progress=not args.no_progress)
    from see3d_torch.generation.demo import DEFAULT_CHECKPOINT

    out = Path(args.out) if args.out else DEFAULT_CHECKPOINT
    out.mkdir(parents=True, exist_ok=True)
    for f in (work / "train" / "ema").iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    _print_summary("see3d demo-checkpoint wrote", {"checkpoint": str(out), "data": str(data), "train": summary,
                                                  "megabytes": round(sum(f.stat().st_size for f in out.iterdir()) / 1e6, 2)},
                   time.perf_counter() - t0)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="see3d", description="See3D research kit")
    parser.add_argument("--debug", action="store_true", help="on an error, raise with the full traceback instead of a one-line message")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole pipeline on a synthetic scene: generate, splat, measure, report")
    demo.add_argument("--out", default="outputs/demo", help="output directory (replaced files are overwritten)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed")
    demo.add_argument("--views", type=int, default=9, help="views along the orbit, the input included")
    demo.add_argument("--splat-steps", type=int, default=None, help="Gaussian Splatting steps (default: the demo's)")
    demo.add_argument("--weights", default=None, help="a torch UNet folder instead of the embedded small checkpoint")
    demo.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the demo's)")
    demo.add_argument("--no-composite", action="store_true", help="keep the model's own pixels where the condition "
                      "knows them (default: the condition's known pixels are pasted over the small model's output)")
    demo.add_argument("--video-frames", type=int, default=30, help="fly-through length (0: no video)")
    demo.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this small CPU workload)")
    demo.set_defaults(func=_cmd_demo)

    ckpt = sub.add_parser("demo-checkpoint", help="rebuild the demo's model from its recipe file (see3d_jax/configs/demo.py): "
                          "its synthetic clips, training on this machine (resumable), the exported weights")
    ckpt.add_argument("--workdir", required=True, help="run folder: data/, train/ (rerun the same line to resume)")
    ckpt.add_argument("--recipe", default="demo", help="recipe name in see3d_jax/configs or a .py file")
    ckpt.add_argument("--out", default=None, help="where the weights go (default: the demo's embedded checkpoint folder)")
    ckpt.add_argument("--cpu-devices", type=int, default=4, help="XLA CPU devices the batch is split over on a CPU "
                      "(2 per core is fastest: 2.4x on 2 cores, RESULTS)")
    ckpt.add_argument("--no-progress", action="store_true")
    ckpt.add_argument("overrides", nargs="*", help="key=value training overrides (e.g. steps=100)")
    ckpt.set_defaults(func=_cmd_demo_checkpoint)

    gen = sub.add_parser("generate", help="generate views along a trajectory from 1 to 6 images")
    gen.add_argument("images", nargs="+", help="input image files (1: single view; 2 to 6: sparse views)")
    gen.add_argument("--trajectory", default="orbit", help="orbit, forward, spiral, interpolate (sparse views) or a trajectory file")
    gen.add_argument("--weights", default=None, help="released See3D folder (e.g. MVD_weights) or Hugging Face repository id "
                     "(default: bruiiii/See3D, the authors'), torch UNet folder or Flax checkpoint")
    gen.add_argument("--backend", default="auto", choices=BACKENDS, help="which model runs (auto: from the --weights layout)")
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--cameras", default=None, help="JSON cameras of the input images (trajectory format, one frame per image)")
    gen.add_argument("--depth-model", default="depth-anything/Depth-Anything-V2-Small-hf",
                     help="Depth Anything folder (transformers format) or Hugging Face repository id")
    gen.add_argument("--offline", action="store_true", help="never download: repository ids resolve from the local "
                     "Hugging Face cache only (also HF_HUB_OFFLINE=1)")
    gen.add_argument("--views", type=int, default=8, help="number of trajectory views")
    gen.add_argument("--anchors", type=int, default=2, help="anchor views per iteration")
    gen.add_argument("--fov", type=float, default=60.0, help="horizontal field of view (degrees) assumed without --cameras")
    gen.add_argument("--camera-method", default="two_view", choices=("two_view", "colmap"),
                     help="how cameras of 2-6 images are estimated without --cameras: OpenCV two-view geometry, or "
                          "pycolmap structure from motion (the 'colmap' extra)")
    gen.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the backend's)")
    gen.add_argument("--variant", default="auto", choices=("auto", "single", "sparse"),
                     help="released See3D UNet (auto: single for one image, sparse for several)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default="auto", help="torch device: auto (CUDA when available, float16), cuda, cpu")
    gen.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    gen.set_defaults(func=_cmd_generate)

    rel = sub.add_parser("released", help="the authors' inference.py on their folder layout (reference images, "
                         "warp_*/mask_* images) with the kit's pipeline; seeded, references sorted")
    rel.add_argument("references", help="folder of reference images")
    rel.add_argument("warps", help="folder of warp_XXX images and their mask_XXX twins")
    rel.add_argument("--out", required=True, help="output directory (predict_XXX.png, SR_predict_XXX.png)")
    rel.add_argument("--weights", default="bruiiii/See3D", help="released See3D folder or Hugging Face repository id")
    rel.add_argument("--variant", default="auto", choices=("auto", "single", "sparse"), help="auto: single for one reference")
    rel.add_argument("--super-resolution", action="store_true", help="also run the 2x SR stage (1024 px)")
    rel.add_argument("--size", type=int, default=512, help="base image side (the released models: 512)")
    rel.add_argument("--seed", type=int, default=0)
    rel.add_argument("--device", default="auto", help="auto (CUDA when available, float16), cuda, cpu")
    rel.add_argument("--offline", action="store_true", help="never download (the local Hugging Face cache only)")
    rel.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    rel.set_defaults(func=_cmd_released)

    rec = sub.add_parser("reconstruct", help="Gaussian Splatting on the views of a `see3d generate` run")
    rec.add_argument("run", help="output directory of `see3d generate` (or a folder of images with --cameras)")
    rec.add_argument("--out", required=True, help="output directory")
    rec.add_argument("--cameras", default=None, help="cameras of a plain image folder (trajectory JSON / RealEstate10K .txt)")
    rec.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    rec.add_argument("--lpips-weight", type=float, default=0.1, help="LPIPS term of the loss (0: off)")
    rec.add_argument("--refine-cameras", action="store_true", help="refine the (estimated) camera poses: with the run's depths, ICP between the "
                     "depth maps then per-camera pose corrections learned with the scene; without, the corrections alone")
    rec.add_argument("--video-frames", type=int, default=60, help="fly-through length (0: no video)")
    rec.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    rec.set_defaults(func=_cmd_reconstruct)

    world = sub.add_parser("world", help="render a synthetic scene as a clip dataset with previews")
    world.add_argument("--out", required=True, help="output directory")
    world.add_argument("--seed", type=int, default=0, help="scene seed")
    world.add_argument("--frames", type=int, default=24, help="number of views")
    world.add_argument("--size", type=int, default=256, help="image width and height")
    world.add_argument("--trajectory", default="orbit", help="orbit, forward, spiral, or a trajectory file (.json / RealEstate10K .txt)")
    world.add_argument("--overwrite", action="store_true", help="replace an existing output")
    world.set_defaults(func=_cmd_world)

    dataset = sub.add_parser("dataset", help="a training clip dataset of synthetic orbits (cameras and depths included)")
    dataset.add_argument("--out", required=True, help="output directory (new or empty)")
    dataset.add_argument("--scenes", type=int, default=800, help="number of scenes, one clip each")
    dataset.add_argument("--frames", type=int, default=8, help="frames per clip (an orbit of 25-45 degrees)")
    dataset.add_argument("--size", type=int, default=64, help="frame width and height")
    dataset.add_argument("--seed", type=int, default=1, help="dataset seed (scene seeds are derived from it)")
    dataset.add_argument("--unposed", action="store_true", help="leave out cameras and depths")
    dataset.set_defaults(func=_cmd_dataset)

    warps = sub.add_parser("pair-warps", help="warp every frame of each posed clip into every other (the generation loop's "
                           "warp) at a training size: the 'posed_warp' condition reads them")
    warps.add_argument("data", help="clip dataset folder")
    warps.add_argument("--size", type=int, required=True, help="the training image size (config image_size)")
    warps.add_argument("--overwrite", action="store_true", help="recompute existing files")
    warps.set_defaults(func=_cmd_pair_warps)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        if args.debug:  # the whole traceback, for a bug report
            raise
        print(f"see3d {args.command}: error: {e} (--debug shows the traceback)", file=sys.stderr)
        return 2
    finally:  # callers in the same process (tests, notebooks) keep their thread count
        if threads is not None:
            sys.modules["torch"].set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
