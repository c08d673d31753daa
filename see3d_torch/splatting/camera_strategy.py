"""Camera pose refinement as a strategy object beside the densification strategy (gsplat's style).

`CameraRefinementStrategy(CameraRefinementConfig(...))` owns a reconstruction's pose refinement:

- before the training, `register_before_training`: with depths, multi-view point-to-plane ICP
  between the depth maps (`depth_registration.register_depth_maps`), with "auto" resolved by how
  far the maps still disagree under the registered poses (`depth_disagreement`); for the
  photometric methods, block-coordinate rounds that alternate between a scene trained with the
  poses held fixed and every pose registered alone against it (`_alternate_scene_and_poses`);
- during the training (photometric methods only), the joint phase: a `CameraRefinement` module
  (6D rotation and translation deltas per training view) with its own Adam and learning-rate
  decay: `start_joint` once, `refine(c2w, slots)` for the rendered view, `optimizer_step()` after
  each backward pass;
- after it, `refined_cameras` and `report` (the method run, and the depth maps' disagreements).

Training a round's scene and registering poses against it render the Gaussians, which is the
trainer's business (`reconstruct.py`): `register_before_training` is handed both.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from see3d_core.cameras import Camera
from see3d_torch.splatting.camera_refinement import CameraRefinement, CameraRefinementConfig, align_cameras, camera_tensors
from see3d_torch.splatting.depth_registration import depth_disagreement, register_depth_maps
from see3d_torch.splatting.gaussians import Gaussians

# fit_scene(images [V, H, W, 3], cameras, depths or None, *, steps, init_points, init_views) -> Gaussians
SceneFitter = Callable[..., Gaussians]
# register(gaussians, images [V, H, W, 3], cameras, iterations, lr) -> cameras
PoseRegistrar = Callable[[Gaussians, torch.Tensor, Sequence[Camera], int, float], list[Camera]]


def _evenly_spaced_from_first(total: int, count: int) -> tuple[int, ...]:
    """`count` (at most `total`) evenly spaced indices into `total` items, from the first, the
    last not forced in (unlike `capture.evenly_spaced`, which picks frames end to end)."""
    return tuple(int(i) for i in np.linspace(0, total, min(count, total), endpoint=False))


class CameraRefinementStrategy:
    """A reconstruction's camera refinement (see the module docstring for the calls, in order)."""

    def __init__(self, config: CameraRefinementConfig, seed: int = 0):
        self.config = config
        self.seed = seed
        self.method: str | None = None  # config.method with "auto" resolved, once registered
        self.report: dict | None = None
        self.refinement: CameraRefinement | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_decay = 1.0

    @property
    def photometric(self) -> bool:
        """Whether the poses are refined photometrically (the rounds and the joint phase)."""
        return self.method in ("photometric", "depth+photometric")

    def register_before_training(
        self,
        images: torch.Tensor,
        cameras: Sequence[Camera],
        train_views: Sequence[int],
        depths: Sequence[np.ndarray] | None,
        fit_scene: SceneFitter,
        register: PoseRegistrar,
    ) -> list[Camera]:
        """`cameras` with the training views' poses registered before the scene is trained: by
        the ICP between the `depths` (for "depth", "depth+photometric" and "auto" with depths), then
        by the photometric rounds (for "photometric" and "depth+photometric", and "auto" when the
        depth maps still disagree smoothly). images: [V, H, W, 3] of all views. Sets `method` and
        `report`."""
        cfg = self.config
        cameras = list(cameras)
        method = "photometric" if cfg.method == "auto" and depths is None else cfg.method
        report = {}
        if method in ("auto", "depth", "depth+photometric"):
            if depths is None:
                raise ValueError(f"camera refinement method={method!r} needs depths")
            given = [cameras[i] for i in train_views]
            train_depths = [depths[i] for i in train_views]
            registered = register_depth_maps(given, train_depths, iterations=cfg.depth_registration_iters, seed=self.seed)
            after = depth_disagreement(registered, train_depths, seed=self.seed)
            report = {
                "depth_disagreement_given": depth_disagreement(given, train_depths, seed=self.seed).median,
                "depth_disagreement_registered": after.median,
                "depth_disagreement_smooth_fraction": after.smooth_fraction,
            }
            if method == "auto":  # NaN (no overlap) fails both tests and goes on photometrically
                keep = after.median <= cfg.depth_agreement or after.smooth_fraction < cfg.depth_smooth_fraction
                method = "depth" if keep else "depth+photometric"
            for view, cam in zip(train_views, registered):
                cameras[view] = cam
        self.method = method
        self.report = {"method": method, **report}
        if self.photometric and cfg.round_downscales:
            registered = self._alternate_scene_and_poses(
                images[list(train_views)], [cameras[i] for i in train_views],
                [depths[i] for i in train_views] if depths is not None else None, fit_scene, register,
            )
            for view, cam in zip(train_views, registered):
                cameras[view] = cam
        return cameras

    def _alternate_scene_and_poses(self, images: torch.Tensor, cameras: list[Camera], depths, fit_scene: SceneFitter,
                                   register: PoseRegistrar) -> list[Camera]:
        """Block-coordinate pose refinement, one round per `config.round_downscales` entry: train
        a scene on the (shrunk) views with the current poses held fixed, register every pose alone
        against it, and align the poses back onto the given ones (the gauge). A scene trained
        jointly with wrong poses blurs and absorbs the errors; here the scene is rebuilt from the
        corrected poses every round, so it sharpens as the poses improve. Returns full-size cameras."""
        cfg = self.config
        height, width = images.shape[1:3]
        given = list(cameras)
        lr = cfg.registration_lr
        init_views = _evenly_spaced_from_first(len(cameras), cfg.round_init_views) if depths is not None else None
        for downscale in cfg.round_downscales:
            w, h = max(width // downscale, 8), max(height // downscale, 8)
            small_images = F.interpolate(images.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1)
            small_depths = None
            if depths is not None:
                small_depths = F.interpolate(torch.from_numpy(np.stack(depths))[:, None], size=(h, w), mode="nearest")[:, 0].numpy()
            small_cameras = [c.resized(w, h) for c in cameras]
            scene = fit_scene(small_images, small_cameras, small_depths, steps=cfg.round_steps,
                              init_points=cfg.round_points, init_views=init_views)
            registered = register(scene, small_images, small_cameras, cfg.registration_iters, lr)
            cameras = align_cameras([Camera(c.K, r.c2w, c.width, c.height) for c, r in zip(cameras, registered)], given)
            lr *= cfg.registration_lr_decay
        return cameras

    def init_views(self, train_views: Sequence[int]) -> list[int] | None:
        """The views whose pixels a (sfm-)depth initialisation of the main scene uses: under
        photometric refinement a few evenly spaced ones (each view's own points would pin its
        pose), else None (all training views)."""
        if not self.photometric:
            return None
        return [train_views[i] for i in _evenly_spaced_from_first(len(train_views), self.config.round_init_views)]

    def start_joint(self, num_views: int, scene_scale: float, steps: int, device) -> None:
        """Before the main training: the joint phase's pose corrections of the `num_views`
        training views (photometric methods only), with their Adam (the translation's rate times
        `scene_scale`) and its decay to `lr_final_factor` over `steps`."""
        if not self.photometric:
            return
        cfg = self.config
        self.refinement = CameraRefinement(num_views).to(device)
        self.optimizer = torch.optim.Adam([
            {"params": list(self.refinement.rotation_deltas), "lr": cfg.rotation_lr},
            {"params": list(self.refinement.translation_deltas), "lr": cfg.translation_lr * scene_scale},
        ])
        self.lr_decay = cfg.lr_final_factor ** (1.0 / steps)

    def refine(self, c2w: torch.Tensor, slots: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """c2w [B, 4, 4] of the training views `slots` (positions among the training views) with
        their learned corrections, differentiable; as given without a joint phase."""
        return c2w if self.refinement is None else self.refinement(c2w, slots)

    def optimizer_step(self) -> None:
        """After each backward pass: the pose corrections' Adam step and learning-rate decay."""
        if self.optimizer is None:
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:
            group["lr"] *= self.lr_decay

    @torch.no_grad()
    def refined_cameras(self, cameras: Sequence[Camera], train_views: Sequence[int]) -> list[Camera]:
        """`cameras` with the joint phase's corrections applied to the training views (as given
        without a joint phase)."""
        refined = list(cameras)
        if self.refinement is None:
            return refined
        device = self.refinement.identity_6d.device
        c2w, _ = camera_tensors([cameras[view] for view in train_views], device)
        c2w = self.refinement(c2w, torch.arange(len(train_views), device=device))
        for slot, view in enumerate(train_views):
            cam = cameras[view]
            refined[view] = Camera(cam.K, c2w[slot].double().cpu().numpy(), cam.width, cam.height)
        return refined
