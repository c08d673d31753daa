"""Densification: clone, split, prune and the opacity reset, with optimiser state kept in step."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from see3d_torch.splatting.camera_refinement import (
    CameraRefinement, ExposureCompensation, perturb_cameras, rotation_6d_to_matrix, rotation_errors_deg,
)
from see3d_torch.splatting.densification import DensificationConfig, DensificationStrategy
from see3d_torch.splatting.gaussians import Gaussians
from see3d_core.cameras import Camera, intrinsics_from_fov, look_at


def _setup(n=6):
    g = Gaussians.from_points(np.zeros((n, 3)) + np.arange(n)[:, None], np.full((n, 3), 0.5), np.full(n, 0.01), opacity=0.5)
    params = {k: nn.Parameter(v.clone()) for k, v in g.tensors().items()}
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    # one optimiser step so that Adam has state to carry along
    sum(p.sum() for p in params.values()).backward()
    for o in optimizers.values():
        o.step()
        o.zero_grad()
    return params, optimizers


def _meta(n, grads, width=100, height=80):
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.tensor(grads, dtype=torch.float32).reshape(1, n, 2)
    return {"means2d": means2d, "radii": torch.ones(1, n, 2, dtype=torch.int32), "width": width, "height": height, "n_cameras": 1}


def test_clone_split_prune_follow_the_rules_and_keep_optimizer_state():
    params, optimizers = _setup()
    with torch.no_grad():
        params["log_scales"][1] = math.log(0.5)  # large: split
        params["log_scales"][2] = math.log(0.5)  # large but low gradient: kept
        params["opacity_logits"][3] = -8.0  # nearly transparent: pruned
    cfg = DensificationConfig(refine_start=0, refine_every=1, reset_every=1000, grow_grad2d=0.001, grow_scale3d=0.1)
    strategy = DensificationStrategy(cfg, scene_scale=1.0)
    high = 0.01 / 50  # in pixels: x W/2 = 50 -> 0.01 in NDC, above the 0.001 threshold
    grads = [[high, 0], [high, 0], [0, 0], [0, 0], [0, 0], [0, 0]]
    report = strategy.step_post_backward(params, optimizers, _meta(6, grads), step=1)
    assert report["cloned"] == 1 and report["split"] == 1 and report["pruned"] == 1
    # 6 + 1 clone + 1 (split replaces 1 by 2) - 1 pruned
    assert params["means"].shape[0] == 7
    split_scales = torch.exp(params["log_scales"]).max(-1).values
    assert int(torch.isclose(split_scales, torch.tensor(0.5 / 1.6)).sum()) == 2
    for name, p in params.items():
        state = optimizers[name].state[p]
        assert state["exp_avg"].shape == p.shape and optimizers[name].param_groups[0]["params"][0] is p
    # new Gaussians start with zero moments
    assert float(optimizers["means"].state[params["means"]]["exp_avg"][-3:].abs().sum()) == 0.0


def test_opacity_reset_happens():
    """gsplat 1.5.3's DefaultStrategy skips the reset (precedence slip); ours must reset."""
    params, optimizers = _setup()
    cfg = DensificationConfig(refine_start=10_000, reset_every=5)
    strategy = DensificationStrategy(cfg, scene_scale=1.0)
    report = strategy.step_post_backward(params, optimizers, _meta(6, [[0, 0]] * 6), step=5)
    assert report.get("reset_opacity")
    opacity = torch.sigmoid(params["opacity_logits"])
    assert torch.allclose(opacity, torch.full_like(opacity, 2 * cfg.prune_opa), atol=1e-6)
    assert float(optimizers["opacity_logits"].state[params["opacity_logits"]]["exp_avg"].abs().sum()) == 0.0


def test_growth_cap():
    params, optimizers = _setup()
    cfg = DensificationConfig(refine_start=0, refine_every=1, grow_grad2d=0.001, max_gaussians=7)
    strategy = DensificationStrategy(cfg, scene_scale=1.0)
    strategy.step_post_backward(params, optimizers, _meta(6, [[0.01, 0]] * 6), step=1)
    assert params["means"].shape[0] == 7


def test_camera_refinement_starts_at_identity_and_6d_is_a_rotation():
    c2w = torch.eye(4)[None].repeat(3, 1, 1)
    c2w[:, :3, 3] = torch.randn(3, 3)
    refine = CameraRefinement(3)
    assert torch.allclose(refine(c2w, torch.arange(3)), c2w)
    R = rotation_6d_to_matrix(torch.randn(10, 6))
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand(10, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(10), atol=1e-5)
    # an optimiser step after rendering camera 1 moves camera 1 only (no momentum leaks to others)
    optimizer = torch.optim.Adam(refine.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        refine(c2w[1:2], [1]).sum().backward()
        optimizer.step()
    camera1 = refine(c2w[1:2], [1]).detach()
    optimizer.zero_grad(set_to_none=True)
    refine(c2w[2:3], [2]).sum().backward()
    optimizer.step()
    moved = refine(c2w, torch.arange(3)).detach()
    assert torch.allclose(moved[0], c2w[0]) and not torch.allclose(camera1[0], c2w[1])
    assert torch.equal(moved[1], camera1[0]) and not torch.allclose(moved[2], c2w[2])
    exposure = ExposureCompensation(2)
    img = torch.rand(1, 4, 4, 3)
    assert torch.equal(exposure(img, torch.tensor([1])), img)


def test_perturbation_and_rotation_error_measure():
    K = intrinsics_from_fov(60, 32, 32)
    cams = [Camera(K, look_at([np.sin(a), 0, -3], [0, 0, 0]), 32, 32) for a in np.linspace(-0.5, 0.5, 6)]
    noisy = perturb_cameras(cams, 2.0, 0.1, seed=0)
    assert np.allclose(rotation_errors_deg(noisy, cams, align=False), 2.0, atol=1e-6)
    assert np.allclose([np.linalg.norm(a.center - b.center) for a, b in zip(noisy, cams)], 0.1)
    # a global rotation of every camera is not an error once aligned
    from see3d_core.cameras import axis_angle_to_rotation

    G = np.eye(4)
    G[:3, :3] = axis_angle_to_rotation([0, 1, 0], 0.3)
    turned = [Camera(c.K, G @ c.c2w, 32, 32) for c in cams]
    assert rotation_errors_deg(turned, cams).max() < 1e-4
    assert rotation_errors_deg(turned, cams, align=False).min() > 17
