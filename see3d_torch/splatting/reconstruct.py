"""Gaussian Splatting reconstruction from posed views, with camera and exposure refinement.

`reconstruct(images, cameras, depths=None, **options)` fits 3D Gaussians to the views:

- initialisation (`initialisation.initial_gaussians`) from structure-from-motion points
  (`points`, `point_colors`, e.g. from a COLMAP workspace): one Gaussian per sampled training
  pixel, with its colour, at a depth interpolated between the points the view sees
  (`initialisation.sfm_depth_maps`), or one per point (`init="points"`); else from the depth maps
  (one Gaussian per sampled pixel, unprojected, as for generated views); else random Gaussians in
  the volume the cameras see (`Gaussians.in_frustums`);
- Adam per parameter group with gsplat's defaults (means' rate scaled by the scene size and
  decayed 100x over the run);
- loss `(1 - l) L1 + l (1 - SSIM) + w_lpips LPIPS [+ w_depth |D - D_given|]` with l = 0.2
  (See3D Eq. 22 is L_photo + L_SSIM + L_LPIPS), computed by the functional `training_step`;
- adaptive density control with opacity reset (`densification.DensificationStrategy`);
- optional camera pose refinement (`camera_refinement=CameraRefinementConfig(...)`, run by
  `camera_strategy.CameraRefinementStrategy` beside the densification strategy) and per-image
  exposure compensation (`camera_refinement.ExposureCompensation`). Method "depth" registers the
  poses by multi-view point-to-plane ICP between the depth maps (`depth_registration.py`) and
  trains the scene on them (for exact depths). "photometric" (the default without depths)
  alternates between training a scene with the poses held fixed and registering every pose alone
  against it (`round_downscales`; the round scenes are this module's core run with
  `ReconstructionConfig.scene_only`), then refines poses (6D rotation + translation deltas) and
  scene jointly during the main training. With depths the default ("auto") runs the ICP, and then
  the photometric stages only if the depth maps still disagree under the registered poses,
  smoothly (depths from monocular estimation are smoothly wrong, which biases the ICP; exact or
  merely noisy ones leave nothing for photometry to fix). `Reconstruction.camera_refinement` says
  what ran;
- a progress bar and periodic evaluation (PSNR/SSIM/LPIPS) on held-out views.

Images are float arrays [H, W, 3] in [0, 1] (or uint8); cameras are `see3d_core.cameras.Camera`.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from see3d_core.cameras import Camera, camera_spread
from see3d_torch import metrics
from see3d_torch.splatting.camera_refinement import (
    CameraRefinement, CameraRefinementConfig, ExposureCompensation, camera_tensors, invert_rigid,
)
from see3d_torch.splatting.camera_strategy import CameraRefinementStrategy
from see3d_torch.splatting.densification import DensificationConfig, DensificationStrategy
from see3d_torch.splatting.gaussians import PARAMETER_NAMES, Gaussians
from see3d_torch.splatting.initialisation import initial_gaussians
from see3d_torch.splatting.rendering import rasterization


INIT_METHODS = ("auto", "points", "sfm-depth", "depth", "random")


@dataclasses.dataclass
class ReconstructionConfig:
    steps: int = 1_000
    # stop early (after a whole step) when exceeded. The schedule counts steps: laying the lr
    # decay and densification over the time did worse on a real capture (issue 19, RESULTS).
    # A refinement is skipped when the time left, at the mean step time so far, is less than
    # refine_every / 2 steps: its new Gaussians would be evaluated before they settle
    time_limit_s: float | None = None
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"  # rasterization backend: "auto", "torch" or "gsplat"
    # torch intra-op threads during a CPU run (restored after); None keeps torch's setting. The
    # CPU renderer runs many small ops: on a busy machine 1 thread is much faster than 2
    # (issue 19: 0.42 s/step with 1 thread vs 5.8 s/step with 2 on the loaded 2-core machine;
    # RESULTS: 0.16 s vs 4.3 s per render)
    num_threads: int | None = 1
    # initialisation
    # "points": one Gaussian per SfM point (needs points); "sfm-depth": one per sampled training
    # pixel at a depth interpolated between the SfM points (`initialisation.sfm_depth_maps`;
    # needs points); "depth": the same from the given depths; "random"; or "auto": sfm-depth
    # when points are given, else depth when depths are given, else random. sfm-depth beat
    # points on a real capture at the same 450 steps: 20.0 vs 19.2 dB held-out, SSIM 0.70 vs
    # 0.53, LPIPS 0.08 vs 0.38 (RESULTS, issue 19)
    init: str = "auto"
    init_points: int = 30_000  # depth, sfm-depth and random init: the number of Gaussians (points: all SfM points)
    # random init: Gaussians between these z-depths (times the scene scale) in the cameras' frustums
    random_init_depths: tuple[float, float] = (0.05, 2.0)
    init_views: tuple[int, ...] | None = None  # (sfm-)depth init: views whose pixels are used (default: all trained)
    init_opacity: float = 0.5
    init_footprint_px: float = 1.0  # depth init: Gaussian radius in pixels at its depth
    init_scale: float = 1.0  # points init: radius = this x the RMS distance to the 3 nearest points (gsplat's init_scale)
    sh_degree: int = 0  # the synthetic world is Lambertian; real views may want 3
    sh_degree_interval: int = 1_000  # raise the active SH degree every this many steps
    # learning rates (gsplat's defaults; means' rate is multiplied by the scene scale)
    means_lr: float = 1.6e-4
    means_lr_final_factor: float = 0.01
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    # loss
    ssim_weight: float = 0.2
    lpips_weight: float = 0.1
    lpips_net: str = "alex"
    depth_weight: float = 0.0  # L1 on the expected depth where a depth is given
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # densification (None: no densification)
    densification: DensificationConfig | None = dataclasses.field(
        default_factory=lambda: DensificationConfig(refine_start=100, refine_stop=700, refine_every=100, reset_every=3_000)
    )
    # camera pose refinement (None: the poses are kept as given; see CameraRefinementConfig)
    camera_refinement: CameraRefinementConfig | None = None
    # per-image exposure compensation
    exposure_compensation: bool = False
    exposure_lr: float = 2e-3
    # evaluation on held-out views (indices into the given views, never trained on)
    eval_views: tuple[int, ...] = ()
    eval_every: int = 250
    eval_lpips: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}, got {self.init!r}")
        near, far = self.random_init_depths
        if not 0 < near < far:
            raise ValueError(f"random_init_depths must be (near, far) with 0 < near < far, got {self.random_init_depths}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ValueError(f"ssim_weight must be in [0, 1], got {self.ssim_weight}")
        if self.lpips_weight < 0 or self.depth_weight < 0:
            raise ValueError("lpips_weight and depth_weight must be >= 0")
        if self.camera_refinement is not None and not isinstance(self.camera_refinement, CameraRefinementConfig):
            raise TypeError(f"camera_refinement must be a CameraRefinementConfig or None, got {self.camera_refinement!r}")
        self.eval_views = tuple(int(i) for i in self.eval_views)

    def scene_only(self, steps: int, init_points: int, init_views: Sequence[int] | None) -> "ReconstructionConfig":
        """These settings for a scene trained alone on fixed poses, as camera refinement's rounds
        train theirs: `steps` steps from `init_points` Gaussians (from `init_views`), without
        camera refinement, exposure compensation, the LPIPS term, evaluation, progress bar or time
        limit."""
        return dataclasses.replace(
            self, steps=steps, init_points=init_points, init_views=None if init_views is None else tuple(init_views),
            camera_refinement=None, exposure_compensation=False, lpips_weight=0.0, eval_views=(), progress=False,
            time_limit_s=None,
        )


@dataclasses.dataclass
class Reconstruction:
    """The result: Gaussians, the (refined) cameras of every given view, and the run's history."""

    gaussians: Gaussians
    cameras: list[Camera]  # refined for trained views under camera_refinement, else as given
    train_views: list[int]
    eval_views: list[int]
    config: ReconstructionConfig
    scene_scale: float
    history: list[dict]  # per step: loss, num_gaussians, seconds
    evaluations: list[dict]  # per evaluation: step, psnr, ssim, lpips on the held-out views
    densification: list[dict]
    exposure: dict | None = None  # per trained view: gains, biases
    # under camera_refinement: the method run ("auto" resolved) and, after an ICP, the depth maps'
    # disagreement (median point-to-plane distance / depth) under the given and the registered
    # poses, and the smooth share of the latter (`depth_registration.DepthDisagreement`)
    camera_refinement: dict | None = None

    def render(self, cameras: Sequence[Camera], **options) -> tuple[np.ndarray, np.ndarray]:
        """RGB [V, H, W, 3] and expected depth [V, H, W] seen from `cameras`."""
        return self.gaussians.render_cameras(cameras, background=self.config.background, backend=self.config.backend, **options)

    def evaluate(self, images: Sequence[np.ndarray], cameras: Sequence[Camera], lpips: bool = True) -> dict:
        """Mean PSNR, SSIM (and LPIPS) of renders against `images` from `cameras`."""
        return _evaluate(self.gaussians, _as_image_tensor(images, "images"), cameras, self.config, lpips)


def _as_image_tensor(images: Sequence[np.ndarray], name: str) -> torch.Tensor:
    arrays = []
    for i, image in enumerate(images):
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] < 3:
            raise ValueError(f"{name}[{i}] must be [H, W, 3], got shape {a.shape}")
        a = a[..., :3]
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise ValueError(f"{name}[{i}] must be in [0, 1] (float) or uint8, got range [{a.min():.3g}, {a.max():.3g}]")
        arrays.append(a)
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"{name} must all have one size, got {sorted({a.shape for a in arrays})}")
    return torch.from_numpy(np.stack(arrays))


def scene_scale(cameras: Sequence[Camera]) -> float:
    """1.1 x the largest distance of a camera centre from their mean (as gsplat), at least 1."""
    return max(1.1 * camera_spread(cameras), 1.0)


def _render(gaussians_or_params, viewmats, Ks, width, height, config, sh_degree, render_mode="RGB"):
    p = gaussians_or_params
    # only the active degrees: no copy of the rest, and at degree 0 shN stays out of the graph, so
    # Adam skips it (45 of 59 numbers per Gaussian at degree 3) until its degree is reached
    sh = p["sh0"] if sh_degree == 0 else torch.cat([p["sh0"], p["shN"][:, : (sh_degree + 1) ** 2 - 1]], dim=1)
    bg = torch.tensor(config.background, dtype=torch.float32, device=viewmats.device)[None].expand(len(viewmats), -1)
    return rasterization(
        p["means"], p["quats"], torch.exp(p["log_scales"]), torch.sigmoid(p["opacity_logits"]), sh,
        viewmats, Ks, width, height, sh_degree=sh_degree, backgrounds=bg, render_mode=render_mode,
        backend=config.backend,
    )


@torch.no_grad()
def _evaluate(gaussians: Gaussians, images: torch.Tensor, cameras: Sequence[Camera], config, lpips: bool) -> dict:
    if len(images) != len(cameras):
        raise ValueError(f"evaluate needs one camera per image, got {len(images)} images and {len(cameras)} cameras")
    device = gaussians.means.device
    c2w, Ks = camera_tensors(cameras, device)
    values = {"psnr": [], "ssim": [], "lpips": []}
    for i in range(len(cameras)):
        out, _, _ = _render(gaussians.tensors(), invert_rigid(c2w[i : i + 1]), Ks[i : i + 1], cameras[i].width,
                            cameras[i].height, config, gaussians.sh_degree)
        pred = out[..., :3].clamp(0, 1).permute(0, 3, 1, 2)
        target = images[i : i + 1].to(device).permute(0, 3, 1, 2)
        values["psnr"].append(float(metrics.psnr(pred, target)[0]))
        values["ssim"].append(float(metrics.ssim(pred, target)[0]))
        if lpips:
            values["lpips"].append(float(metrics.lpips(pred, target, net=config.lpips_net)[0]))
    return {k: float(np.mean(v)) for k, v in values.items() if v}


def register_cameras(
    gaussians: Gaussians,
    images: torch.Tensor,
    cameras: Sequence[Camera],
    iterations: int,
    lr: float,
    config: ReconstructionConfig,
) -> list[Camera]:
    """Pose-only registration: every camera's pose refined (6D rotation and translation deltas,
    Adam, all cameras per iteration) so that the fixed `gaussians` render `images` [V, H, W, 3]
    under an L1 loss. The translation's learning rate is `lr` times the cameras' scene scale."""
    device = gaussians.means.device
    params = {name: t.detach() for name, t in gaussians.tensors().items()}
    c2w, Ks = camera_tensors(cameras, device)
    refinement = CameraRefinement(len(cameras)).to(device)
    optimizer = torch.optim.Adam([
        {"params": list(refinement.rotation_deltas), "lr": lr},
        {"params": list(refinement.translation_deltas), "lr": lr * scene_scale(cameras)},
    ])
    indices = torch.arange(len(cameras), device=device)
    targets = images.to(device)
    for _ in range(iterations):
        out, _, _ = _render(params, invert_rigid(refinement(c2w, indices)), Ks, cameras[0].width, cameras[0].height,
                            config, gaussians.sh_degree)
        loss = (out[..., :3] - targets).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        refined = refinement(c2w, indices).double().cpu().numpy()
    return [Camera(cam.K, T, cam.width, cam.height) for cam, T in zip(cameras, refined)]


def refinement_can_settle(seconds_left: float, seconds_per_step: float, refine_every: int) -> bool:
    """Whether a refinement now leaves its new Gaussians refine_every / 2 steps before a time
    limit, at the given step time (a split just before the end is evaluated unsettled)."""
    return seconds_left >= seconds_per_step * refine_every / 2


def training_step(
    params: dict[str, torch.Tensor],
    c2w: torch.Tensor,
    K: torch.Tensor,
    target: torch.Tensor,
    config: ReconstructionConfig,
    *,
    sh_degree: int,
    scene_scale: float,
    depth_target: torch.Tensor | None = None,
    exposure: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The loss of one training view, as a function: the Gaussians' parameter tensors `params`
    (log-scales, opacity logits; SH up to `sh_degree`) rendered from `c2w` [1, 4, 4] (may carry
    gradients, e.g. refined) and `K` [1, 3, 3], against `target` [1, H, W, 3]:
    `(1 - l) L1 + l (1 - SSIM) [+ w_lpips LPIPS] [+ w_depth |D - depth_target| / scene_scale]`
    with the config's weights; the depth term over the pixels where `depth_target` [1, H, W] is
    finite and positive and the render is opaque (alpha > 0.5). `exposure` maps the rendered
    colours first (the view's exposure compensation).

    Returns the loss terms ("loss", to back-propagate; "l1" and "ssim"; "lpips" and "depth" when
    they count) and the rasterizer's meta (which densification reads after the backward pass)."""
    height, width = target.shape[1:3]
    render_mode = "RGB+ED" if depth_target is not None else "RGB"
    out, alphas, meta = _render(params, invert_rigid(c2w), K, width, height, config, sh_degree, render_mode)
    pred = out[..., :3]
    if exposure is not None:
        pred = exposure(pred)
    terms = {"l1": (pred - target).abs().mean()}
    pred_nchw, target_nchw = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    terms["ssim"] = metrics.ssim(pred_nchw, target_nchw).mean()
    loss = (1.0 - config.ssim_weight) * terms["l1"] + config.ssim_weight * (1.0 - terms["ssim"])
    if config.lpips_weight > 0:
        terms["lpips"] = metrics.lpips(pred_nchw.clamp(0, 1), target_nchw, net=config.lpips_net).mean()
        loss = loss + config.lpips_weight * terms["lpips"]
    if depth_target is not None:
        valid = torch.isfinite(depth_target) & (depth_target > 0) & (alphas[..., 0] > 0.5)
        if valid.any():
            terms["depth"] = (out[..., 3][valid] - depth_target[valid]).abs().mean()
            loss = loss + config.depth_weight * terms["depth"] / scene_scale
    terms["loss"] = loss
    return terms, meta


def reconstruct(
    images: Sequence[np.ndarray],
    cameras: Sequence[Camera],
    depths: Sequence[np.ndarray] | None = None,
    config: ReconstructionConfig | None = None,
    *,
    points: np.ndarray | None = None,
    point_colors: np.ndarray | None = None,
    **options: Any,
) -> Reconstruction:
    """Fit 3D Gaussians to posed views. `points` [N, 3] and `point_colors` [N, 3] in [0, 1]
    (structure-from-motion points, e.g. `capture.load_capture(...).points`) initialise the
    Gaussians when given. `options` override fields of `ReconstructionConfig` (camera pose
    refinement: `camera_refinement=CameraRefinementConfig(...)`)."""
    if config is None:
        config = ReconstructionConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    threads = torch.get_num_threads()
    if config.num_threads is not None and torch.device(config.device).type == "cpu":
        torch.set_num_threads(config.num_threads)
    try:
        return _reconstruct(images, cameras, depths, config, _checked_points(points, point_colors))
    finally:
        torch.set_num_threads(threads)


def _checked_points(points, point_colors) -> tuple[np.ndarray, np.ndarray] | None:
    if points is None and point_colors is None:
        return None
    if points is None:
        raise ValueError("point_colors given without points")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 2:
        raise ValueError(f"points must be [N, 3] with N >= 2, got shape {points.shape}")
    if point_colors is None:
        point_colors = np.full_like(points, 0.5)
    point_colors = np.asarray(point_colors, dtype=np.float32)
    if point_colors.shape != points.shape:
        raise ValueError(f"point_colors must be [N, 3] like points {points.shape}, got {point_colors.shape}")
    if point_colors.min() < 0 or point_colors.max() > 1:
        raise ValueError("point_colors must be in [0, 1]")
    finite = np.isfinite(points).all(1)
    return points[finite], point_colors[finite]


def _checked_views(images, cameras, depths, config: ReconstructionConfig):
    """images as a tensor [V, H, W, 3], cameras and depths as lists, the training and held-out
    views; raises on anything that does not fit together."""
    images = _as_image_tensor(images, "images")
    cameras = list(cameras)
    if len(cameras) != len(images):
        raise ValueError(f"need one camera per image, got {len(images)} images and {len(cameras)} cameras")
    height, width = images.shape[1:3]
    for i, cam in enumerate(cameras):
        if (cam.width, cam.height) != (width, height):
            raise ValueError(f"camera {i} is {cam.width}x{cam.height} but the images are {width}x{height}")
    if depths is not None:
        depths = [np.asarray(d, dtype=np.float32) for d in depths]
        if len(depths) != len(cameras) or any(d.shape != (height, width) for d in depths):
            raise ValueError(f"depths must be {len(cameras)} arrays of shape ({height}, {width})")
    eval_views = sorted(set(config.eval_views))
    if any(not 0 <= i < len(cameras) for i in eval_views):
        raise ValueError(f"eval_views must index the {len(cameras)} views, got {list(config.eval_views)}")
    train_views = [i for i in range(len(cameras)) if i not in eval_views]
    if not train_views:
        raise ValueError("no training views left after holding out eval_views")
    return images, cameras, depths, train_views, eval_views


def _optimizers(gaussians: Gaussians, config: ReconstructionConfig, scale: float):
    """The Gaussians' parameters and one Adam per parameter group (gsplat's rates; the means'
    times the scene scale)."""
    params = {name: nn.Parameter(t.clone()) for name, t in gaussians.tensors().items()}
    learning_rates = {
        "means": config.means_lr * scale, "quats": config.quats_lr, "log_scales": config.scales_lr,
        "opacity_logits": config.opacities_lr, "sh0": config.sh0_lr, "shN": config.shN_lr,
    }
    optimizers = {name: torch.optim.Adam([params[name]], lr=learning_rates[name], eps=1e-15) for name in PARAMETER_NAMES}
    return params, optimizers


def _reconstruct(images, cameras, depths, config: ReconstructionConfig, points=None) -> Reconstruction:
    start_time = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    images_t, cameras, depths, train_views, eval_views = _checked_views(images, cameras, depths, config)
    if config.lpips_weight > 0 or (eval_views and config.eval_lpips):
        metrics.lpips_weights_path(config.lpips_net)  # fail now, naming the package, not mid-run

    camera_strategy = None
    init_views = config.init_views
    if config.camera_refinement is not None:
        camera_strategy = CameraRefinementStrategy(config.camera_refinement, config.seed)

        def fit_scene(images, cameras, depths, **scene) -> Gaussians:  # a round's scene: this core on fixed poses
            return _reconstruct(images.numpy(), cameras, depths, config.scene_only(**scene), points).gaussians

        cameras = camera_strategy.register_before_training(
            images_t, cameras, train_views, depths, fit_scene, functools.partial(register_cameras, config=config))
        if init_views is None:
            init_views = camera_strategy.init_views(train_views)
    scale = scene_scale([cameras[i] for i in train_views])
    init_views = train_views if init_views is None else list(init_views)
    gaussians = initial_gaussians(config, images_t, cameras, train_views, init_views, depths, points, scale).to(device)
    params, optimizers = _optimizers(gaussians, config, scale)
    means_decay = config.means_lr_final_factor ** (1.0 / config.steps)
    densification = DensificationStrategy(config.densification, scale, config.seed) if config.densification else None
    if camera_strategy is not None:
        camera_strategy.start_joint(len(train_views), scale, config.steps, device)
    exposure = exposure_optimizer = None
    if config.exposure_compensation:
        exposure = ExposureCompensation(len(train_views)).to(device)
        exposure_optimizer = torch.optim.Adam(exposure.parameters(), lr=config.exposure_lr)

    c2w_all, Ks_all = camera_tensors(cameras, device)
    targets = images_t.to(device)
    depth_targets = torch.from_numpy(np.stack(depths)).to(device) if depths is not None and config.depth_weight > 0 else None
    generator = np.random.default_rng(config.seed)
    order: list[int] = []
    history, evaluations = [], []
    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.steps, desc="splatting", unit="step")

    def current_gaussians() -> Gaussians:
        return Gaussians(**{name: p.detach() for name, p in params.items()})

    def run_evaluation(step: int) -> None:
        if not eval_views:
            return
        result = _evaluate(current_gaussians(), targets[eval_views], [cameras[i] for i in eval_views], config, config.eval_lpips)
        result["step"] = step
        result["seconds"] = time.perf_counter() - start_time
        evaluations.append(result)

    loop_start = time.perf_counter()
    step = 0
    for step in range(config.steps):
        if not order:
            order = list(generator.permutation(len(train_views)))
        slot = order.pop()
        view = train_views[slot]
        c2w = c2w_all[view : view + 1]
        if camera_strategy is not None:
            c2w = camera_strategy.refine(c2w, [slot])
        terms, meta = training_step(
            params, c2w, Ks_all[view : view + 1], targets[view : view + 1], config,
            sh_degree=min(step // config.sh_degree_interval, config.sh_degree), scene_scale=scale,
            depth_target=None if depth_targets is None else depth_targets[view : view + 1],
            exposure=None if exposure is None else functools.partial(exposure, indices=torch.tensor([slot], device=device)),
        )
        terms["loss"].backward()
        if densification is not None:
            now = time.perf_counter()
            can_refine = config.time_limit_s is None or refinement_can_settle(
                config.time_limit_s - (now - start_time), (now - loop_start) / (step + 1), config.densification.refine_every)
            densification.step_post_backward(params, optimizers, meta, step, can_refine)
        for optimizer in [*optimizers.values(), *([exposure_optimizer] if exposure_optimizer is not None else [])]:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for group in optimizers["means"].param_groups:
            group["lr"] *= means_decay
        if camera_strategy is not None:
            camera_strategy.optimizer_step()
        loss = terms["loss"].item()
        history.append({"step": step, "loss": loss, "l1": terms["l1"].item(), "num_gaussians": params["means"].shape[0],
                        "seconds": time.perf_counter() - start_time})
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", gaussians=params["means"].shape[0])
        if eval_views and config.eval_every > 0 and (step + 1) % config.eval_every == 0:
            run_evaluation(step + 1)
        if config.time_limit_s is not None and time.perf_counter() - start_time > config.time_limit_s:
            break
    if progress is not None:
        progress.close()
    if eval_views and (not evaluations or evaluations[-1]["step"] != step + 1):
        run_evaluation(step + 1)

    exposure_values = None
    if exposure is not None:
        with torch.no_grad():
            exposure_values = {
                view: {"gains": (1.0 + exposure.gains[slot]).tolist(), "biases": exposure.biases[slot].tolist()}
                for slot, view in enumerate(train_views)
            }
    return Reconstruction(
        gaussians=current_gaussians(), train_views=train_views, eval_views=eval_views, config=config,
        cameras=camera_strategy.refined_cameras(cameras, train_views) if camera_strategy is not None else list(cameras),
        scene_scale=scale, history=history, evaluations=evaluations,
        densification=densification.history if densification else [], exposure=exposure_values,
        camera_refinement=camera_strategy.report if camera_strategy is not None else None,
    )
