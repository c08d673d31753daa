"""Adaptive density control (3DGS, Kerbl et al. 2023), with the opacity reset done right.

The rules are the published ones, with gsplat's `DefaultStrategy` defaults:
- every step, accumulate each drawn Gaussian's screen-space positional gradient norm
  (in normalised device units: the pixel gradient times W/2, H/2 and the number of cameras);
- every `refine_every` steps in [refine_start, refine_stop): Gaussians whose mean gradient
  exceeds `grow_grad2d` are cloned if small (max scale <= grow_scale3d * scene_scale) and
  split in two if large (new centres sampled from the Gaussian, scales divided by 1.6);
  then Gaussians with opacity < prune_opa are pruned, and after the first reset also those
  larger than prune_scale3d * scene_scale;
- every `reset_every` steps, opacities are clamped to 2 * prune_opa, so that floaters must
  earn their opacity back or be pruned. (gsplat 1.5.3's DefaultStrategy never does this,
  because of an operator-precedence slip; here it happens.)

One strategy serves both backends and both layouts (dense, and `packed`, where the rows are the
drawn pairs named by `gaussian_ids`): it only reads `means2d.grad` and `radii` from the
rasterizer's meta. Optimiser state (Adam moments) follows every edit: copied for clones and
splits, dropped for pruned Gaussians, zeroed for reset opacities.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from see3d_torch.splatting.rendering import quaternion_to_rotation


@dataclasses.dataclass
class DensificationConfig:
    refine_start: int = 500
    refine_stop: int = 15_000
    refine_every: int = 100
    reset_every: int = 3_000
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1
    split_scale_divisor: float = 1.6
    max_gaussians: int | None = None  # growth stops at this count (bounds CPU time)

    def __post_init__(self):
        if self.refine_every < 1 or self.reset_every < 1:
            raise ValueError("refine_every and reset_every must be >= 1")
        if not 0.0 < self.prune_opa < 0.5:
            raise ValueError(f"prune_opa must be in (0, 0.5), got {self.prune_opa}")


def edit_parameters(
    params: dict[str, nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    edit_param,
    edit_state,
) -> None:
    """Replace every parameter by `edit_param(name, tensor)` and every optimiser state tensor
    by `edit_state(name, tensor)` (Adam's step counter is kept)."""
    for name in list(params):
        old = params[name]
        new = nn.Parameter(edit_param(name, old.detach()), requires_grad=old.requires_grad)
        optimizer = optimizers[name]
        state = optimizer.state.pop(old, {})
        for key, value in list(state.items()):
            if key != "step" and isinstance(value, torch.Tensor) and value.shape[:1] == old.shape[:1]:
                state[key] = edit_state(name, value)
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        optimizer.state[new] = state
        params[name] = new


class DensificationStrategy:
    """Call `step_post_backward(params, optimizers, meta, step)` after each backward pass."""

    def __init__(self, config: DensificationConfig, scene_scale: float, seed: int = 0):
        if scene_scale <= 0:
            raise ValueError(f"scene_scale must be positive, got {scene_scale}")
        self.config = config
        self.scene_scale = float(scene_scale)
        self.grad2d: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict] = []

    def _accumulate(self, meta: dict, num: int, device) -> None:
        means2d = meta["means2d"]
        if means2d.grad is None:
            raise RuntimeError("densification needs means2d.grad: call it after loss.backward() on a render of this step")
        grads = means2d.grad.detach().clone()  # [C, N, 2], or [nnz, 2] packed
        grads[..., 0] *= meta["width"] / 2.0 * meta["n_cameras"]
        grads[..., 1] *= meta["height"] / 2.0 * meta["n_cameras"]
        drawn = (meta["radii"] > 0).all(dim=-1)  # [C, N], or [nnz]
        if self.grad2d is None or self.grad2d.numel() != num:
            self.grad2d = torch.zeros(num, device=device)
            self.count = torch.zeros(num, device=device)
        norms = grads.norm(dim=-1) * drawn
        if "gaussian_ids" in meta:  # packed: one row per drawn (camera, Gaussian) pair
            self.grad2d.index_add_(0, meta["gaussian_ids"], norms.to(self.grad2d.dtype))
            self.count.index_add_(0, meta["gaussian_ids"], drawn.to(self.count.dtype))
        else:
            self.grad2d += norms.sum(dim=0)
            self.count += drawn.sum(dim=0).to(self.count.dtype)

    def step_post_backward(
        self, params: dict[str, nn.Parameter], optimizers: dict, meta: dict, step: int, can_refine: bool = True
    ) -> dict:
        """Update statistics; refine (unless `can_refine` is false) and reset on schedule.
        Returns what it did this step."""
        cfg = self.config
        report = {}
        if step >= cfg.refine_stop:
            return report
        num = params["means"].shape[0]
        self._accumulate(meta, num, params["means"].device)
        if can_refine and step > cfg.refine_start and step % cfg.refine_every == 0:
            report.update(self._refine(params, optimizers, step))
        if step > 0 and step % cfg.reset_every == 0:
            self.reset_opacities(params, optimizers)
            report["reset_opacity"] = True
        if report:
            report["step"] = step
            report["num_gaussians"] = params["means"].shape[0]
            self.history.append(report)
        return report

    @torch.no_grad()
    def _refine(self, params, optimizers, step: int) -> dict:
        cfg = self.config
        average = self.grad2d / self.count.clamp_min(1)
        high = average > cfg.grow_grad2d
        small = torch.exp(params["log_scales"]).max(dim=-1).values <= cfg.grow_scale3d * self.scene_scale
        clone, split = high & small, high & ~small
        if cfg.max_gaussians is not None:
            room = max(0, cfg.max_gaussians - params["means"].shape[0])
            clone, split = self._limit(clone, split, average, room)
        num_clone, num_split = int(clone.sum()), int(split.sum())
        if num_clone:
            self._clone(params, optimizers, clone)
            split = torch.cat([split, torch.zeros(num_clone, dtype=torch.bool, device=split.device)])
        if num_split:
            self._split(params, optimizers, split)
        opacity = torch.sigmoid(params["opacity_logits"])
        prune = opacity < cfg.prune_opa
        if step > cfg.reset_every:
            prune |= torch.exp(params["log_scales"]).max(dim=-1).values > cfg.prune_scale3d * self.scene_scale
        num_prune = int(prune.sum())
        if num_prune:
            self._remove(params, optimizers, prune)
        self.grad2d = None
        self.count = None
        return {"cloned": num_clone, "split": num_split, "pruned": num_prune}

    @staticmethod
    def _limit(clone, split, average, room):
        """Keep only the `room` highest-gradient candidates (a split adds one Gaussian net)."""
        candidates = clone | split
        if int(candidates.sum()) <= room:
            return clone, split
        keep = torch.zeros_like(candidates)
        if room > 0:
            scores = torch.where(candidates, average, torch.full_like(average, -1.0))
            keep[torch.topk(scores, room).indices] = True
        return clone & keep, split & keep

    @staticmethod
    def _clone(params, optimizers, mask):
        edit_parameters(
            params, optimizers,
            lambda name, p: torch.cat([p, p[mask]]),
            lambda name, s: torch.cat([s, torch.zeros_like(s[mask])]),
        )

    def _split(self, params, optimizers, mask):
        scales = torch.exp(params["log_scales"][mask])
        rotations = quaternion_to_rotation(params["quats"][mask])
        noise = torch.randn(2, scales.shape[0], 3, generator=self.generator).to(scales)
        offsets = torch.einsum("nij,bnj->bni", rotations, scales[None] * noise)  # [2, S, 3]
        shrink = math.log(self.config.split_scale_divisor)
        keep = ~mask

        def edit_param(name, p):
            if name == "means":
                new = (p[mask][None] + offsets).reshape(-1, 3)
            elif name == "log_scales":
                new = (p[mask] - shrink).repeat(2, 1)
            else:
                new = p[mask].repeat(2, *[1] * (p.ndim - 1))
            return torch.cat([p[keep], new])

        edit_parameters(
            params, optimizers, edit_param,
            lambda name, s: torch.cat([s[keep], torch.zeros_like(s[mask]).repeat(2, *[1] * (s.ndim - 1))]),
        )

    @staticmethod
    def _remove(params, optimizers, mask):
        keep = ~mask
        edit_parameters(params, optimizers, lambda name, p: p[keep], lambda name, s: s[keep])

    def reset_opacities(self, params, optimizers) -> None:
        """Clamp opacities to 2 * prune_opa (as a logit) and zero their Adam moments."""
        ceiling = 2.0 * self.config.prune_opa
        limit = math.log(ceiling / (1.0 - ceiling))

        def edit_param(name, p):
            return p.clamp(max=limit) if name == "opacity_logits" else p

        def edit_state(name, s):
            return torch.zeros_like(s) if name == "opacity_logits" else s

        edit_parameters(params, optimizers, edit_param, edit_state)
