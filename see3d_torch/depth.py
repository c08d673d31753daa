"""Metric depth for an anchor view: sparse keypoint depths and monocular depth alignment.

The warp-and-align loop (SPEC section 4) needs metric depth for the latest anchor view:

1. `keypoint_depths` (Eq. 15): matched keypoints between the anchor and another view with a
   known camera give sparse metric depths (the depth along the anchor's ray whose
   reprojection lands on the match), with outlier rejection.
2. `fit_scale_shift`: one global scale and shift mapping the monocular prediction onto them.
3. `lwlr_align` (Eq. 16-17, after FrozenRecon): locally weighted linear regression, a
   (scale, shift) per location from the keypoints around it, so that the low-frequency
   errors of a monocular estimator (a scale that drifts across the image) are corrected too.

Monocular estimators predict either depth or disparity (inverse depth, e.g. Depth Anything's
relative models); `space="disparity"` fits the affine map in inverse-depth space and still
returns metric depth. Pixel coordinates are (x, y) in the kit's convention (the centre of the
top-left pixel is (0, 0)). Everything is plain torch: it runs on CPU and GPU tensors alike.

Plot helpers for the notebooks (`show_depth`, `show_relative_error`) import
matplotlib lazily.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from see3d_core.images import depth_to_rgb

DEPTH_SPACES = ("depth", "disparity")
MIN_POSITIVE = 1e-6  # floor for disparities and depths before inverting them


def _check_space(space: str) -> None:
    if space not in DEPTH_SPACES:
        raise ValueError(f"space must be one of {DEPTH_SPACES}, got {space!r}")


def sample_at(maps: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear values of `maps` [H, W] (or [B, H, W]) at pixel coordinates `uv` [K, 2]
    (or [B, K, 2]), (x, y); points outside the image take the nearest border value."""
    single = maps.dim() == 2
    if single:
        maps, uv = maps[None], uv[None]
    if maps.dim() != 3 or uv.dim() != 3 or uv.shape[-1] != 2 or uv.shape[0] != maps.shape[0]:
        raise ValueError(f"sample_at expects maps [B, H, W] and uv [B, K, 2], got {tuple(maps.shape)} and {tuple(uv.shape)}")
    h, w = maps.shape[-2:]
    # align_corners=True maps -1/+1 onto the centres of the border pixels: our pixel convention
    scale = uv.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = (uv.to(maps.dtype) * scale.to(maps.dtype) - 1.0)[:, None]  # [B, 1, K, 2]
    values = F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    values = values[:, 0, 0]
    return values[0] if single else values


def _to_fit_space(depth: torch.Tensor, space: str) -> torch.Tensor:
    return depth if space == "depth" else 1.0 / depth.clamp_min(MIN_POSITIVE)


def _from_fit_space(values: torch.Tensor, space: str) -> torch.Tensor:
    return values if space == "depth" else 1.0 / values.clamp_min(MIN_POSITIVE)


def _weighted_affine_fit(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch row: (scale, shift) minimising sum w (scale x + shift - y)^2; x, y, w [B, K]."""
    s0 = w.sum(-1)
    s1 = (w * x).sum(-1)
    s2 = (w * x * x).sum(-1)
    t0 = (w * y).sum(-1)
    t1 = (w * x * y).sum(-1)
    det = s0 * s2 - s1 * s1
    # a degenerate row (all x equal, or no weight) falls back to a pure scale
    ok = det.abs() > 1e-12 * (s0 * s2).abs().clamp_min(1e-30)
    scale = torch.where(ok, (s0 * t1 - s1 * t0) / torch.where(ok, det, torch.ones_like(det)), t1 / s2.clamp_min(1e-30))
    shift = torch.where(ok, (t0 - scale * s1) / s0.clamp_min(1e-30), torch.zeros_like(scale))
    return scale, shift


def _robust_affine_fit(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, robust: bool, iterations: int, candidates: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares on relative residuals (so near and far points count alike). With
    `robust`: the best of `candidates` two-point fits with a positive scale by least median
    of relative residuals (up to half the points may be outliers, e.g. a repeated texture
    matched to the wrong copy), then iteratively reweighted least squares with Cauchy weights
    scaled by the residuals' MAD. Deterministic."""
    base = w / y.abs().clamp_min(MIN_POSITIVE) ** 2
    if not robust:
        return _weighted_affine_fit(x, y, base)
    used = w > 0
    nan = torch.full_like(y, float("nan"))

    def median_relative_residual(scale, shift):  # scale, shift [B, P] -> [B, P]
        rel = ((scale[..., None] * x[:, None] + shift[..., None] - y[:, None]) / y[:, None].abs().clamp_min(MIN_POSITIVE)).abs()
        return torch.where(used[:, None], rel, nan[:, None]).nanmedian(dim=-1).values

    # two-point candidates among the used points of each row (a fixed generator: reproducible)
    gen = torch.Generator().manual_seed(0)
    order = torch.argsort(torch.rand(x.shape, generator=gen).to(x.device) + (~used).to(x.dtype), dim=-1)  # used first
    count = used.sum(-1, keepdim=True).clamp_min(1)
    pick = (torch.rand(x.shape[0], candidates, 2, generator=gen).to(x.device) * count[..., None]).long()
    i = torch.gather(order, 1, pick[..., 0])
    j = torch.gather(order, 1, pick[..., 1])
    xi, xj, yi, yj = x.gather(1, i), x.gather(1, j), y.gather(1, i), y.gather(1, j)
    dx = xj - xi
    scale = torch.where(dx.abs() > 1e-12, (yj - yi) / torch.where(dx.abs() > 1e-12, dx, torch.ones_like(dx)), torch.zeros_like(dx))
    shift = yi - scale * xi
    global_fit = _weighted_affine_fit(x, y, base)
    scale = torch.cat([scale, global_fit[0][:, None]], 1)
    shift = torch.cat([shift, global_fit[1][:, None]], 1)
    score = median_relative_residual(scale, shift)
    score = torch.where((scale > 0) & torch.isfinite(score), score, torch.full_like(score, float("inf")))
    best = score.argmin(dim=-1, keepdim=True)
    scale, shift = scale.gather(1, best)[:, 0], shift.gather(1, best)[:, 0]
    for _ in range(iterations):
        rel = (scale[:, None] * x + shift[:, None] - y) / y.abs().clamp_min(MIN_POSITIVE)
        sigma = 1.4826 * torch.where(used, rel.abs(), nan).nanmedian(dim=-1).values.nan_to_num(0.0) + 1e-4
        cauchy = 1.0 / (1.0 + (rel / (2.385 * sigma[:, None])) ** 2)
        scale, shift = _weighted_affine_fit(x, y, base * cauchy)
    return scale, shift


def fit_scale_shift(
    mono_depth: torch.Tensor,
    uv: torch.Tensor,
    target_depth: torch.Tensor,
    weights: torch.Tensor | None = None,
    robust: bool = False,
    space: str = "depth",
    iterations: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (scale, shift) such that `scale * mono + shift` matches the keypoint depths.

    `mono_depth` [H, W] is sampled bilinearly at `uv` [K, 2] (x, y); `target_depth` [K] is
    metric. Residuals are relative (divided by the target) so near and far points weigh alike.
    `robust=True` survives up to half the points being outliers (least-median start, then IRLS). With `space="disparity"`
    the fit is `scale * mono + shift = 1 / target_depth` (mono is a disparity); turn either
    into metric depth with `apply_scale_shift`. Returns two 0-d tensors.
    """
    _check_space(space)
    if mono_depth.dim() != 2:
        raise ValueError(f"fit_scale_shift: mono_depth must be [H, W], got {tuple(mono_depth.shape)}")
    if uv.dim() != 2 or uv.shape[-1] != 2 or target_depth.shape != uv.shape[:1]:
        raise ValueError(f"fit_scale_shift: uv must be [K, 2] and target_depth [K], got {tuple(uv.shape)} and {tuple(target_depth.shape)}")
    if uv.shape[0] < 2:
        raise ValueError(f"fit_scale_shift needs at least 2 keypoints, got {uv.shape[0]}")
    x = sample_at(mono_depth.float(), uv.float())
    y = _to_fit_space(target_depth.to(x), space)
    w = torch.ones_like(x) if weights is None else weights.to(x)
    scale, shift = _robust_affine_fit(x[None], y[None], w[None], robust, iterations)
    return scale[0], shift[0]


def apply_scale_shift(mono_depth: torch.Tensor, scale, shift, space: str = "depth") -> torch.Tensor:
    """Metric depth from a monocular prediction and a (scale, shift) of `fit_scale_shift`."""
    _check_space(space)
    return _from_fit_space(scale * mono_depth + shift, space)


# candidate bandwidths in keypoint spacings, each sqrt(2) times the previous, so that each
# candidate's Gaussian weights are the square root of the previous one's (no new exp)
BANDWIDTH_FACTORS = tuple(0.5 * math.sqrt(2.0) ** i for i in range(6))  # 0.5 ... 2.83


def keypoint_spacing(height: int, width: int, count: torch.Tensor) -> torch.Tensor:
    """The mean distance between keypoints spread evenly over the image, sqrt(H W / count)."""
    return torch.sqrt(height * width / count.to(torch.float64).clamp_min(1.0))


def _bisquare_weights(residual: torch.Tensor, keep: torch.Tensor, cut: float = 6.0) -> torch.Tensor:
    """Cleveland's LOWESS robustness weights (1 - (r / (cut * median |r|))^2)^2, 0 beyond."""
    spread = torch.where(keep, residual.abs(), torch.full_like(residual, float("nan"))).nanmedian(dim=-1).values
    spread = spread.nan_to_num(1.0).clamp_min(1e-6)
    u = (residual / (cut * spread[:, None])).clamp(-1.0, 1.0)
    return (1.0 - u * u) ** 2


class _LocalAffine:
    """Weighted least squares for a (scale, shift) per query point: y ~ scale g + shift with
    Gaussian weights in the image plane, a ridge pulling the shift to 0 and the scale to 1."""

    def __init__(self, g: torch.Tensor, y: torch.Tensor, ridge: float, scale_ridge: float):
        self.moments = torch.stack([torch.ones_like(g), g, g * g, y, g * y], dim=-1)  # [B, K, 5]
        self.ridge, self.scale_ridge = ridge, scale_ridge

    def solve(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`weights` [B, Q, K] -> (scale, shift) [B, Q]."""
        s0, s1, s2, t0, t1 = torch.bmm(weights, self.moments).unbind(-1)
        a00, a11, r1 = s0 + self.ridge, s2 + self.scale_ridge, t1 + self.scale_ridge
        det = a00 * a11 - s1 * s1
        return (a00 * r1 - s1 * t0) / det, (a11 * t0 - s1 * r1) / det


def _gaussian(dist2: torch.Tensor, bandwidth) -> torch.Tensor:
    return torch.exp(-dist2 / (2.0 * bandwidth**2))


def _leave_one_out_residuals(uv, affine, robustness, bandwidth, candidates: int = 1, chunk: int = 1024) -> torch.Tensor:
    """Relative residual [C, B, K] of every keypoint against the local fit of all the others,
    for `candidates` bandwidths: `bandwidth` [B], then each sqrt(2) times the previous."""
    g, y = affine.moments[..., 1], affine.moments[..., 3]
    k = uv.shape[1]
    out = [[] for _ in range(candidates)]
    for start in range(0, k, chunk):
        stop = min(start + chunk, k)
        weights = _gaussian(torch.cdist(uv[:, start:stop], uv) ** 2, bandwidth[:, None, None])
        index = torch.arange(start, stop, device=uv.device)
        weights[:, index - start, index] = 0.0  # leave the keypoint itself out
        for c in range(candidates):
            if c:
                weights = weights.sqrt()  # exp(-d^2 / (2 k^2))^(1/2) is the weight at sqrt(2) k
            scale, shift = affine.solve(weights * robustness[:, None, :])
            out[c].append((scale * g[:, start:stop] + shift - y[:, start:stop]) / y[:, start:stop].abs().clamp_min(MIN_POSITIVE))
    return torch.stack([torch.cat(parts, dim=1) for parts in out])


def lwlr_align_batched(
    mono_depth: torch.Tensor,
    uv: torch.Tensor,
    sparse_depth: torch.Tensor,
    valid: torch.Tensor | None = None,
    bandwidth: float | None = None,
    ridge: float = 1.0,
    grid_stride: int | None = None,
    outlier_threshold: float | None = 0.15,
    scale_ridge: float = 1e-3,
    space: str = "depth",
    robust_iterations: int = 2,
) -> torch.Tensor:
    """Dense metric depth [B, H, W] from monocular depth [B, H, W] and keypoints uv [B, K, 2]
    with metric depths [B, K]; `valid` [B, K] marks real keypoints (rows may be padded).

    Steps (FrozenRecon's locally weighted linear regression, made robust the LOWESS way):
    1. a robust global affine fit; its residuals give the first robustness weights
       (Cleveland's bisquare, zero beyond 6 median residuals: gross outliers go, points that
       a smoothly wrong monocular depth puts 20-30% off stay);
    2. the bandwidth, when not given: the candidate among `BANDWIDTH_FACTORS` x the keypoint
       spacing sqrt(H W / K) with the smallest median leave-one-out residual of the keypoints
       (dense keypoints afford a small bandwidth, which follows a distortion more closely);
    3. `robust_iterations` times: every keypoint's relative residual against the local fit of
       the others gives new bisquare weights; points off by >= `outlier_threshold` are dropped
       (FrozenRecon's rule, but against the local fit, so the distortion itself does not count);
    4. on a grid every `grid_stride` pixels (default: the bandwidth, at most 32), a
       weighted least squares for (scale, shift) applied to the globally aligned depth, with
       Gaussian weights exp(-dist^2 / (2 bandwidth^2)) times the robustness weights, a ridge
       `ridge` pulling the shift to 0 and a small `scale_ridge` pulling the scale to 1 (so where
       no keypoint is near, the global fit stands); depths are divided by the keypoints' median
       first, so both ridges are unitless;
    5. the scale and shift grids are upsampled bilinearly and applied to every pixel.
    """
    _check_space(space)
    if mono_depth.dim() != 3:
        raise ValueError(f"lwlr_align_batched: mono_depth must be [B, H, W], got {tuple(mono_depth.shape)}")
    b, h, w = mono_depth.shape
    if uv.dim() != 3 or uv.shape[0] != b or uv.shape[-1] != 2 or sparse_depth.shape != uv.shape[:2]:
        raise ValueError(
            f"lwlr_align_batched: uv must be [B, K, 2] and sparse_depth [B, K] with B={b}, "
            f"got {tuple(uv.shape)} and {tuple(sparse_depth.shape)}"
        )
    if (bandwidth is not None and bandwidth <= 0) or (grid_stride is not None and grid_stride < 1) or ridge < 0 or scale_ridge <= 0 or robust_iterations < 0:
        raise ValueError(
            f"lwlr_align: need bandwidth > 0 (or None), grid_stride >= 1 (or None), ridge >= 0, scale_ridge > 0, "
            f"robust_iterations >= 0; got {bandwidth}, {grid_stride}, {ridge}, {scale_ridge}, {robust_iterations}"
        )
    mono = mono_depth.float()
    uv = uv.to(mono)
    target = sparse_depth.to(mono)
    keep = torch.isfinite(target) & (target > 0) & torch.isfinite(uv).all(-1)
    if valid is not None:
        keep &= valid.to(device=mono.device, dtype=torch.bool)
    if int(keep.sum(-1).min()) < 2:
        raise ValueError("lwlr_align needs at least 2 valid keypoints (positive, finite depth) per image")
    uv = torch.where(keep[..., None], uv, torch.zeros_like(uv))
    y = _to_fit_space(torch.where(keep, target, torch.ones_like(target)), space)
    x = sample_at(mono, uv)

    # 1. global fit; LOWESS robustness weights from its residuals
    scale, shift = _robust_affine_fit(x, y, keep.to(mono), robust=True, iterations=10)
    g = scale[:, None] * x + shift[:, None]
    rel = (g - y) / y.abs().clamp_min(MIN_POSITIVE)
    robustness = keep.to(mono) * _bisquare_weights(rel, keep)

    # unitless: divide by the median keypoint value so that the ridges mean the same at any scale
    norm = torch.where(keep, y, torch.full_like(y, float("nan"))).nanmedian(dim=-1).values
    norm = torch.where(torch.isfinite(norm) & (norm.abs() > 0), norm.abs(), torch.ones_like(norm))
    affine = _LocalAffine(g / norm[:, None], y / norm[:, None], ridge, scale_ridge)

    # 2. bandwidth by leave-one-out validation among multiples of the keypoint spacing
    if bandwidth is None:
        spacing = keypoint_spacing(h, w, keep.sum(-1)).to(mono)
        loo = _leave_one_out_residuals(uv, affine, robustness, BANDWIDTH_FACTORS[0] * spacing, candidates=len(BANDWIDTH_FACTORS))
        scores = torch.where(robustness > 0, loo.abs(), torch.full_like(loo, float("nan"))).nanmedian(dim=-1).values  # [C, B]
        best = scores.nan_to_num(float("inf")).argmin(0)
        bandwidths = torch.tensor(BANDWIDTH_FACTORS, dtype=mono.dtype, device=mono.device)[best] * spacing
    else:
        bandwidths = torch.full((b,), float(bandwidth), dtype=mono.dtype, device=mono.device)

    # 3. robustness iterations against the local fit
    for _ in range(robust_iterations):
        loo = _leave_one_out_residuals(uv, affine, robustness, bandwidths)[0]
        robustness = keep.to(mono) * _bisquare_weights(loo, keep & (robustness > 0))
        if outlier_threshold is not None:
            robustness = robustness * (loo.abs() < outlier_threshold)

    # 4. local weighted least squares on a coarse grid that includes both border pixels
    stride = grid_stride if grid_stride is not None else int(min(32.0, max(1.0, float(bandwidths.min()))))
    nx = math.ceil((w - 1) / stride) + 1 if w > 1 else 1
    ny = math.ceil((h - 1) / stride) + 1 if h > 1 else 1
    gx = torch.linspace(0, w - 1, nx, device=mono.device, dtype=mono.dtype)
    gy = torch.linspace(0, h - 1, ny, device=mono.device, dtype=mono.dtype)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).reshape(-1, 2)  # [G, 2]
    weights = _gaussian(torch.cdist(grid[None].expand(b, -1, -1), uv) ** 2, bandwidths[:, None, None]) * robustness[:, None, :]
    local_scale, local_shift = affine.solve(weights)

    # 5. upsample the (scale, shift) grids; align_corners puts grid nodes on pixel centres
    maps = torch.stack([local_scale, local_shift], dim=1).reshape(b, 2, ny, nx)
    maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=True)
    globally_aligned = (scale[:, None, None] * mono + shift[:, None, None]) / norm[:, None, None]
    aligned = (maps[:, 0] * globally_aligned + maps[:, 1]) * norm[:, None, None]
    return _from_fit_space(aligned, space)


def lwlr_align(
    mono_depth: torch.Tensor,
    uv: torch.Tensor,
    sparse_depth: torch.Tensor,
    bandwidth: float | None = None,
    ridge: float = 1.0,
    **options,
) -> torch.Tensor:
    """Metric depth [H, W] from a monocular depth [H, W], keypoints `uv` [K, 2] (x, y) and
    their metric depths [K]. `bandwidth` None chooses it from the keypoints (see
    `lwlr_align_batched`). Options as `lwlr_align_batched` (grid_stride, outlier_threshold,
    scale_ridge, space, robust_iterations)."""
    if mono_depth.dim() != 2:
        raise ValueError(f"lwlr_align: mono_depth must be [H, W], got {tuple(mono_depth.shape)}")
    if uv.dim() != 2 or sparse_depth.dim() != 1:
        raise ValueError(f"lwlr_align: uv must be [K, 2] and sparse_depth [K], got {tuple(uv.shape)} and {tuple(sparse_depth.shape)}")
    return lwlr_align_batched(mono_depth[None], uv[None], sparse_depth[None], bandwidth=bandwidth, ridge=ridge, **options)[0]


def keypoint_depths(
    uv_anchor: torch.Tensor,
    uv_other: torch.Tensor,
    K_anchor: torch.Tensor,
    K_other: torch.Tensor,
    anchor_to_other: torch.Tensor,
    max_reprojection_error: float = 2.0,
    min_triangulation_angle_deg: float = 1.0,
    refine_iterations: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 15: the metric depth of each anchor keypoint whose reprojection into the other view
    lands on its match. Returns (depth [K], inlier [K] bool).

    `uv_anchor`, `uv_other` [K, 2] are matched pixels (x, y); `K_*` [3, 3]; `anchor_to_other`
    [4, 4] takes anchor-camera coordinates to other-camera coordinates (w2c_other @ c2w_anchor).
    The depth solves the linear (algebraic) two-view equations, then a few Gauss-Newton steps
    minimise the pixel reprojection error. Outliers: reprojection error above
    `max_reprojection_error` pixels (a match off the epipolar line), a point behind either
    camera, or rays meeting at less than `min_triangulation_angle_deg` (depth ill-conditioned).
    """
    uv_anchor = torch.as_tensor(uv_anchor)
    device = uv_anchor.device
    f64 = dict(device=device, dtype=torch.float64)  # triangulation is ill-conditioned in float32
    ua = uv_anchor.to(**f64)
    ub = torch.as_tensor(uv_other).to(**f64)
    Ka, Kb, T = (torch.as_tensor(m).to(**f64) for m in (K_anchor, K_other, anchor_to_other))
    if ua.dim() != 2 or ua.shape[-1] != 2 or ub.shape != ua.shape:
        raise ValueError(f"keypoint_depths: uv_anchor and uv_other must both be [K, 2], got {tuple(ua.shape)} and {tuple(ub.shape)}")
    if Ka.shape != (3, 3) or Kb.shape != (3, 3) or T.shape != (4, 4):
        raise ValueError(f"keypoint_depths: K_anchor, K_other must be [3, 3] and anchor_to_other [4, 4], got {tuple(Ka.shape)}, {tuple(Kb.shape)}, {tuple(T.shape)}")
    R, t = T[:3, :3], T[:3, 3]
    ray = torch.cat([ua, torch.ones_like(ua[:, :1])], -1) @ torch.linalg.inv(Ka).T  # z = 1
    a = ray @ R.T  # the ray's direction in the other camera: q(d) = d a + t
    fx, fy, cx, cy = Kb[0, 0], Kb[1, 1], Kb[0, 2], Kb[1, 2]
    xb = (ub[:, 0] - cx) / fx
    yb = (ub[:, 1] - cy) / fy
    # algebraic: q_x - xb q_z = 0 and q_y - yb q_z = 0, linear in d (rows scaled to pixels)
    c = torch.stack([fx * (a[:, 0] - xb * a[:, 2]), fy * (a[:, 1] - yb * a[:, 2])], -1)
    e = torch.stack([fx * (t[0] - xb * t[2]), fy * (t[1] - yb * t[2])], -1)
    depth = -(c * e).sum(-1) / (c * c).sum(-1).clamp_min(1e-30)

    def reprojection(d):
        q = d[:, None] * a + t
        qz = q[:, 2].clamp_min(1e-9)
        proj = torch.stack([fx * q[:, 0] / qz + cx, fy * q[:, 1] / qz + cy], -1)
        jac = torch.stack([fx * (a[:, 0] * qz - q[:, 0] * a[:, 2]), fy * (a[:, 1] * qz - q[:, 1] * a[:, 2])], -1) / (qz * qz)[:, None]
        return proj - ub, jac, q[:, 2]

    for _ in range(refine_iterations):
        residual, jac, _ = reprojection(depth)
        step = (jac * residual).sum(-1) / (jac * jac).sum(-1).clamp_min(1e-30)
        depth = depth - step
    residual, _, z_other = reprojection(depth)
    error = residual.norm(dim=-1)
    point = depth[:, None] * ray  # in the anchor camera
    other_center = -R.T @ t
    seen_from_other = point - other_center
    # atan2(|p x q|, p . q) stays accurate for tiny angles and tiny vectors
    angle = torch.rad2deg(torch.atan2(torch.linalg.cross(point, seen_from_other, dim=-1).norm(dim=-1), (point * seen_from_other).sum(-1)))
    inlier = (
        torch.isfinite(depth) & (depth > 0) & (z_other > 0) & (error <= max_reprojection_error) & (angle >= min_triangulation_angle_deg)
    )
    return depth.to(uv_anchor.dtype if uv_anchor.is_floating_point() else torch.float32), inlier


def absolute_relative_error(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """AbsRel = mean |pred - true| / true over `mask` (default: where true > 0 and finite)."""
    pred, true = torch.as_tensor(pred).double(), torch.as_tensor(true).double()
    ok = torch.isfinite(true) & (true > 0) & torch.isfinite(pred)
    if mask is not None:
        ok &= torch.as_tensor(mask, device=ok.device).bool()
    if not bool(ok.any()):
        raise ValueError("absolute_relative_error: no valid pixel to compare")
    return float(((pred[ok] - true[ok]).abs() / true[ok]).mean())


# Middlebury 2014 "motorcycle" as scikit-image ships it (downsampled 4x); calibration from
# `skimage.data.stereo_motorcycle`'s docstring: depth = f B / (disparity + doffs)
MOTORCYCLE_FOCAL_PX = 994.978
MOTORCYCLE_BASELINE_M = 0.193001
MOTORCYCLE_DOFFS_PX = 31.086


def middlebury_motorcycle() -> tuple[np.ndarray, np.ndarray]:
    """A real image [500, 741, 3] uint8 with its true z-depth in metres [500, 741] (NaN where
    the benchmark has no ground truth), from scikit-image's copy of Middlebury 2014."""
    try:
        from skimage.data import stereo_motorcycle
    except ImportError as err:  # the torch extra brings it
        raise ImportError("middlebury_motorcycle needs scikit-image: pip install 'see3d-kit[torch]'") from err
    left, _, disparity = stereo_motorcycle()
    disparity = disparity.astype(np.float64)
    known = np.isfinite(disparity)
    depth = np.full(disparity.shape, np.nan)
    depth[known] = MOTORCYCLE_FOCAL_PX * MOTORCYCLE_BASELINE_M / (disparity[known] + MOTORCYCLE_DOFFS_PX)
    return left, depth


# --- plots for the notebooks (matplotlib is imported lazily) ----------------------------------

def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def show_depth(ax, depth, title: str = "", uv=None, vmin: float | None = None, vmax: float | None = None) -> None:
    """Draw a depth map on a matplotlib axis (`see3d_core.images.depth_to_rgb`: the kit's one
    depth picture), optionally with keypoints `uv` [K, 2] on top."""
    ax.imshow(depth_to_rgb(_numpy(depth), near=vmin, far=vmax))
    if uv is not None:
        pts = _numpy(uv)
        ax.scatter(pts[:, 0], pts[:, 1], s=4, c="white", edgecolors="black", linewidths=0.3)
    ax.set_title(title)
    ax.set_axis_off()


def show_relative_error(ax, pred, true, title: str = "", max_error: float = 0.2) -> None:
    """Draw |pred - true| / true (clipped at `max_error`) with its AbsRel in the title."""
    p, t = _numpy(pred).astype(np.float64), _numpy(true).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(p - t) / t
    image = ax.imshow(np.nan_to_num(rel, nan=0.0), cmap="magma", vmin=0.0, vmax=max_error)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    valid = np.isfinite(rel) & (t > 0)
    ax.set_title(f"{title} AbsRel {rel[valid].mean():.3f}".strip())
    ax.set_axis_off()
