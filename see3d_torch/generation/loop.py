"""Iterative warp-and-align generation (Fig. 4 of the paper), on top of a multi-view backend.

One iteration:
1. take the next targets of the trajectory (nearest to what is known, `anchors.next_targets`);
2. choose the anchors: the known views nearest to those targets (`anchors.choose_anchors`);
3. give every anchor a metric depth once: monocular depth, aligned per keypoint (Eq. 15:
   SIFT matches with other known views, triangulated through their cameras) pooled with
   samples of the depth warped into it from its own anchors, then densified by LWLR
   (Eq. 16-17); the first input view of a single-view run keeps its monocular depth, which
   fixes the scene's scale;
4. forward-warp every anchor into every target (Eq. 18-19) and keep, per pixel, the nearest
   surface over anchors: the warped image (holes black) and its mask (1 = known) are the
   visual condition, without random masking (Eq. 20);
5. the backend generates the targets (Eq. 21); they become known views, hence anchors later.

`generate_views` keeps one `ViewRecord` per view (camera, image, condition, mask, warped and
aligned depth) and composes pure functions on them: `next_targets`/`choose_anchors` (1-2),
`alignment_partners` and `aligned_depth` (3), `warp_anchors` (4), `finished_view` (5). It
returns a `GenerationResult` (views, cameras, depths, masks, the condition images used, and what
happened in each iteration); `GenerationResult.save` writes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from see3d_core import trajectories
from see3d_core.cameras import Camera
from see3d_torch.generation import anchors as anchor_choice
from see3d_torch.generation.backends import MultiViewBackend



@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Knobs of the loop. `targets_per_iteration=None` fills the backend's `max_views`."""

    num_anchors: int = 2
    targets_per_iteration: int | None = None
    seed: int = 0
    match_method: str = "sift"
    min_keypoints: int = 12  # fewer consistent points (keypoints and warped-depth samples): the monocular depth as it is
    lwlr_bandwidth: float = 50.0  # pixels at 512 px; scaled with the image size
    max_alignment_partners: int = 3  # known views matched against a new anchor
    # paste the condition's known pixels (mask 1) back over the model's output. Off by default
    # and for the released weights (they regenerate the whole view); the demo turns it on for its
    # small model and its report says so
    composite_known: bool = False

    def __post_init__(self):
        if self.num_anchors < 1:
            raise ValueError(f"num_anchors must be >= 1, got {self.num_anchors}")
        if self.targets_per_iteration is not None and self.targets_per_iteration < 1:
            raise ValueError(f"targets_per_iteration must be >= 1, got {self.targets_per_iteration}")

    def targets_per_call(self, max_views: int) -> int:
        """Targets generated per backend call: the anchors fill the rest of `max_views`."""
        return self.targets_per_iteration or max(1, max_views - self.num_anchors)

    def expected_calls(self, num_targets: int, max_views: int) -> int:
        """Backend calls a run with `num_targets` targets makes."""
        return -(-num_targets // self.targets_per_call(max_views))


@dataclasses.dataclass
class Iteration:
    """What one iteration did (indices are positions in `GenerationResult`)."""

    targets: list[int]
    anchors: list[int]
    known_fraction: list[float]  # per target: fraction of pixels the warp covered
    seconds: float


@dataclasses.dataclass
class GenerationResult:
    """All views of a run: the inputs first, then the trajectory's targets in order.

    images/conditions [N, H, W, 3] float32 in [0, 1]; depths [N, H, W] float32 z-depth;
    masks [N, H, W] float32 (1 = known in the condition; all ones for inputs)."""

    images: np.ndarray
    cameras: list[Camera]
    depths: np.ndarray
    masks: np.ndarray
    conditions: np.ndarray
    is_input: np.ndarray  # [N] bool
    depth_sources: list[str]  # per view: how its depth was obtained
    iterations: list[Iteration]
    backend: str
    seed: int

    @property
    def generated(self) -> np.ndarray:
        return np.flatnonzero(~self.is_input)

    def save(self, out: str | os.PathLike) -> dict[str, str]:
        """Write views/, depths/ (.npy), masks/, conditions/ (PNG), cameras.json and
        generation.json under `out`; returns the paths written by kind."""
        from see3d_core.images import depth_to_rgb, write_png

        out = Path(out)
        for sub in ("views", "depths", "masks", "conditions"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        far = float(np.percentile(self.depths, 95)) if self.depths.size else 1.0
        for i in range(len(self.cameras)):
            write_png(out / "views" / f"view_{i:03d}.png", self.images[i])
            write_png(out / "conditions" / f"condition_{i:03d}.png", self.conditions[i])
            write_png(out / "masks" / f"mask_{i:03d}.png", np.repeat(self.masks[i][..., None], 3, axis=-1))
            np.save(out / "depths" / f"depth_{i:03d}.npy", self.depths[i].astype(np.float32))
            write_png(out / "depths" / f"depth_{i:03d}.png", depth_to_rgb(self.depths[i], near=0.0, far=far))
        trajectories.save_json(out / "cameras.json", self.cameras)
        record = {
            "backend": self.backend,
            "seed": self.seed,
            "views": [
                {"index": i, "input": bool(self.is_input[i]), "depth_source": self.depth_sources[i],
                 "known_fraction": float(self.masks[i].mean())}
                for i in range(len(self.cameras))
            ],
            "iterations": [dataclasses.asdict(it) for it in self.iterations],
        }
        (out / "generation.json").write_text(json.dumps(record, indent=1))
        return {"views": str(out / "views"), "depths": str(out / "depths"), "masks": str(out / "masks"),
                "conditions": str(out / "conditions"), "cameras": str(out / "cameras.json"),
                "record": str(out / "generation.json")}


# --- geometry steps (built on see3d_torch.depth / warp / features) ------------------------------

def warp_anchors(
    anchor_images: Sequence[np.ndarray], anchor_depths: Sequence[np.ndarray], anchor_cameras: Sequence[Camera], target: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward-warp every anchor into `target`; per pixel keep the nearest surface.

    Returns the warped image [H, W, 3] (black in holes), the mask [H, W] (1 = known) and the
    warped z-depth in the target camera [H, W] (0 in holes)."""
    from see3d_torch.warp import forward_warp

    h, w = target.height, target.width
    best_z = torch.full((h, w), float("inf"))
    image = torch.zeros(h, w, 3)
    for img, depth, cam in zip(anchor_images, anchor_depths, anchor_cameras):
        warped, known, z_dst = forward_warp(
            torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None],
            torch.from_numpy(np.asarray(depth, dtype=np.float32))[None, None],
            torch.from_numpy(cam.K).float()[None], torch.from_numpy(target.K).float()[None],
            torch.from_numpy(target.w2c @ cam.c2w).float()[None], out_size=(h, w), return_depth=True,
        )
        known = known[0, 0] > 0.5
        closer = known & (z_dst[0, 0] < best_z)  # the merge over anchors keeps the target's nearest surface
        best_z = torch.where(closer, z_dst[0, 0], best_z)
        image = torch.where(closer[..., None], warped[0].permute(1, 2, 0), image)
    mask = torch.isfinite(best_z)
    warped_depth = torch.where(mask, best_z, torch.zeros(()))
    return image.clamp(0, 1).numpy(), mask.float().numpy(), warped_depth.numpy()


def keypoint_alignment(
    image: np.ndarray, camera: Camera, partners: Sequence[tuple[np.ndarray, Camera]], method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 15: metric depths of the view's keypoints from matches with views whose cameras are
    known (outliers dropped). Returns uv [K, 2] and depths [K] (empty when nothing matched)."""
    from see3d_torch.depth import keypoint_depths
    from see3d_torch.features import match

    uvs, depths = [], []
    for partner_image, partner_camera in partners:
        uv_self, uv_other = match(image, partner_image, method=method)
        uv_self, uv_other = (torch.as_tensor(np.asarray(u), dtype=torch.float64).reshape(-1, 2) for u in (uv_self, uv_other))
        if len(uv_self) == 0:
            continue
        z, inlier = keypoint_depths(uv_self, uv_other, torch.from_numpy(camera.K), torch.from_numpy(partner_camera.K),
                                    torch.from_numpy(partner_camera.w2c @ camera.c2w))
        uvs.append(uv_self[inlier].numpy())
        depths.append(z[inlier].double().numpy())
    if not uvs:
        return np.zeros((0, 2)), np.zeros(0)
    return np.concatenate(uvs), np.concatenate(depths)


def consistent_keypoints(mono: np.ndarray, uv: np.ndarray, depth: np.ndarray, space: str = "depth",
                         threshold: float = 0.1, trials: int = 256, seed: int = 0) -> np.ndarray:
    """Bool [K]: keypoints agreeing with the largest set that one affine map of the monocular
    prediction explains (RANSAC on pairs; relative error < `threshold`). Wrong matches in
    textureless or repetitive regions (sky) triangulate to gross outliers; two of them among
    ninety are enough to flip the sign of a least-squares fit, robust or not."""
    if len(depth) < 3:
        return np.ones(len(depth), bool)
    h, w = mono.shape
    xs = np.clip(np.round(uv[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.round(uv[:, 1]).astype(int), 0, h - 1)
    x = mono[ys, xs].astype(np.float64)
    y = 1.0 / depth if space == "disparity" else depth.astype(np.float64)
    rng = np.random.default_rng(seed)
    best = np.ones(len(depth), bool)
    best_count = -1
    for _ in range(trials):
        i, j = rng.choice(len(depth), 2, replace=False)
        if abs(x[i] - x[j]) < 1e-9:
            continue
        scale = (y[i] - y[j]) / (x[i] - x[j])
        if scale <= 0:  # depth (or disparity) grows with the prediction
            continue
        pred = scale * (x - x[i]) + y[i]
        inlier = np.abs(pred - y) < threshold * np.abs(y)
        if inlier.sum() > best_count:
            best, best_count = inlier, int(inlier.sum())
    return best


def align_depth(mono: np.ndarray, uv: np.ndarray, sparse_depth: np.ndarray, bandwidth: float, space: str = "depth") -> np.ndarray:
    """Global scale/shift, then LWLR (Eq. 16-17) through `see3d_torch.depth.lwlr_align`;
    `space` says whether `mono` is a depth or a disparity (the estimator's `output_space`)."""
    from see3d_torch.depth import lwlr_align

    dense = lwlr_align(torch.from_numpy(mono.astype(np.float32)), torch.from_numpy(uv.astype(np.float32)),
                       torch.from_numpy(sparse_depth.astype(np.float32)), bandwidth=bandwidth, space=space)
    return np.maximum(dense.numpy(), 1e-3).astype(np.float32)


def unaligned_depth(mono: np.ndarray, space: str) -> np.ndarray:
    """A monocular prediction used as depth where nothing can align it (a single input view):
    disparities are inverted; the result's scale becomes the scene's scale."""
    if space == "disparity":
        return (1.0 / np.maximum(mono, 1e-3 * max(float(np.max(mono)), 1e-6))).astype(np.float32)
    return np.maximum(mono, 1e-3).astype(np.float32)


def warped_depth_points(warped_depth: np.ndarray, mask: np.ndarray, max_points: int = 2000, seed: int = 0,
                        edge_tolerance: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Sparse (uv, depth) samples of the depth warped into a view from its anchors, pooled with
    the view's keypoints for its alignment: dense where SIFT finds few points (small or blurry
    generated views), and consistent with the anchors by construction.

    Only known pixels whose 3x3 neighbourhood is known and flat (depth range under
    `edge_tolerance` of the depth) are sampled: forward splatting spreads the nearer surface
    about a pixel over depth edges and hole borders, so samples there carry the wrong surface's
    depth for the monocular map's own edge."""
    known = ((mask > 0.5) & (warped_depth > 0)).astype(np.uint8)
    footprint = np.ones((3, 3), np.uint8)
    interior = cv2.erode(known, footprint, borderType=cv2.BORDER_REPLICATE) > 0  # the 3x3 neighbourhood is known
    depth = np.where(known > 0, warped_depth, 0).astype(np.float32)
    # max - min over the 3x3 neighbourhood (the image border left out); holes only reach pixels that are not interior
    depth_range = cv2.dilate(depth, footprint) - cv2.erode(depth, footprint)
    flat = interior & (depth_range < edge_tolerance * depth)
    ys, xs = np.nonzero(flat)
    if len(ys) > max_points:
        keep = np.random.default_rng(seed).choice(len(ys), max_points, replace=False)
        ys, xs = ys[keep], xs[keep]
    return np.stack([xs, ys], axis=-1).astype(np.float64), warped_depth[ys, xs].astype(np.float64)


# --- the loop -----------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)  # a view is itself: records compare by identity
class ViewRecord:
    """One view of a run as the loop knows it: its camera and what has been made for it so far.
    The loop fills the fields; the functions below only read records and return results."""

    index: int  # position in `GenerationResult`
    camera: Camera
    image: np.ndarray | None = None  # [H, W, 3] in [0, 1]: the input, or the generated view (None until then)
    condition: np.ndarray | None = None  # [H, W, 3]: the warped anchors (inputs: their own image)
    mask: np.ndarray | None = None  # [H, W]: 1 = known in the condition
    warped_depth: np.ndarray | None = None  # [H, W]: the anchors' depth warped into this view (targets only)
    depth: np.ndarray | None = None  # [H, W]: metric z-depth, once aligned (or given)
    depth_source: str = ""  # how `depth` was obtained


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image.astype(np.float32)
    interp = cv2.INTER_AREA if image.shape[0] > h else cv2.INTER_CUBIC
    return np.clip(cv2.resize(image.astype(np.float32), (w, h), interpolation=interp), 0, 1)


def input_records(images: Sequence[np.ndarray], cameras: Sequence[Camera], input_depths: Sequence[np.ndarray] | None) -> list[ViewRecord]:
    """Records of the input views at their cameras' size: fully known, with their given depth
    (RGB-D input, the synthetic world) when there is one."""
    if input_depths is not None and len(input_depths) != len(images):
        raise ValueError(f"input_depths: expected {len(images)} depth maps (one per input), got {len(input_depths)}")
    records = []
    for i, (img, cam) in enumerate(zip(images, cameras)):
        h, w = cam.height, cam.width
        image = _resize_image(np.asarray(img, dtype=np.float32), (h, w))
        record = ViewRecord(i, cam, image, image.copy(), np.ones((h, w), np.float32))
        if input_depths is not None:
            d = np.asarray(input_depths[i], dtype=np.float32)
            if d.ndim != 2:
                raise ValueError(f"input_depths[{i}] must be [H, W], got shape {d.shape}")
            record.depth = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST) if d.shape != (h, w) else d
            record.depth_source = "given"
        records.append(record)
    return records


def alignment_partners(view: ViewRecord, known: Sequence[ViewRecord], scene_scale: float, max_partners: int) -> list[ViewRecord]:
    """The known views (with an image, other than `view`) nearest to it, at most `max_partners`."""
    others = [k for k in known if k.index != view.index and k.image is not None]
    return sorted(others, key=lambda k: anchor_choice.camera_distance(view.camera, k.camera, scene_scale))[:max_partners]


def aligned_depth(view: ViewRecord, partners: Sequence[ViewRecord], depth_estimator, config: GenerationConfig) -> tuple[np.ndarray, str]:
    """Step 3: the view's monocular depth made metric, and how. Aligned (Eq. 16-17) on its
    keypoints matched with `partners` (Eq. 15) pooled with samples of the depth warped into it
    from its anchors (`warped_depth_points`), when it has one, keeping the points one affine map
    of the prediction explains; with fewer than `min_keypoints` of them, the monocular depth as
    it is (a lone input: it sets the scene's scale).

    Keypoints alone are too few at small sizes: at 64 px SIFT finds 20-60 per view and views
    late in the loop landed at 5-30% median depth error; pooled, every view of the demo's
    validation scenes is within 1% (RESULTS, issue 18)."""
    h, w = view.camera.height, view.camera.width
    space = getattr(depth_estimator, "output_space", "depth")
    bandwidth = config.lwlr_bandwidth * max(h, w) / 512.0
    mono = depth_estimator.predict(view.image, view.camera)
    mono = (mono.detach().cpu().numpy() if isinstance(mono, torch.Tensor) else np.asarray(mono)).astype(np.float32)
    if mono.shape != (h, w):
        raise ValueError(f"depth estimator returned shape {mono.shape} for a {h}x{w} view")
    if partners:
        uv, z = keypoint_alignment(view.image, view.camera, [(p.image, p.camera) for p in partners], config.match_method)
    else:
        uv, z = np.zeros((0, 2)), np.zeros(0)
    num_keypoints = len(z)
    if view.warped_depth is not None:
        uv_warped, z_warped = warped_depth_points(view.warped_depth, view.mask, seed=config.seed + view.index)
        uv, z = np.concatenate([uv, uv_warped]), np.concatenate([z, z_warped])
    keep = consistent_keypoints(mono, uv, z, space, seed=config.seed + view.index)
    kept_keypoints, kept_warped = int(keep[:num_keypoints].sum()), int(keep[num_keypoints:].sum())
    if kept_keypoints + kept_warped >= config.min_keypoints:
        source = f"keypoints ({kept_keypoints})" + (f" + warped depth ({kept_warped})" if view.warped_depth is not None else "")
        return align_depth(mono, uv[keep], z[keep], bandwidth, space), source
    return unaligned_depth(mono, space), "monocular (sets the scale)" if not partners else f"monocular ({kept_keypoints} keypoints)"


def finished_view(generated: np.ndarray, condition: np.ndarray, mask: np.ndarray, composite_known: bool) -> np.ndarray:
    """The backend's output for a target as the loop keeps it: in [0, 1], with the condition's
    known pixels pasted back when `composite_known`."""
    if composite_known:
        generated = np.where(mask[..., None] > 0.5, condition, generated)
    return np.clip(generated, 0, 1).astype(np.float32)


def generate_views(
    images: Sequence[np.ndarray],
    input_cameras: Sequence[Camera],
    targets: Sequence[Camera],
    backend: MultiViewBackend,
    depth_estimator,
    config: GenerationConfig = GenerationConfig(),
    input_depths: Sequence[np.ndarray] | None = None,
    show_progress: bool = False,
) -> GenerationResult:
    """Generate the views seen by `targets` from the input views, iteratively (Fig. 4).

    `images` are [H, W, 3] float in [0, 1] seen by `input_cameras`; all cameras share one
    world frame (for a single view: the frame its depth is measured in). When the backend
    has a fixed `image_size`, images and cameras are resized to it. `depth_estimator` is a
    `see3d_torch.mono_depth` estimator (`predict(image, camera)`, `output_space` "depth" or
    "disparity"); its unknown scale is fixed by alignment with the other known views. Known
    metric `input_depths` (RGB-D input, or the synthetic world) replace the estimate for the
    inputs; without them a single input view's monocular depth sets the scene's scale."""
    from tqdm import tqdm

    if len(images) == 0 or len(images) != len(input_cameras):
        raise ValueError(f"need one camera per input image, got {len(images)} images and {len(input_cameras)} cameras")
    if len(targets) == 0:
        raise ValueError("the trajectory has no target cameras")
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"input image {i} must be [H, W, 3], got shape {img.shape}")
    if backend.image_size is not None:
        h, w = backend.image_size
    else:
        h, w = input_cameras[0].height, input_cameras[0].width
    cams = [c.resized(w, h) for c in [*input_cameras, *targets]]
    n_in = len(images)
    views = input_records(images, cams[:n_in], input_depths)
    views += [ViewRecord(i, cam) for i, cam in enumerate(cams[n_in:], start=n_in)]
    scale = anchor_choice.scene_scale_of(cams)
    per_call = config.targets_per_call(backend.max_views)

    def give_depth(view: ViewRecord, known: Sequence[ViewRecord]) -> None:
        if view.depth is None:
            partners = alignment_partners(view, known, scale, config.max_alignment_partners)
            view.depth, view.depth_source = aligned_depth(view, partners, depth_estimator, config)

    known, pending = views[:n_in], views[n_in:]
    iterations: list[Iteration] = []
    bar = tqdm(total=len(targets), desc=f"generate ({backend.name})", unit="view", disable=not show_progress)
    while pending:
        t0 = time.perf_counter()
        known_cameras = [v.camera for v in known]
        chunk = [pending[k] for k in anchor_choice.next_targets(known_cameras, [v.camera for v in pending], per_call, scale)]
        chosen = [known[k] for k in anchor_choice.choose_anchors(known_cameras, [v.camera for v in chunk], config.num_anchors, scale)]
        for anchor in chosen:
            give_depth(anchor, known)
        for target in chunk:
            target.condition, target.mask, target.warped_depth = warp_anchors(
                [a.image for a in chosen], [a.depth for a in chosen], [a.camera for a in chosen], target.camera)
        generated = backend.generate(
            np.stack([a.image for a in chosen]), np.stack([t.condition for t in chunk]), np.stack([t.mask for t in chunk]),
            reference_cameras=[a.camera for a in chosen], target_cameras=[t.camera for t in chunk],
            seed=config.seed + len(iterations),
        )
        if generated.shape != (len(chunk), h, w, 3):
            raise ValueError(f"backend {backend.name} returned shape {generated.shape}, expected {(len(chunk), h, w, 3)}")
        for target, output in zip(chunk, generated):
            target.image = finished_view(output, target.condition, target.mask, config.composite_known)
        known = known + chunk
        pending = [p for p in pending if p not in chunk]
        iterations.append(Iteration([t.index for t in chunk], [a.index for a in chosen], [float(t.mask.mean()) for t in chunk],
                                    round(time.perf_counter() - t0, 3)))
        bar.update(len(chunk))
    bar.close()
    for view in views:  # views never used as anchors still get an aligned depth
        give_depth(view, known)
    return GenerationResult(
        images=np.stack([v.image for v in views]), cameras=cams, depths=np.stack([v.depth for v in views]),
        masks=np.stack([v.mask for v in views]), conditions=np.stack([v.condition for v in views]),
        is_input=np.arange(len(views)) < n_in, depth_sources=[v.depth_source for v in views],
        iterations=iterations, backend=backend.name, seed=config.seed,
    )
