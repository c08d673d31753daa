"""One rasterization interface for 3D Gaussians, with two backends.

`rasterization(...)` projects Gaussians into C cameras and alpha-composites them:

- backend "gsplat": gsplat's CUDA kernels, used when the tensors are on a CUDA device and
  gsplat is installed (`pip install 'see3d-kit[torch-cuda]'`); imported lazily.
- backend "torch": the kit's own renderer (`tiled.py`), pure torch, tile-binned and
  memory-bounded; the CPU path. It never touches gsplat.

Conventions are the kit's (see `see3d_core.cameras`): `viewmats` are w2c 4x4 matrices in the
OpenCV frame, `Ks` are pixel intrinsics with pixel centres at integer coordinates (the gsplat
backend shifts the principal point by half a pixel, because gsplat samples pixels at
`index + 0.5`).

Projection (EWA splatting, as in 3DGS/gsplat): the world covariance `Sigma = R S S^T R^T`
goes to the camera frame `W Sigma W^T` and to the image `J W Sigma W^T J^T + eps2d I`, with
`J` the Jacobian of the pinhole projection at the Gaussian's centre (its x/z and y/z clamped
to 1.3 times the field of view, as gsplat does, so that Gaussians near the border do not
explode). `eps2d = 0.3` is the usual anti-aliasing blur; `rasterize_mode="antialiased"` also
scales each opacity by `sqrt(det(cov2d) / det(cov2d + eps2d I))` (Mip-Splatting's compensation,
gsplat's antialiased mode), so that small Gaussians do not grow brighter from the blur.
`radius_clip` skips Gaussians whose projected 3-sigma radius is at most that many pixels (gsplat).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from see3d_torch.splatting import tiled

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")
BACKENDS = ("auto", "torch", "gsplat")

# real spherical harmonics constants (degree 0..3), standard in 3DGS
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)


def spherical_harmonics(degree: int, directions: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Evaluate SH colours: directions [..., 3] (any length), coefficients [..., K, 3] -> [..., 3]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {degree}")
    needed = (degree + 1) ** 2
    if coefficients.shape[-2] < needed:
        raise ValueError(f"sh_degree {degree} needs {needed} coefficients, got {coefficients.shape[-2]}")
    result = _SH_C0 * coefficients[..., 0, :]
    if degree == 0:
        return result
    x, y, z = F.normalize(directions, dim=-1).unbind(-1)
    x, y, z = x[..., None], y[..., None], z[..., None]
    result = result - _SH_C1 * y * coefficients[..., 1, :] + _SH_C1 * z * coefficients[..., 2, :] - _SH_C1 * x * coefficients[..., 3, :]
    if degree == 1:
        return result
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    result = (
        result
        + _SH_C2[0] * xy * coefficients[..., 4, :]
        + _SH_C2[1] * yz * coefficients[..., 5, :]
        + _SH_C2[2] * (2.0 * zz - xx - yy) * coefficients[..., 6, :]
        + _SH_C2[3] * xz * coefficients[..., 7, :]
        + _SH_C2[4] * (xx - yy) * coefficients[..., 8, :]
    )
    if degree == 2:
        return result
    return (
        result
        + _SH_C3[0] * y * (3.0 * xx - yy) * coefficients[..., 9, :]
        + _SH_C3[1] * xy * z * coefficients[..., 10, :]
        + _SH_C3[2] * y * (4.0 * zz - xx - yy) * coefficients[..., 11, :]
        + _SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * coefficients[..., 12, :]
        + _SH_C3[4] * x * (4.0 * zz - xx - yy) * coefficients[..., 13, :]
        + _SH_C3[5] * z * (xx - yy) * coefficients[..., 14, :]
        + _SH_C3[6] * x * (xx - 3.0 * yy) * coefficients[..., 15, :]
    )


def quaternion_to_rotation(quats: torch.Tensor) -> torch.Tensor:
    """Quaternions (w, x, y, z) [..., 4], any norm -> rotation matrices [..., 3, 3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def project_gaussians(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    viewmats: torch.Tensor,  # [C, 4, 4] w2c
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> dict[str, torch.Tensor]:
    """EWA projection. Returns means2d [C, N, 2], conics [C, N, 3] (a, b, c of the inverse 2D
    covariance), covars2d [C, N, 3] (xx, xy, yy, eps2d included), depths [C, N] (camera z),
    radii [C, N, 2] (3-sigma half-widths in whole pixels, 0 for culled Gaussians and for those
    with both at most `radius_clip`) and compensations [C, N] (the antialiased mode's opacity
    factor `sqrt(det(cov2d) / det(cov2d + eps2d I))`)."""
    M = quaternion_to_rotation(quats) * scales[:, None, :]
    covars = M @ M.transpose(-1, -2)  # [N, 3, 3]
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    covars_c = R[:, None] @ covars[None] @ R.transpose(-1, -2)[:, None]  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    safe_z = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    # the Jacobian is evaluated with x/z, y/z clamped to 1.3x the field of view (as gsplat)
    lim_x = 0.3 * 0.5 * width / fx
    lim_y = 0.3 * 0.5 * height / fy
    tx = safe_z * torch.minimum(torch.maximum(x / safe_z, -(cx + 0.5) / fx - lim_x), (width - 0.5 - cx) / fx + lim_x)
    ty = safe_z * torch.minimum(torch.maximum(y / safe_z, -(cy + 0.5) / fy - lim_y), (height - 0.5 - cy) / fy + lim_y)
    zeros = torch.zeros_like(z)
    J = torch.stack(
        [fx / safe_z, zeros, -fx * tx / safe_z**2, zeros, fy / safe_z, -fy * ty / safe_z**2], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    cxx = cov2d[..., 0, 0] + eps2d
    cyy = cov2d[..., 1, 1] + eps2d
    cxy = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = (cxx * cyy - cxy * cxy).clamp_min(1e-10)
    det_unblurred = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cxy * cxy
    compensations = torch.sqrt((det_unblurred / det).clamp_min(0.0))
    conics = torch.stack([cyy / det, -cxy / det, cxx / det], dim=-1)
    means2d = torch.stack([fx * x / safe_z + cx, fy * y / safe_z + cy], dim=-1)
    with torch.no_grad():
        radii = torch.ceil(3.0 * torch.stack([cxx, cyy], dim=-1).clamp_min(0).sqrt())
        valid = (z > near_plane) & (z < far_plane) & (cxx * cyy - cxy * cxy > 0) & (radii > radius_clip).any(-1)
        inside = (
            (means2d[..., 0] + radii[..., 0] > -0.5) & (means2d[..., 0] - radii[..., 0] < width - 0.5)
            & (means2d[..., 1] + radii[..., 1] > -0.5) & (means2d[..., 1] - radii[..., 1] < height - 0.5)
        )
        radii = (radii * (valid & inside)[..., None]).to(torch.int32)
    return {
        "means2d": means2d,
        "conics": conics,
        "covars2d": torch.stack([cxx, cxy, cyy], dim=-1),
        "depths": z,
        "radii": radii,
        "compensations": compensations,
    }


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, render_mode):
    n = means.shape[0] if means.ndim == 2 else -1
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    for name, t, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)} for {n} Gaussians, got {tuple(t.shape)}")
    if sh_degree is None:
        if colors.ndim != 2 or colors.shape[0] != n:
            raise ValueError(f"colors must be [N, D] without sh_degree, got {tuple(colors.shape)}")
    elif colors.ndim != 3 or colors.shape[0] != n or colors.shape[2] != 3 or colors.shape[1] < (sh_degree + 1) ** 2:
        raise ValueError(f"colors must be SH coefficients [N, >= {(sh_degree + 1) ** 2}, 3] for sh_degree {sh_degree}, got {tuple(colors.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be [C, 4, 4] w2c matrices, got {tuple(viewmats.shape)}")
    if tuple(Ks.shape) != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must be [C, 3, 3] matching {viewmats.shape[0]} viewmats, got {tuple(Ks.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")


def rasterization(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: torch.Tensor | None = None,
    render_mode: str = "RGB",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    rasterize_mode: str = "classic",
    packed: bool = False,
    tile_size: int | None = None,
    backend: str = "auto",
    pair_budget: int = tiled.DEFAULT_PAIR_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render N Gaussians into C cameras.

    Args:
        means [N, 3], quats [N, 4] (w, x, y, z; normalised here), scales [N, 3] (positive),
        opacities [N] in [0, 1]; colors [N, D] features, or SH coefficients [N, K, 3] when
        `sh_degree` is given (colour = max(SH(view direction) + 0.5, 0), as gsplat);
        viewmats [C, 4, 4] w2c; Ks [C, 3, 3] (pixel centres at integer coordinates).
        render_mode: "RGB" (the features), "D" (accumulated depth `sum w z`), "ED" (expected
        depth `sum w z / sum w`), "RGB+D" or "RGB+ED" (depth as the last channel).
        backgrounds [C, D] (colour channels only) is added where the splats are transparent.
        radius_clip: Gaussians whose projected 3-sigma radii are both at most this (pixels) are
        skipped. rasterize_mode: "classic" or "antialiased" (opacities times the eps2d
        compensation, see the module docstring). packed: the per-(camera, Gaussian) outputs
        hold only the drawn pairs (see Returns); on the CPU the colours (SH) are evaluated and
        the Gaussians binned for those pairs alone, which saves work when many Gaussians are
        out of view. The images are the same either way. All three as gsplat's arguments of
        the same names.
        backend: "auto" (gsplat for CUDA tensors when installed, else "torch"), "torch", "gsplat".
        tile_size: pixels per tile side; default 16 for gsplat; for the torch renderer chosen per
        camera from the drawn Gaussians' median 3-sigma radius (`tiled.choose_tile_size`): 4 for
        the small Gaussians of a reconstruction (small tiles follow small footprints closely,
        which is what costs time on a CPU), 8 for large ones (measured: `tiled.AUTO_TILE_SIZES`).
        pair_budget: the torch renderer's memory bound, in (Gaussian, pixel) pairs per batch.

    Returns:
        render_colors [C, H, W, channels], render_alphas [C, H, W, 1] and a meta dict with
        what densification needs: "means2d" [C, N, 2] (its .grad is filled by backward),
        "radii" [C, N, 2] (0 = not drawn), "depths" [C, N], "width", "height",
        "n_cameras", "backend". With `packed`, "means2d" [nnz, 2], "radii" [nnz, 2], "depths"
        [nnz] and "conics" [nnz, 3] hold the drawn (camera, Gaussian) pairs only, named by
        "camera_ids" [nnz] and "gaussian_ids" [nnz] (gsplat's packed layout).
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, render_mode)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    if not radius_clip >= 0:
        raise ValueError(f"radius_clip must be >= 0 pixels, got {radius_clip}")
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and _gsplat_available() else "torch"
    if backend == "gsplat":
        from see3d_torch.splatting import gsplat_backend

        return gsplat_backend.rasterize(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, tile_size=tile_size or 16,
            radius_clip=radius_clip, rasterize_mode=rasterize_mode, packed=packed,
        )
    return _rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
        backgrounds, render_mode, near_plane, far_plane, eps2d, tile_size, pair_budget,
        radius_clip, rasterize_mode, packed,
    )


def _gsplat_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gsplat") is not None


def camera_centres(viewmats: torch.Tensor) -> torch.Tensor:
    """[C, 3] centres of w2c matrices [C, 4, 4]: -R^T t."""
    return -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])


def colors_from_sh(means: torch.Tensor, coefficients: torch.Tensor, viewmats: torch.Tensor, sh_degree: int) -> torch.Tensor:
    """Per-camera colours [C, N, 3] from SH coefficients, viewed from each camera's centre."""
    directions = means[None] - camera_centres(viewmats)[:, None]
    return (spherical_harmonics(sh_degree, directions, coefficients[None].expand(len(viewmats), -1, -1, -1)) + 0.5).clamp_min(0.0)


def _rasterize_torch(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
    backgrounds, render_mode, near_plane, far_plane, eps2d, tile_size, pair_budget, radius_clip, rasterize_mode,
    packed=False,
):
    projected = project_gaussians(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                                  radius_clip)
    num_cameras = viewmats.shape[0]
    if packed:  # keep the drawn (camera, Gaussian) pairs only, as flat [nnz, ...] tensors
        camera_ids, gaussian_ids = torch.nonzero((projected["radii"] > 0).all(-1), as_tuple=True)
        projected = {name: value[camera_ids, gaussian_ids] for name, value in projected.items()}
    means2d, conics, depths, radii = projected["means2d"], projected["conics"], projected["depths"], projected["radii"]
    if means2d.requires_grad:
        means2d.retain_grad()  # densification reads the screen-space gradient
    # per pair: [C, N, ...], or [nnz, ...] when packed
    if sh_degree is None:
        features = colors[gaussian_ids] if packed else colors[None].expand(num_cameras, -1, -1)
    elif packed:  # each pair's colour seen from its camera's centre
        directions = means[gaussian_ids] - camera_centres(viewmats)[camera_ids]
        features = (spherical_harmonics(sh_degree, directions, colors[gaussian_ids]) + 0.5).clamp_min(0.0)
    else:
        features = colors_from_sh(means, colors, viewmats, sh_degree)
    if render_mode in ("D", "ED"):
        features = depths[..., None]
    elif render_mode in ("RGB+D", "RGB+ED"):
        features = torch.cat([features, depths[..., None]], dim=-1)
    opacities = opacities[gaussian_ids] if packed else opacities[None].expand(num_cameras, -1)
    if rasterize_mode == "antialiased":  # the opacities differ per camera
        opacities = opacities * projected["compensations"]
    with torch.no_grad():
        # draw every pixel where alpha can reach 1/255: |d|_Q <= sqrt(2 ln(255 o)) (gsplat's
        # opacity-aware box: at most 3.33 sigma, less for fainter Gaussians)
        reach = torch.sqrt(2.0 * torch.log((255.0 * opacities).clamp_min(1.0)))
        extents = projected["covars2d"][..., [0, 2]].clamp_min(0).sqrt() * reach[..., None]
        extents = extents * (radii > 0).all(-1, keepdim=True)
    images, alphas = [], []
    for c in range(num_cameras):
        background = None
        if backgrounds is not None and render_mode not in ("D", "ED"):
            background = backgrounds[c]
            if render_mode in ("RGB+D", "RGB+ED"):
                background = torch.cat([background, background.new_zeros(1)])
        mine = camera_ids == c if packed else c
        image, alpha = tiled.rasterize_tiled(
            means2d[mine], conics[mine], opacities[mine], features[mine], depths[mine], extents[mine], width, height,
            background, tile_size or tiled.choose_tile_size(radii[mine]), pair_budget,
        )
        images.append(image)
        alphas.append(alpha)
    render_colors, render_alphas = torch.stack(images), torch.stack(alphas)
    if render_mode in ("ED", "RGB+ED"):
        depth = render_colors[..., -1:] / render_alphas.clamp_min(1e-10)
        render_colors = torch.cat([render_colors[..., :-1], depth], dim=-1)
    meta = {
        "means2d": means2d,
        "radii": radii,
        "depths": depths,
        "conics": conics,
        "width": int(width),
        "height": int(height),
        "n_cameras": num_cameras,
        "backend": "torch",
    }
    if packed:
        meta.update(camera_ids=camera_ids, gaussian_ids=gaussian_ids)
    return render_colors, render_alphas, meta
